import keras
from keras import ops

from kpool.layers.base_global_pooling import BaseGlobalPooling


class GlobalMinPooling(BaseGlobalPooling):
    """Global min pooling: the minimum over all spatial positions.

    Args:
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        keepdims: bool. Whether to keep the spatial dims, with length 1, as
            in `keras.layers.GlobalMaxPooling2D`.
        name: string. Name of the layer.
        **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).
    """

    def call(self, inputs):
        return ops.min(inputs, axis=self.spatial_axes, keepdims=self.keepdims)


@keras.saving.register_keras_serializable(package="kpool")
class GlobalMinPooling1D(GlobalMinPooling):
    """Global min pooling for 1D (temporal) data.

    See `GlobalMinPooling` for the arguments.

    Input shape: `(batch, steps, channels)` if `channels_last`, else
    `(batch, channels, steps)`.

    Output shape: `(batch, channels)`; with `keepdims=True`,
    `(batch, 1, channels)` if `channels_last`, else `(batch, channels, 1)`.

    Example:

    >>> x = np.array([3.0, 1.0, 2.0]).reshape(1, 3, 1)
    >>> kpool.layers.GlobalMinPooling1D()(x)  # [[1.]]
    """

    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class GlobalMinPooling2D(GlobalMinPooling):
    """Global min pooling for 2D (spatial) data.

    See `GlobalMinPooling` for the arguments.

    Input shape: `(batch, height, width, channels)` if `channels_last`, else
    `(batch, channels, height, width)`.

    Output shape: `(batch, channels)`; with `keepdims=True`,
    `(batch, 1, 1, channels)` if `channels_last`, else
    `(batch, channels, 1, 1)`.

    Example:

    >>> x = np.random.rand(2, 4, 5, 3)
    >>> kpool.layers.GlobalMinPooling2D()(x).shape  # (2, 3)
    """

    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class GlobalMinPooling3D(GlobalMinPooling):
    """Global min pooling for 3D (spatial or spatio-temporal) data.

    See `GlobalMinPooling` for the arguments.

    Input shape: `(batch, dim1, dim2, dim3, channels)` if `channels_last`,
    else `(batch, channels, dim1, dim2, dim3)`.

    Output shape: `(batch, channels)`; with `keepdims=True`,
    `(batch, 1, 1, 1, channels)` if `channels_last`, else
    `(batch, channels, 1, 1, 1)`.

    Example:

    >>> layer = kpool.layers.GlobalMinPooling3D(keepdims=True)
    >>> layer(np.random.rand(2, 4, 4, 4, 3)).shape  # (2, 1, 1, 1, 3)
    """

    num_spatial_dims = 3


GlobalMinPool1D = GlobalMinPooling1D
GlobalMinPool2D = GlobalMinPooling2D
GlobalMinPool3D = GlobalMinPooling3D
