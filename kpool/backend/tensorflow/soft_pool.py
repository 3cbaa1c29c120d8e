from kpool.backend import SHARED_PEAK_FLOOR


def disjoint_soft_pool(window, x):
    """SoftPool of windows that do not overlap (`strides >= pool_size`), in
    one or two spatial dims, channels last: the paper's `sum(x e) /
    sum(e)` by the first of three forms that is exact (`tf.cond`, which
    runs only the branch taken; TFLite and ONNX take it as an `If`).

    1. `e = exp(x)`, the paper's own form and the one users write: exact
       unless an activation is above about 85 (`x e` overflows) or a whole
       window lies below about -69 (its `e` underflow). It costs what the
       unsafe form costs, and ordinary activations take it.
    2. `e = exp(x - M)`, `M` the maximum of each example's channel: every
       `e` at most 1, so nothing overflows; inexact only where a whole
       window lies far below its channel's maximum (more than about 69).
       One reduction and one subtraction more: forward 1.5-1.7x the unsafe
       form, where the first form is 1.0-1.1x (2026-12-07).
    3. `_peaked_soft_pool`, each window shifted by its own maximum.

    Failure shows in the outputs and their weights, a fraction of the
    input's size: a weight below `SHARED_PEAK_FLOOR`, or an output that is
    not finite (NaN or inf inputs go to the last form, which keeps them).
    """
    return first_exact_soft_pool(
        window, x, lambda: _peaked_soft_pool(window, x)
    )


def overlapping_soft_pool(window, x, per_window):
    """SoftPool of windows that overlap, in one or two spatial dims,
    channels last: `disjoint_soft_pool`'s first two forms (average
    poolings take overlapping windows too), then `per_window()`, the
    `keras.ops` form over the stacked windows, each shifted by its own
    maximum."""
    return first_exact_soft_pool(window, x, per_window)


def first_exact_soft_pool(window, x, last):
    """The first exact one of `e = exp(x)`, `e = exp(x - M)` and `last()`
    (`tf.cond`s, which run only the branch taken)."""
    import tensorflow as tf

    plain, weights = shared_peak_soft_pool(window, x, shifted=False)
    # Its outputs are below about 89 in size wherever its weights pass,
    # so their sum is finite exactly where every one is: one reduction.
    plain_exact = tf.logical_and(
        tf.math.is_finite(tf.reduce_sum(plain)),
        tf.reduce_min(weights) >= SHARED_PEAK_FLOOR,
    )

    def shifted():
        shared, weights = shared_peak_soft_pool(window, x)
        exact = tf.logical_and(
            tf.reduce_all(tf.math.is_finite(shared)),
            tf.reduce_min(weights) >= SHARED_PEAK_FLOOR,
        )
        return tf.cond(exact, lambda: shared, last)

    return tf.cond(plain_exact, lambda: plain, shifted)


def shared_peak_soft_pool(window, x, shifted=True):
    """`(sum(x e) / sum(e), mean(e))` over each window, `e = exp(x - M)`
    with `M` the maximum of each example's channel, or `e = exp(x)` when
    not `shifted`."""
    import tensorflow as tf

    if shifted:
        spatial = window.spatial_axes()
        peak = tf.stop_gradient(tf.reduce_max(x, axis=spatial, keepdims=True))
        exponentials = tf.exp(x - peak)
    else:
        exponentials = tf.exp(x)
    weighted = x * exponentials
    if window.padding == "same":
        # Zeros weigh nothing in either sum.
        pairs = window.same_pads(window.spatial_shape(x.shape))
        pads = window.full_shape(pairs, (0, 0))
        exponentials = tf.pad(exponentials, pads)
        weighted = tf.pad(weighted, pads)
    pooling = {
        "ksize": list(window.pool_size),
        "strides": list(window.strides),
        "padding": "VALID",
        "data_format": ("NWC", "NHWC")[window.num_spatial_dims - 1],
    }
    weights = tf.nn.avg_pool(exponentials, **pooling)
    return tf.nn.avg_pool(weighted, **pooling) / weights, weights


def _peaked_soft_pool(window, x):
    """SoftPool with each window's own maximum, from TensorFlow's
    poolings: each window's maximum by `max_pool`, broadcast back over
    the window's cells by a reshape that splits each dim into `(out, s)`
    (rank 5 at most, TFLite's limit), and the two window sums of `m +
    sum((x - m) e) / sum(e)`, `e = exp(x - m)`, by `avg_pool`. Outside
    XLA each op is a pass of its own, and the `keras.ops` form's
    reductions over the reshaped windows' axes take 2.5-5x as long
    (forward); under XLA, and
    on JAX, that form fuses and is the faster one.
    """
    import tensorflow as tf

    n = window.num_spatial_dims
    outs = window.output_spatial_shape(x.shape)
    tiles = window.tile_pads(x.shape)
    # Each dim cropped, or padded with -inf (which weighs 0), to s * out.
    crop = [slice(None)] * len(x.shape)
    for axis, (keep, _, _) in zip(window.spatial_axes(), tiles, strict=True):
        crop[axis] = slice(0, keep)
    pairs = [(before, after) for _, before, after in tiles]
    x = x[tuple(crop)]
    if any(before or after for before, after in pairs):
        x = tf.pad(
            x, window.full_shape(pairs, (0, 0)), constant_values=float("-inf")
        )
    pooling = {
        "ksize": list(window.pool_size),
        "strides": list(window.strides),
        "padding": "VALID",
        "data_format": ("NWC", "NHWC")[n - 1],
    }
    peak = tf.stop_gradient(tf.nn.max_pool(x, **pooling))
    # (batch * out_0 [* channels], s_0, [out_1, s_1,] [channels]).
    split, broadcast = [-1, window.strides[0]], [-1, 1]
    for out, s in zip(outs[1:], window.strides[1:], strict=True):
        split += [out, s]
        broadcast += [out, 1]
    split.append(x.shape[-1])
    broadcast.append(x.shape[-1])
    shifted = tf.reshape(x, split) - tf.reshape(peak, broadcast)
    # Cells between windows (strides > pool_size) are clipped to 0 too:
    # their exponentials are read by nothing, and must not overflow. -inf
    # cells add 0 * -1e4, not 0 * -inf.
    shifted = tf.reshape(tf.clip_by_value(shifted, -1e4, 0.0), tf.shape(x))
    exponentials = tf.exp(shifted)
    weights = tf.nn.avg_pool(exponentials, **pooling)
    pooled = tf.nn.avg_pool(shifted * exponentials, **pooling)
    pooled = tf.where(tf.math.is_inf(peak), peak, peak + pooled / weights)
    # A window of only -inf weighs 0: TensorFlow's max pooling gives it the
    # lowest finite float, not -inf.
    return tf.where(weights == 0, tf.constant(float("-inf"), x.dtype), pooled)
