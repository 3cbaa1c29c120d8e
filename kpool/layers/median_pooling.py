import keras

from kpool import ops
from kpool.layers.base_pooling import StatelessPooling, layer_doc

_SUMMARY = "Median pooling for {data}: the median of each window."
_BODY = """
For each channel, the median over each `pool_size` window moved by
`strides` (`kpool.ops.median_pool`): a robust, non-learned pooling, as
timm's `MedianPool2d`, that ignores outliers (salt-and-pepper noise) in a
window. The median is `numpy.median`'s: with an even number of cells (a
2x2 window), the mean of the two middle values, where timm's takes the
lower one. Under `"same"` padded cells are left out (the median of the
window's cells inside the input), where timm's `same=True` pads by
reflection. The gradient goes to the middle cell, or half to each of the
two middle cells; NaN in a window gives NaN. The layer has no weights.

Under `"valid"` the output has `floor((n - pool_size) / strides) + 1` cells
along a spatial dim of size `n`; under `"same"`, `ceil(n / strides)`.
"""
_ARGS = """
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
_EXAMPLES = {
    1: """
>>> x = np.array([5.0, 1.0, 2.0, 4.0, 3.0, 9.0]).reshape(1, 6, 1)
>>> kpool.layers.MedianPooling1D(pool_size=3)(x)  # [[[2.], [4.]]]
""",
    2: """
>>> layer = kpool.layers.MedianPooling2D(pool_size=3, strides=1,
...                                      padding="same")
>>> layer(np.random.rand(8, 32, 32, 16)).shape  # (8, 32, 32, 16)
""",
    3: """
>>> x = np.random.rand(2, 8, 8, 8, 3)
>>> kpool.layers.MedianPooling3D(pool_size=2)(x).shape  # (2, 4, 4, 4, 3)
""",
}


class MedianPooling(StatelessPooling):
    """Median pooling for any number of spatial dims; see
    `MedianPooling2D`."""

    op = staticmethod(ops.median_pool)


@keras.saving.register_keras_serializable(package="kpool")
class MedianPooling1D(MedianPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[1], 1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class MedianPooling2D(MedianPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[2], 2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class MedianPooling3D(MedianPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[3], 3)
    num_spatial_dims = 3


MedianPool1D = MedianPooling1D
MedianPool2D = MedianPooling2D
MedianPool3D = MedianPooling3D
