import keras

from kpool import ops
from kpool.layers.base_pooling import StatelessPooling, layer_doc

_SUMMARY = "SoftPool for {data}: the softmax-weighted mean of each window."
_BODY = """
For each window `R` and channel, `sum_{i in R} softmax(x_R)_i * x_i`
(`kpool.ops.soft_pool`, Stergiou et al., 2021): between average pooling
(equal activations) and max pooling (one dominant activation), with a
gradient for every cell. The softmax subtracts the window's maximum, so
large activations neither overflow nor give NaN; under `"same"` padded
cells carry no weight; NaN propagates. The layer has no weights.

This follows the paper's formula. The authors' PyTorch code, on CPU, sums
the exponentials over the channel dimension instead (SoftPool issues #4
and #61), and subtracts no maximum.

Under `"valid"` the output has `floor((n - pool_size) / strides) + 1` cells
along a spatial dim of size `n`; under `"same"`, `ceil(n / strides)`.

Reference:
    Stergiou, Poppe and Kalliatakis, "Refining activation downsampling with
    SoftPool", ICCV 2021.
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
>>> x = np.array([0.0, np.log(3.0), 1.0, 1.0]).reshape(1, 4, 1)
>>> kpool.layers.SoftPooling1D(2)(x)  # [[[0.75 * log(3)], [1.]]]
""",
    2: """
>>> layer = kpool.layers.SoftPooling2D(pool_size=3, strides=2, padding="same")
>>> layer(np.random.rand(8, 32, 32, 16)).shape  # (8, 16, 16, 16)
""",
    3: """
>>> x = np.random.rand(2, 8, 8, 8, 3)
>>> kpool.layers.SoftPooling3D(2)(x).shape  # (2, 4, 4, 4, 3)
""",
}


class SoftPooling(StatelessPooling):
    """SoftPool for any number of spatial dims; see `SoftPooling2D`."""

    op = staticmethod(ops.soft_pool)


@keras.saving.register_keras_serializable(package="kpool")
class SoftPooling1D(SoftPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[1], 1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class SoftPooling2D(SoftPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[2], 2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class SoftPooling3D(SoftPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[3], 3)
    num_spatial_dims = 3


SoftPool1D = SoftPooling1D
SoftPool2D = SoftPooling2D
SoftPool3D = SoftPooling3D
