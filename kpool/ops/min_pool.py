from keras import ops

from kpool import backend
from kpool.ops.windows import Window, as_tensor, integers_as_floats


def min_pool(
    inputs, pool_size, strides=None, padding="valid", data_format=None
):
    """Min pooling: the minimum of each window, for each channel.

    `min_pool(x) = -max_pool(-x)` with Keras's max pooling, so it costs
    `keras.ops.max_pool` plus a negation, the gradient reaches the minimal
    element of each window, and under `"same"` a padded cell is never the
    result (max pooling pads with `-inf`, which `-x` turns into `+inf`).
    NaN and infinities behave as in `keras.ops.max_pool` of `-x`.

    Under `"valid"` the output has `floor((n - pool_size) / strides) + 1`
    cells along a spatial dim of size `n`; under `"same"`, `ceil(n / strides)`.

    Args:
        inputs: tensor of rank 3, 4 or 5: `(batch, spatial..., channels)`
            if `data_format="channels_last"`, else
            `(batch, channels, spatial...)`.
        pool_size: int or tuple of ints, one per spatial dim.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.

    Returns:
        The pooled tensor, of the dtype of `inputs`.

    Example:

    >>> x = np.array([3.0, 1.0, 2.0, 5.0]).reshape(1, 4, 1)
    >>> kpool.ops.min_pool(x, 2)  # [[[1.], [2.]]]
    """
    inputs = as_tensor(inputs)
    window = Window.of(
        inputs, pool_size, strides, padding, data_format, "min_pool"
    )
    window.check_fits(inputs.shape, "min_pool")
    # An unsigned integer's negation wraps around.
    x = integers_as_floats(inputs)
    fast = backend.fast_path("min_pool", x, window)
    if fast is not None:
        return ops.cast(fast(window, x), inputs.dtype)
    pooled = ops.negative(window.max_pool(ops.negative(x)))
    return ops.cast(pooled, inputs.dtype)


def global_min_pool(inputs, data_format=None, keepdims=False):
    """Global min pooling: the minimum over all spatial positions.

    Args:
        inputs: tensor of rank 3, 4 or 5, laid out as `data_format` says.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        keepdims: bool. Keep the spatial dims, with length 1, as
            `keras.layers.GlobalMaxPooling2D` does.

    Returns:
        `(batch, channels)`, or with `keepdims` the spatial dims as 1s.

    Example:

    >>> kpool.ops.global_min_pool(np.random.rand(2, 4, 5, 3)).shape  # (2, 3)
    """
    inputs = as_tensor(inputs)
    window = Window.of(inputs, 1, 1, "valid", data_format, "global_min_pool")
    return ops.min(inputs, axis=window.spatial_axes(), keepdims=keepdims)
