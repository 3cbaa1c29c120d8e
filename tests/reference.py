"""NumPy references for the pooling layers, with Keras's window semantics.

Written the textbook way, one window at a time, to share nothing with the
layers: `windows` lists each window's elements, and each pooling is a
reduction over them. Under "same" the input is padded by
`max((out - 1) * stride + pool - n, 0)` cells, half of them (rounded down)
before, as TensorFlow and Keras do; padded cells are NaN here, so a
reduction that ignores NaN never counts them.
"""

import itertools
import math

import numpy as np


def output_size_and_padding(n, pool, stride, padding):
    """The output length along a dim of length `n`, and the cells padded
    before it."""
    if padding == "valid":
        return (n - pool) // stride + 1, 0
    output = math.ceil(n / stride)
    return output, max((output - 1) * stride + pool - n, 0) // 2


def windows(x, pool_size, strides, padding, data_format):
    """Returns the windows of `x`, channels last.

    The result has shape `(batch, *output_spatial, prod(pool_size),
    channels)`, each window's elements in row-major order, padded cells NaN.
    """
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    spatial = x.shape[1:-1]
    outputs, befores = zip(
        *(
            output_size_and_padding(n, k, s, padding)
            for n, k, s in zip(spatial, pool_size, strides, strict=True)
        ),
        strict=True,
    )
    result = np.full(
        (x.shape[0], *outputs, math.prod(pool_size), x.shape[-1]), np.nan
    )
    offsets = list(itertools.product(*(range(k) for k in pool_size)))
    for position in itertools.product(*(range(o) for o in outputs)):
        for j, offset in enumerate(offsets):
            index = [
                p * s - before + o
                for p, s, before, o in zip(
                    position, strides, befores, offset, strict=True
                )
            ]
            if all(0 <= i < n for i, n in zip(index, spatial, strict=True)):
                result[(slice(None), *position, j)] = x[(slice(None), *index)]
    return result


def to_data_format(pooled, data_format):
    """Moves the channels of a channels-last result where they belong."""
    if data_format == "channels_first":
        return np.moveaxis(pooled, -1, 1)
    return pooled


def max_pool(window_elements):
    return np.nanmax(window_elements, axis=-2)


def average_pool(window_elements):
    return np.nanmean(window_elements, axis=-2)


def min_pool(window_elements):
    return np.nanmin(window_elements, axis=-2)


def stochastic_probabilities(window_elements):
    """Zeiler and Fergus's p_i = a_i / sum_j a_j with a = max(x, 0).

    Padded cells and non-positive inputs get probability 0; a window with no
    positive element gets all zeros.
    """
    activations = np.maximum(np.nan_to_num(window_elements, nan=0.0), 0.0)
    total = activations.sum(axis=-2, keepdims=True)
    return np.divide(
        activations, total, out=np.zeros_like(activations), where=total > 0
    )


def stochastic_expectation(window_elements):
    """The inference output sum_i p_i a_i (0 for a window without mass)."""
    probabilities = stochastic_probabilities(window_elements)
    activations = np.nan_to_num(window_elements, nan=0.0)
    return (probabilities * activations).sum(axis=-2)


def mixed_pool(window_elements, a):
    """a * max + (1 - a) * avg, `a` broadcasting against the channels."""
    return a * max_pool(window_elements) + (1 - a) * average_pool(
        window_elements
    )


def gated_pool(window_elements, gate_kernel):
    """Lee et al.'s gated pooling, a = sigmoid(w . region), padding as 0.

    `gate_kernel` has shape `(prod(pool_size),)` or
    `(prod(pool_size), channels)`.
    """
    region = np.nan_to_num(window_elements, nan=0.0)
    kernel = gate_kernel if gate_kernel.ndim == 2 else gate_kernel[:, None]
    logits = (region * kernel).sum(axis=-2)
    return mixed_pool(window_elements, 1 / (1 + np.exp(-logits)))


def pool(x, reduction, pool_size, strides, padding, data_format):
    """Applies `reduction` (one of the above) to every window of `x`."""
    elements = windows(x, pool_size, strides, padding, data_format)
    return to_data_format(reduction(elements), data_format)


def window_indices(shape, pool_size, strides, padding, data_format):
    """Like `windows`, of the flat index (in `shape`) of each element."""
    flat_indices = np.arange(math.prod(shape), dtype="float64").reshape(shape)
    return windows(flat_indices, pool_size, strides, padding, data_format)


def gradient_of_chosen(shape, chosen_indices, upstream):
    """The input gradient when output cell i is the input cell
    `chosen_indices[i]` (an index from `window_indices`) times 1."""
    gradient = np.zeros(math.prod(shape))
    np.add.at(gradient, chosen_indices.astype(int).ravel(), upstream.ravel())
    return gradient.reshape(shape)
