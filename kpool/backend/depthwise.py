"""Depthwise-convolution forms of pieces of kpool's ops.

Where each op is its own kernel (TensorFlow's graph mode, torch's eager
mode), one depthwise convolution runs faster than the slices and window
extractions the `keras.ops` forms use. These are written in `keras.ops`
too, so both backends' modules share them; `kpool.backend.fast_path`
hands them to the ops.
"""

import math

import numpy as np
from keras import ops


def depthwise_filter_axis(blur, inputs, axis, stride, weights):
    """`sliced_filter_axis` as a 1-D depthwise convolution with `inner`
    channels, the faster form in TensorFlow's graph mode (about as fast as
    `MaxPooling2D` there, where the slices cost about 3x)."""
    shape = list(inputs.shape)
    n, inner = shape[axis], math.prod(shape[axis + 1 :])
    view = blur.pad(ops.reshape(inputs, (-1, n, inner)))
    kernel = np.broadcast_to(weights[:, None, None], (len(weights), inner, 1))
    view = ops.depthwise_conv(
        view,
        ops.convert_to_tensor(kernel, view.dtype),
        strides=stride,
        padding="valid",
        data_format="channels_last",
    )
    shape[axis] = math.ceil(n / stride)
    return ops.reshape(view, [-1, *shape[1:]])


def depthwise_responses(window, padded, kernel):
    """`window_responses` as one depthwise convolution per filter, each
    with one filter per channel (a shared filter repeated per channel).

    The faster form where each op is its own kernel (TensorFlow's graph
    mode): there a convolution is one kernel, and the window's slots or
    its extraction several. A depthwise convolution of one filter per
    channel runs within 1.15x of max pooling there; one convolution of all
    `n` filters, whether depthwise with `n` per channel or 3D over a unit
    channel, writes them interleaved and takes a copy to split them (at
    128x32x32x64, 2x2 / 3x3 windows: one filter 2.6 / 2.4x max pooling
    over a unit channel, 1.14 / 1.07x depthwise; three filters 3.4 / 3.1x
    and 2.9 / 2.3x). XLA (JAX, TensorFlow with `jit_compile=True`) runs it
    on a CPU 3-30x slower than the slots it fuses, and `keras.ops` has no
    3D depthwise convolution on TensorFlow.
    """
    channels = int(padded.shape[window.channel_axis])
    size, count = int(kernel.shape[0]), int(kernel.shape[1])
    responses = []
    for j in range(count):
        weights = kernel[:, j]
        if len(weights.shape) == 1:
            weights = ops.broadcast_to(weights[:, None], (size, channels))
        responses.append(
            ops.depthwise_conv(
                padded,
                ops.reshape(weights, (*window.pool_size, channels, 1)),
                strides=window.strides,
                padding="valid",
                data_format=window.data_format,
            )
        )
    return responses
