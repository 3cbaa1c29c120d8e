import keras

from kpool import ops
from kpool.layers.base_pooling import layer_doc
from kpool.ops.spatial_pyramid_pool import (
    check_mode,
    spatial_pyramid_size,
    standardize_bins,
)
from kpool.ops.windows import check_rank, standardize_data_format

_SUMMARY = "Spatial pyramid pooling for {data} (He et al., 2014)."
_BODY = """
For each level `b` of `bins`, adaptive max (or average) pooling of the
input to a `b x b` grid (or `rows x columns` for a pair), flattened as
`keras.layers.Flatten` flattens it in `data_format`'s layout, and the
levels concatenated in order (`kpool.ops.spatial_pyramid_pool`). The output
has `channels * sum(rows * columns)` features whatever the input's spatial
size: a model built on `keras.Input((None, None, channels))` takes images
of any size and still ends in dense layers.

Bin `i` of `b` along a dim of size `n` covers cells `floor(i * n / b)` to
`ceil((i + 1) * n / b) - 1`, as in `keras.layers.AdaptiveMaxPooling2D` and
`torch.nn.AdaptiveMaxPool2d`; an input smaller than a level's grid repeats
cells. TFA's `SpatialPyramidPooling2D` returned `(batch, bins, channels)`
instead; reshape this layer's output to get it.

Reference: He, Zhang, Ren and Sun, "Spatial Pyramid Pooling in Deep
Convolutional Networks for Visual Recognition", ECCV 2014.
"""
_ARGS = """
Args:
    bins: sequence of ints or of `(rows, columns)` pairs: the pyramid's
        grids.
    mode: `"max"` (the paper's) or `"average"`.
    data_format: `"channels_last"`, `"channels_first"`, or `None` for
        `keras.config.image_data_format()`.
    name: string. Name of the layer.
    **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).
"""
_EXAMPLE = """
>>> images = keras.Input((None, None, 3))
>>> x = keras.layers.Conv2D(8, 3)(images)
>>> x = kpool.layers.SpatialPyramidPooling2D(bins=[1, 2, 4])(x)  # (None, 168)
>>> model = keras.Model(images, keras.layers.Dense(10)(x))
"""


@keras.saving.register_keras_serializable(package="kpool")
class SpatialPyramidPooling2D(keras.layers.Layer):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLE, 2, output=None)

    def __init__(
        self,
        bins=(1, 2, 4),
        mode="max",
        data_format=None,
        name=None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.bins = standardize_bins(bins)
        check_mode(mode)
        self.mode = mode
        self.data_format = standardize_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self._build_at_init()

    def call(self, inputs):
        return ops.spatial_pyramid_pool(
            inputs, self.bins, self.mode, data_format=self.data_format
        )

    def compute_output_shape(self, input_shape):
        check_rank(input_shape, 2, self.data_format, type(self).__name__)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        channels = input_shape[channel_axis]
        return (input_shape[0], spatial_pyramid_size(self.bins, channels))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bins": [list(level) for level in self.bins],
                "mode": self.mode,
                "data_format": self.data_format,
            }
        )
        return config
