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


def stochastic_sample(activations, rescale_above, plain, rescaled):
    """`plain()`, the sampling without rescaling, where no activation is
    above `rescale_above`, else `rescaled()` (`tf.cond`, which runs only
    the branch taken).

    The rescaling finds each example's channel's largest finite
    activation and divides the windows by it: three passes over the
    input (the finite test, the selection, the maximum) and a division,
    for scales that are 1 unless an activation is above 2**30. One
    maximum over the whole input decides: training at 128x32x32x32,
    forward and backward, 33.1 -> 26.4 ms (2026-12-07). NaN or inf in the
    input goes to `rescaled` (TensorFlow's maximum keeps NaN)."""
    import tensorflow as tf

    return tf.cond(tf.reduce_max(activations) <= rescale_above, plain, rescaled)
