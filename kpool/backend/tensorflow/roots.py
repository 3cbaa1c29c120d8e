import tensorflow as tf


def positive_root(sums, norm_type):
    """`sums ** (1 / norm_type)` of `sums >= 0`, with a gradient of 0
    where a sum is 0 (the root's own is infinite there).

    The `keras.ops` form keeps the root off the zero sums with two
    `where`s and a comparison in the forward pass; here the forward pass
    is the root alone and the guard a `divide_no_nan` in the gradient.
    The graph served is the root (an `IdentityN` around it, which the
    converters drop).
    """

    @tf.custom_gradient
    def root(s):
        r = tf.sqrt(s) if norm_type == 2 else tf.pow(s, 1 / norm_type)

        def gradient(upstream):
            # d r / d s = 1 / (p r**(p - 1)): 0 at s = inf, NaN at NaN, and
            # 0 at s = 0 (divide_no_nan's rule for a zero divisor).
            power = r if norm_type == 2 else tf.pow(r, norm_type - 1)
            return tf.math.divide_no_nan(upstream, norm_type * power)

        return r, gradient

    return root(sums)
