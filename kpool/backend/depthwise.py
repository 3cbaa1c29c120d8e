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


def shared_responses(window, padded, kernel):
    """`window_responses` of filters `(K, n)` shared by the channels, as
    one convolution of one more spatial dim over a unit channel: the
    channel axis becomes a spatial dim of kernel size 1, and the filters
    the output channels, last. No transpose in either layout, and
    TensorFlow's 3D convolution runs 1.3-1.5x faster than its depthwise
    one with `n` filters per channel (tree pooling, 2x2 and 3x3 windows).
    """
    count = int(kernel.shape[1])
    if window.channels_last:
        sizes, strides = (*window.pool_size, 1), (*window.strides, 1)
    else:
        sizes, strides = (1, *window.pool_size), (1, *window.strides)
    responses = ops.conv(
        ops.expand_dims(padded, -1),
        ops.reshape(kernel, (*sizes, 1, count)),
        strides=strides,
        padding="valid",
        data_format="channels_last",
    )
    return ops.unstack(responses, axis=-1)


def depthwise_responses(window, padded, kernel):
    """`window_responses` as one depthwise convolution, its channel
    multiplier the number of filters.

    The faster form where each op is its own kernel (TensorFlow's graph
    mode): there the convolution is one kernel, and the window's slots or
    its extraction several (2.5x and 6x slower for tree pooling's 3x3
    windows). XLA (JAX, TensorFlow with `jit_compile=True`) runs it on a
    CPU 3-30x slower than the slots it fuses, and `keras.ops` has no 3D
    depthwise convolution on TensorFlow.
    """
    if len(kernel.shape) == 2:
        return shared_responses(window, padded, kernel)
    channels = int(padded.shape[window.channel_axis])
    count = int(kernel.shape[1])
    kernel = ops.transpose(kernel, (0, 2, 1))
    kernel = ops.reshape(kernel, (*window.pool_size, channels, count))
    responses = ops.depthwise_conv(
        padded,
        kernel,
        strides=window.strides,
        padding="valid",
        data_format=window.data_format,
    )
    # Output channel `c * count + j` is filter `j` of channel `c`.
    shape = list(ops.shape(responses))
    axis = window.channel_axis % len(shape)
    shape[0] = -1
    shape[axis : axis + 1] = [channels, count]
    return ops.unstack(ops.reshape(responses, shape), axis=axis + 1)
