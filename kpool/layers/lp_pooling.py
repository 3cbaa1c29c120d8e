import keras

from kpool import ops
from kpool.layers.base_pooling import BasePooling, layer_doc
from kpool.ops.lp_pool import check_norm_type

_SUMMARY = "LP pooling for {data}: the p-norm of each window."
_BODY = """
For each channel, `(sum_i |x_i|**p)**(1 / p)` over each `pool_size` window
moved by `strides`, with `p = norm_type >= 1` (`kpool.ops.lp_pool`): `p=1`
sums absolute values, `p=2` is L2 pooling, and a large `p` approaches max
pooling of `|x|`.

Negative inputs count by their magnitude, so the output is a norm for every
input. `torch.nn.LPPool{rank}d` sums `x**p` instead: the two agree wherever
the inputs are non-negative or `p` is an even integer (for negative inputs
torch gives NaN, or the signed sum when `p=1`).

Under `"same"` the input is zero-padded as `keras.layers.MaxPooling{rank}D`
pads it; zeros add nothing to the sum, so a border window's norm is that of
its cells inside the input. Under `"valid"` the output has
`floor((n - pool_size) / strides) + 1` cells along a spatial dim of size
`n`; under `"same"`, `ceil(n / strides)`. float16 and bfloat16 inputs are
computed in float32 (`|x|**p` overflows float16) and cast back.

Reference: Sermanet, Chintala and LeCun, "Convolutional Neural Networks
Applied to House Numbers Digit Classification", ICPR 2012.
"""
_ARGS = """
Args:
    norm_type: float >= 1. The `p` of the norm.
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
>>> x = np.array([3.0, -4.0, 1.0, 0.0]).reshape(1, 4, 1)
>>> kpool.layers.LPPooling1D(norm_type=2, pool_size=2)(x)  # [[[5.], [1.]]]
""",
    2: """
>>> x = np.random.rand(8, 32, 32, 16)
>>> kpool.layers.LPPooling2D(norm_type=2, pool_size=3, strides=2)(x).shape
(8, 15, 15, 16)
""",
    3: """
>>> x = np.random.rand(2, 8, 8, 8, 3)
>>> kpool.layers.LPPooling3D(norm_type=3, pool_size=2)(x).shape
(2, 4, 4, 4, 3)
""",
}


class LPPooling(BasePooling):
    """LP pooling for any number of spatial dims; see `LPPooling2D`."""

    def __init__(
        self,
        norm_type=2.0,
        pool_size=2,
        strides=None,
        padding="valid",
        data_format=None,
        name=None,
        **kwargs,
    ):
        super().__init__(
            pool_size, strides, padding, data_format, name=name, **kwargs
        )
        self.norm_type = check_norm_type(norm_type)
        self._build_at_init()

    def call(self, inputs):
        return ops.lp_pool(inputs, self.norm_type, **self.window_args)

    def get_config(self):
        config = super().get_config()
        config["norm_type"] = self.norm_type
        return config


@keras.saving.register_keras_serializable(package="kpool")
class LPPooling1D(LPPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[1], 1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class LPPooling2D(LPPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[2], 2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class LPPooling3D(LPPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[3], 3)
    num_spatial_dims = 3


LPPool1D = LPPooling1D
LPPool2D = LPPooling2D
LPPool3D = LPPooling3D
