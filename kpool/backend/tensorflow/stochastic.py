import math


def stochastic_expectation(window, activations, rescale_above, safe):
    """`sum a**2 / sum a` over each window of `activations` (`a >= 0`), as
    two window means, wherever that comes out finite; else `safe()`, the
    `keras.ops` form, which rescales large activations first.

    The rescaling takes each example's channel's largest finite activation
    and divides by it: passes over the input, forward and backward, for
    activations above `rescale_above` (2**30), which are rare, and whose
    squares overflow to inf (or NaN, with inf or NaN in the input) in the
    plain form. A `tf.cond` on the plain outputs, a fraction of the
    input's size, runs the rescaled form only then; TFLite and ONNX take
    it as an `If`. (Under XLA, and on JAX, the `keras.ops` form stays: a
    `cond` there cost more than it saved.)
    """
    import tensorflow as tf

    del rescale_above  # Overflow shows in the outputs.
    mean = window.window_means(window.zero_pad(activations))
    # A product, not `**2`: TensorFlow's `Pow` and its gradient are kernels
    # of their own, slower than a multiply (fwd+bwd 1.13-1.26x the peer
    # with `**2`, 1.07-1.09x with the product, 2026-12-07).
    mean_square = window.window_means(
        window.zero_pad(activations * activations)
    )
    plain = mean_square / tf.where(mean > 0, mean, tf.ones_like(mean))
    return tf.cond(tf.reduce_all(tf.math.is_finite(plain)), lambda: plain, safe)


def stochastic_sample(
    window, activations, draw, rescale_above, plain, rescaled
):
    """The sampling without rescaling where no activation is above
    `rescale_above`, else `rescaled()` (`tf.cond`, which runs only the
    branch taken). Without rescaling, windows that tile the input
    (`strides == pool_size`) sample by `tiled_sample` from `draw()`, the
    draws `plain()` would make; other windows by `plain()`.

    The rescaling finds each example's channel's largest finite
    activation and divides the windows by it: three passes over the
    input (the finite test, the selection, the maximum) and a division,
    for scales that are 1 unless an activation is above 2**30. One
    maximum over the whole input decides: training at 128x32x32x32,
    forward and backward, 33.1 -> 26.4 ms (2026-12-07). NaN or inf in the
    input goes to `rescaled` (TensorFlow's maximum keeps NaN), so the
    branch without rescaling sees only finite activations of at most
    2**30, whose window sums are finite."""
    import tensorflow as tf

    spatial = window.spatial_shape(activations.shape)
    if window.strides == window.pool_size and None not in spatial:

        def plain():
            return tiled_sample(window, activations, draw())

    return tf.cond(tf.reduce_max(activations) <= rescale_above, plain, rescaled)


def tiled_sample(window, activations, uniform):
    """`kpool.ops.stochastic_pool`'s sample of windows that tile the input
    (`strides == pool_size`), from finite activations whose window sums
    are finite, with `uniform` as `draw_uniform` shapes it.

    The `k` cells of every window, in row-major order, are split into `k`
    tensors of the output's shape (one reshape, one transpose and one
    unstack of the zero-padded input); their running sums `c_j`, the
    0-or-1 mask of the sample (the first `a_j` with `u * c_last < c_j`; 0
    where there is none) and the sample are then about `5 k` elementwise
    ops on tensors of the output's size, and the gradient `k` products
    and the transpose's. The `keras.ops` form stacks the cells on a
    window axis and computes masks and sums over it: passes over tensors
    of the input's size, forward and backward. Training (forward and
    backward, with the rescaling test) at 100x32x32x16 went 13.6 -> 8.6
    ms, 4.7x -> 3.0x max pooling's (2026-12-07, Intel Xeon).
    """
    import tensorflow as tf

    x = window.zero_pad(activations)
    spatial = window.spatial_axes()
    outs = window.output_spatial_shape(x.shape)
    # "valid" leaves the cells past the last whole window out (a slice
    # only then: its gradient is a pass of its own).
    crop = [slice(None)] * len(x.shape)
    for axis, out, k in zip(spatial, outs, window.pool_size, strict=True):
        if x.shape[axis] != out * k:
            crop[axis] = slice(0, out * k)
    if any(c != slice(None) for c in crop):
        x = x[tuple(crop)]
    # Each spatial dim split into (out, k), the k's moved to the front.
    split = [-1]
    for axis in range(1, len(x.shape)):
        if axis in spatial:
            d = spatial.index(axis)
            split += [outs[d], window.pool_size[d]]
        else:
            split.append(x.shape[axis])
    offsets = [axis + d + 1 for d, axis in enumerate(spatial)]
    rest = [axis for axis in range(len(split)) if axis not in offsets]
    cells = tf.transpose(tf.reshape(x, split), offsets + rest)
    size = math.prod(window.pool_size)
    shape = [-1 if split[axis] is None else split[axis] for axis in rest]
    cells = tf.unstack(tf.reshape(cells, [size, *shape]), num=size)
    uniform = tf.squeeze(uniform, window.window_axis)
    sums = [cells[0]]
    for a in cells[1:]:
        sums.append(sums[-1] + a)
    threshold = uniform * sums[-1]
    # `exceeds[j]`, 1 where `u * c_last < c_j`, never decreases along the
    # window, so `exceeds[j] - exceeds[j - 1]` is 1 at the sample alone.
    # Products with these 0s and 1s are exact for finite cells, and their
    # gradient is one product per cell, where `tf.where`'s is two
    # selections (training 1.2-1.3x faster, 2026-12-07).
    exceeds = [tf.cast(threshold < c, x.dtype) for c in sums]
    chosen = [exceeds[0]]
    chosen += [exceeds[j] - exceeds[j - 1] for j in range(1, size)]
    return tf.add_n([a * m for a, m in zip(cells, chosen, strict=True)])
