import numpy as np
import tensorflow as tf


def pad_by_slices(x, before, after, mode):
    """`x` (4D, channels last) padded by `before` and `after` cells on
    both spatial dims, `mode` "reflect" (mirrored about the edge cell) or
    "replicate" (the edge cell repeated): one strided slice of a row or
    column per pad cell, concatenated with `x`.

    `tf.pad`'s "REFLECT" computes the same in TensorFlow's graph, no
    faster (with the 3x3 convolution after it, this took 1.0 and 0.74x
    its time at 1x64x64x64 and 32x32x32x64), but TFLite converts it to
    `MIRROR_PAD`, which XNNPACK does not run: 11-14x a max pooling's time
    by itself. With the convolution, TFLite took 14-17x a max pooling
    that way and 1.7-2.4x this way.
    """
    for axis in (1, 2):
        n = int(x.shape[axis])
        if mode == "reflect":
            head = [before - i for i in range(before)]
            tail = [n - 2 - i for i in range(after)]
        else:
            head, tail = [0] * before, [n - 1] * after
        lead = (slice(None),) * axis
        head = [x[(*lead, slice(i, i + 1))] for i in head]
        tail = [x[(*lead, slice(i, i + 1))] for i in tail]
        x = tf.concat([*head, x, *tail], axis)
    return x


def blur(blur, inputs, weights):
    """A 2D channels-last `Blur` of float `inputs` as one depthwise
    convolution with the outer product of `weights`, after one pad of
    both spatial dims: `tf.nn.depthwise_conv2d`, the code TensorFlow users
    write for it. The two 1-D convolutions of `depthwise_filter_axis` pass
    over memory twice, and forward took 1.2-1.6x as long.
    """
    before, after = blur.pads
    if before or after:
        if blur.padding_mode in ("reflect", "replicate"):
            x = pad_by_slices(inputs, before, after, blur.padding_mode)
        else:
            pads = [[0, 0], [before, after], [before, after], [0, 0]]
            x = tf.pad(inputs, pads)
    else:
        x = inputs
    channels = int(x.shape[-1])
    kernel = np.multiply.outer(weights, weights)[:, :, None, None]
    kernel = np.broadcast_to(kernel, (*kernel.shape[:2], channels, 1))
    return tf.nn.depthwise_conv2d(
        x,
        tf.constant(kernel, x.dtype),
        [1, *blur.strides, 1],
        "VALID",
    )
