import keras

from kpool import ops
from kpool.layers.base_pooling import layer_doc
from kpool.ops.blur_pool import Blur
from kpool.ops.windows import Window

_SUMMARY = "Anti-aliased max pooling for {data}: dense max, then blur pooling."
_BODY = """
Zhang's (2019) `MaxBlurPool` (`kpool.ops.max_blur_pool`): max pooling over
`pool_size` windows with stride 1, then `BlurPooling{rank}D(filter_size,
strides, padding_mode)`, which does the subsampling. It stands in for
`MaxPooling{rank}D(pool_size, strides)`; the harness's strided-convolution
counterpart is a convolution with stride 1 followed by `BlurPooling{rank}D`.

A spatial dim of size `n` gives `ceil(m / strides)` cells, with
`m = n - pool_size + 1` under `padding="valid"` and `m = n` under `"same"`
(as many as `MaxPooling{rank}D(2)` gives where `n` is even, with the
defaults). kornia's `MaxBlurPool2D` is this with `padding_mode="zero"` and
an odd `filter_size`.

Reference:
    Zhang, "Making Convolutional Networks Shift-Invariant Again",
    ICML 2019.
"""
_ARGS = """
Args:
    pool_size: int or tuple of ints, one per spatial dim. The max pooling
        window (moved with stride 1).
    strides: int or tuple of ints, one per spatial dim. The blur pooling's
        subsampling factor.
    filter_size: int from 1 to 7. Length of the binomial filter.
    padding: `"valid"` or `"same"` (case-insensitive), of the max pooling.
    padding_mode: `"reflect"` (default), `"replicate"`, `"zero"` or
        `"constant"`, of the blur (see `BlurPooling2D`).
    data_format: `"channels_last"`, `"channels_first"`, or `None` for
        `keras.config.image_data_format()`.
    name: string. Name of the layer.
    **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).
"""
_EXAMPLES = {
    1: """
>>> kpool.layers.MaxBlurPooling1D()(np.random.rand(2, 16, 3)).shape
>>> # (2, 8, 3)
""",
    2: """
>>> layer = kpool.layers.MaxBlurPooling2D(pool_size=2, strides=2)
>>> layer(np.random.rand(8, 32, 32, 16)).shape  # (8, 16, 16, 16)
""",
    3: """
>>> x = np.random.rand(2, 8, 8, 8, 3)
>>> kpool.layers.MaxBlurPooling3D()(x).shape  # (2, 4, 4, 4, 3)
""",
}


class MaxBlurPooling(keras.layers.Layer):
    """Max-blur pooling for any number of spatial dims; see
    `MaxBlurPooling2D`."""

    num_spatial_dims = None

    def __init__(
        self,
        pool_size=2,
        strides=2,
        filter_size=3,
        padding="valid",
        padding_mode="reflect",
        data_format=None,
        name=None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        n = self.num_spatial_dims
        self.window = Window(n, pool_size, 1, padding, data_format)
        self.blur = Blur(n, filter_size, strides, padding_mode, data_format)
        self.pool_size = self.window.pool_size
        self.strides = self.blur.strides
        self.filter_size = self.blur.filter_size
        self.padding = self.window.padding
        self.padding_mode = self.blur.padding_mode
        self.data_format = self.window.data_format
        self.input_spec = keras.layers.InputSpec(ndim=n + 2)
        self._build_at_init()

    def call(self, inputs):
        return ops.max_blur_pool(
            inputs,
            pool_size=self.pool_size,
            strides=self.strides,
            filter_size=self.filter_size,
            padding=self.padding,
            padding_mode=self.padding_mode,
            data_format=self.data_format,
        )

    def compute_output_shape(self, input_shape):
        caller = type(self).__name__
        maxed = self.window.output_shape(input_shape, caller)
        return self.blur.output_shape(maxed, caller)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pool_size": self.pool_size,
                "strides": self.strides,
                "filter_size": self.filter_size,
                "padding": self.padding,
                "padding_mode": self.padding_mode,
                "data_format": self.data_format,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kpool")
class MaxBlurPooling1D(MaxBlurPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[1], 1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class MaxBlurPooling2D(MaxBlurPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[2], 2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class MaxBlurPooling3D(MaxBlurPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[3], 3)
    num_spatial_dims = 3


MaxBlurPool1D = MaxBlurPooling1D
MaxBlurPool2D = MaxBlurPooling2D
MaxBlurPool3D = MaxBlurPooling3D
