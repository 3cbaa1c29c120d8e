import keras
from keras import ops

from kpool.layers import tensorflow_kernels, tensorflow_ops
from kpool.layers.base_pooling import BasePooling


class MinPooling(BasePooling):
    """Min pooling: the minimum of each window, for each channel.

    Computed as `-max_pool(-x)` with the built-in max pooling, so it costs
    `MaxPooling*D` plus a negation of the input, the gradient reaches the
    minimal element of each window, and under `"same"` a padded cell is
    never the result (the built-in pads max pooling with `-inf`, which `-x`
    turns into `+inf`). On TensorFlow outside XLA on a CPU a fused kernel
    computes the same values in one pass (`tensorflow_ops`); where it cannot
    be built, the gradient skips the negation autodiff would add
    (`tensorflow_kernels.min_pool`).

    Under `"valid"` the output has `floor((n - pool_size) / strides) + 1`
    cells along a spatial dim of size `n`; under `"same"`, `ceil(n / strides)`.

    Args:
        pool_size: int or tuple of ints, one per spatial dim. Window size.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"` (case-insensitive), as in
            `keras.layers.MaxPooling2D`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        name: string. Name of the layer.
        **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).
    """

    def call(self, inputs):
        if tensorflow_ops.applies(self):
            return tensorflow_ops.min_pool(self, inputs)
        if keras.config.backend() == "tensorflow":
            return tensorflow_kernels.min_pool(inputs, self._max_pool)
        return ops.negative(self._max_pool(ops.negative(inputs)))


@keras.saving.register_keras_serializable(package="kpool")
class MinPooling1D(MinPooling):
    """Min pooling for 1D (temporal) data.

    See `MinPooling` for the arguments and the method.

    Input shape: `(batch, steps, channels)` if `channels_last`, else
    `(batch, channels, steps)`.

    Output shape: `(batch, pooled_steps, channels)` if `channels_last`, else
    `(batch, channels, pooled_steps)`.

    Example:

    >>> x = np.array([3.0, 1.0, 2.0, 5.0]).reshape(1, 4, 1)
    >>> kpool.layers.MinPooling1D(pool_size=2)(x)  # [[[1.], [2.]]]
    """

    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class MinPooling2D(MinPooling):
    """Min pooling for 2D (spatial) data.

    See `MinPooling` for the arguments and the method.

    Input shape: `(batch, height, width, channels)` if `channels_last`, else
    `(batch, channels, height, width)`.

    Output shape: `(batch, pooled_height, pooled_width, channels)` if
    `channels_last`, else `(batch, channels, pooled_height, pooled_width)`.

    Example:

    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> kpool.layers.MinPooling2D(pool_size=2)(x)[..., 0]  # [[0, 2], [8, 10]]
    """

    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class MinPooling3D(MinPooling):
    """Min pooling for 3D (spatial or spatio-temporal) data.

    See `MinPooling` for the arguments and the method.

    Input shape: `(batch, dim1, dim2, dim3, channels)` if `channels_last`,
    else `(batch, channels, dim1, dim2, dim3)`.

    Output shape: `(batch, pooled_dim1, pooled_dim2, pooled_dim3, channels)`
    if `channels_last`, else
    `(batch, channels, pooled_dim1, pooled_dim2, pooled_dim3)`.

    Example:

    >>> x = np.random.rand(2, 8, 8, 8, 3)
    >>> kpool.layers.MinPooling3D(pool_size=2)(x).shape  # (2, 4, 4, 4, 3)
    """

    num_spatial_dims = 3


MinPool1D = MinPooling1D
MinPool2D = MinPooling2D
MinPool3D = MinPooling3D
