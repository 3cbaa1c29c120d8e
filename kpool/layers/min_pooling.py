import keras

from kpool import ops
from kpool.layers.base_pooling import StatelessPooling, layer_doc

_SUMMARY = "Min pooling for {data}: the minimum of each window."
_BODY = """
For each channel, the minimum over each `pool_size` window moved by
`strides`, computed as `-max_pool(-x)` (`kpool.ops.min_pool`): it costs
`MaxPooling{rank}D` plus a negation, the gradient reaches each window's
minimal element, and under `"same"` a padded cell is never the result.
NaN and infinities behave as in `keras.layers.MaxPooling{rank}D` of `-x`.

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
>>> x = np.array([3.0, 1.0, 2.0, 5.0]).reshape(1, 4, 1)
>>> kpool.layers.MinPooling1D(pool_size=2)(x)  # [[[1.], [2.]]]
""",
    2: """
>>> x = np.arange(16.0).reshape(1, 4, 4, 1)
>>> kpool.layers.MinPooling2D(pool_size=2)(x)[..., 0]  # [[0, 2], [8, 10]]
""",
    3: """
>>> x = np.random.rand(2, 8, 8, 8, 3)
>>> kpool.layers.MinPooling3D(pool_size=2)(x).shape  # (2, 4, 4, 4, 3)
""",
}


class MinPooling(StatelessPooling):
    """Min pooling for any number of spatial dims; see `MinPooling2D`."""

    op = staticmethod(ops.min_pool)


@keras.saving.register_keras_serializable(package="kpool")
class MinPooling1D(MinPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[1], 1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class MinPooling2D(MinPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[2], 2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class MinPooling3D(MinPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[3], 3)
    num_spatial_dims = 3


MinPool1D = MinPooling1D
MinPool2D = MinPooling2D
MinPool3D = MinPooling3D
