import keras

from kpool import ops
from kpool.layers.base_pooling import layer_doc
from kpool.ops.blur_pool import Blur

_SUMMARY = "Blur pooling for {data}: a binomial low-pass filter, subsampled."
_BODY = """
The anti-aliased downsampling of Zhang (2019) (`kpool.ops.blur_pool`, his
`Downsample`): along each spatial dim the input is padded by
`(filter_size - 1) // 2` cells before and `filter_size // 2` after, as
`padding_mode` says, and convolved with stride `strides` with the
normalised binomial filter of length `filter_size` (`[1]`, `[1, 1] / 2`,
`[1, 2, 1] / 4`, `[1, 3, 3, 1] / 8`, ...; its outer product in 2D and 3D).
Every channel gets the same fixed filter: the layer has no weights.

A spatial dim of size `n` gives `ceil(n / strides)` cells. `filter_size=1`
is plain subsampling, `x[::strides]`. With an odd `filter_size`,
`padding_mode="zero"` computes `kornia.filters.blur_pool2d`, and
`padding_mode="reflect"` (with `strides` 1 or 2) timm's `BlurPool2d`.

Reference:
    Zhang, "Making Convolutional Networks Shift-Invariant Again",
    ICML 2019.
"""
_ARGS = """
Args:
    filter_size: int from 1 to 7. Length of the binomial filter (3, the
        default, is `[1, 2, 1] / 4`).
    strides: int or tuple of ints, one per spatial dim. Subsampling factor.
    padding_mode: `"reflect"` (default, the paper's: mirrored about the edge
        cell), `"replicate"` (the edge cell repeated), `"zero"` or
        `"constant"` (zeros). With `"reflect"` each spatial dim must exceed
        `filter_size // 2`.
    data_format: `"channels_last"`, `"channels_first"`, or `None` for
        `keras.config.image_data_format()`.
    name: string. Name of the layer.
    **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).
"""
_EXAMPLES = {
    1: """
>>> x = np.array([0.0, 0.0, 4.0, 0.0, 0.0, 0.0]).reshape(1, 6, 1)
>>> kpool.layers.BlurPooling1D()(x)  # [[[0.], [2.], [0.]]]
""",
    2: """
>>> layer = kpool.layers.BlurPooling2D(filter_size=4)
>>> layer(np.random.rand(8, 32, 32, 16)).shape  # (8, 16, 16, 16)
""",
    3: """
>>> x = np.random.rand(2, 8, 8, 8, 3)
>>> kpool.layers.BlurPooling3D(padding_mode="zero")(x).shape  # (2, 4, 4, 4, 3)
""",
}


class BlurPooling(keras.layers.Layer):
    """Blur pooling for any number of spatial dims; see `BlurPooling2D`."""

    num_spatial_dims = None

    def __init__(
        self,
        filter_size=3,
        strides=2,
        padding_mode="reflect",
        data_format=None,
        name=None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.blur = Blur(
            self.num_spatial_dims,
            filter_size,
            strides,
            padding_mode,
            data_format,
        )
        self.filter_size = self.blur.filter_size
        self.strides = self.blur.strides
        self.padding_mode = self.blur.padding_mode
        self.data_format = self.blur.data_format
        self.input_spec = keras.layers.InputSpec(ndim=self.num_spatial_dims + 2)
        self._build_at_init()

    def call(self, inputs):
        return ops.blur_pool(
            inputs,
            filter_size=self.filter_size,
            strides=self.strides,
            padding_mode=self.padding_mode,
            data_format=self.data_format,
        )

    def compute_output_shape(self, input_shape):
        return self.blur.output_shape(input_shape, type(self).__name__)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filter_size": self.filter_size,
                "strides": self.strides,
                "padding_mode": self.padding_mode,
                "data_format": self.data_format,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kpool")
class BlurPooling1D(BlurPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[1], 1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class BlurPooling2D(BlurPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[2], 2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class BlurPooling3D(BlurPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[3], 3)
    num_spatial_dims = 3


BlurPool1D = BlurPooling1D
BlurPool2D = BlurPooling2D
BlurPool3D = BlurPooling3D
