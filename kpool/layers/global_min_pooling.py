import keras

from kpool import ops
from kpool.layers.base_global_pooling import BaseGlobalPooling
from kpool.layers.base_pooling import layer_doc

_SUMMARY = "Global min pooling for {data}: the minimum over all positions."
_BODY = """
For each channel, the minimum over every spatial position
(`kpool.ops.global_min_pool`). With `keepdims=True` the spatial dims are
kept, with length 1, as in `keras.layers.GlobalMaxPooling{rank}D`.
"""
_ARGS = """
Args:
    data_format: `"channels_last"`, `"channels_first"`, or `None` for
        `keras.config.image_data_format()`.
    keepdims: bool. Whether to keep the spatial dims, with length 1.
    name: string. Name of the layer.
    **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).
"""
_EXAMPLE = """
>>> x = np.random.rand(2, {shape}, 3)
>>> kpool.layers.GlobalMinPooling{rank}D()(x).shape  # (2, 3)
"""


class GlobalMinPooling(BaseGlobalPooling):
    """Global min pooling for any rank; see `GlobalMinPooling2D`."""

    def __init__(self, data_format=None, keepdims=False, name=None, **kwargs):
        super().__init__(data_format, keepdims, name=name, **kwargs)
        self._build_at_init()

    def call(self, inputs):
        return ops.global_min_pool(
            inputs, data_format=self.data_format, keepdims=self.keepdims
        )


def _doc(rank):
    shape = ", ".join(["4", "5", "6"][:rank])
    example = _EXAMPLE.format(shape=shape, rank=rank)
    return layer_doc(_SUMMARY, _BODY, _ARGS, example, rank, output=None)


@keras.saving.register_keras_serializable(package="kpool")
class GlobalMinPooling1D(GlobalMinPooling):
    __doc__ = _doc(1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class GlobalMinPooling2D(GlobalMinPooling):
    __doc__ = _doc(2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class GlobalMinPooling3D(GlobalMinPooling):
    __doc__ = _doc(3)
    num_spatial_dims = 3


GlobalMinPool1D = GlobalMinPooling1D
GlobalMinPool2D = GlobalMinPooling2D
GlobalMinPool3D = GlobalMinPooling3D
