import keras

from kpool import ops
from kpool.layers.base_pooling import BasePooling, layer_doc
from kpool.ops.max_unpool import unpooled_spatial_shape
from kpool.ops.windows import standardize_tuple

_SUMMARY = "Max unpooling for {data} (SegNet): values back to their argmax."
_BODY = """
Called as `layer(inputs, indices)` with the `(values, indices)` of
`kpool.layers.MaxPoolingWithArgmax{rank}D` (or values of that shape, say a
decoder's), it returns a map of the pooled input's size that is zero except
at `indices`, which get the values of `inputs` (`kpool.ops.max_unpool`).
Where windows overlap and share a maximum, its values add up (as in TFA's
`MaxUnpooling2D`; `torch.nn.MaxUnpool2d` keeps one). The gradient reads the
upstream gradient at `indices`.

The window arguments are the pooling's. They give the default output size,
`(n - 1) * strides + pool_size` under `"valid"` (as `torch.nn.MaxUnpool2d`)
and `n * strides` under `"same"`; `output_size` gives another one that pools
back to the input's size (an odd encoder map, say). The spatial dims of the
input must be known.

Reference: Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep
Convolutional Encoder-Decoder Architecture for Image Segmentation", TPAMI
2017.
"""
_ARGS = """
Args:
    pool_size: int or tuple of ints, one per spatial dim: the pooling's
        window.
    strides: int, tuple of ints, or `None` (meaning `pool_size`).
    padding: `"valid"` or `"same"` (case-insensitive): the pooling's.
    output_size: `None`, or an int or tuple of ints, one per spatial dim:
        the output's spatial shape.
    data_format: `"channels_last"`, `"channels_first"`, or `None` for
        `keras.config.image_data_format()`.
    name: string. Name of the layer.
    **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).

Call arguments:
    inputs: the values to unpool.
    indices: int tensor of the shape of `inputs`, laid out as
        `kpool.ops.max_pool_with_argmax` returns them.
"""
_EXAMPLE = """
>>> x = np.random.rand(2, 7, 7, 3).astype("float32")
>>> values, indices = kpool.layers.MaxPoolingWithArgmax2D(2)(x)
>>> kpool.layers.MaxUnpooling2D(2, output_size=7)(values, indices).shape
(2, 7, 7, 3)
"""


class MaxUnpooling(BasePooling):
    """Max unpooling for any rank; see `MaxUnpooling2D`."""

    def __init__(
        self,
        pool_size=2,
        strides=None,
        padding="valid",
        output_size=None,
        data_format=None,
        name=None,
        **kwargs,
    ):
        super().__init__(
            pool_size, strides, padding, data_format, name=name, **kwargs
        )
        self.output_size = (
            None
            if output_size is None
            else standardize_tuple(
                output_size, self.num_spatial_dims, "output_size"
            )
        )
        self.input_spec = None  # Two inputs; `max_unpool` checks them.
        self._build_at_init()

    def call(self, inputs, indices):
        return ops.max_unpool(
            inputs, indices, **self.window_args, output_size=self.output_size
        )

    def compute_output_shape(self, inputs_shape, indices_shape=None):
        size = unpooled_spatial_shape(
            self.window, inputs_shape, self.output_size, type(self).__name__
        )
        if self.window.channels_last:
            return (inputs_shape[0], *size, inputs_shape[-1])
        return (inputs_shape[0], inputs_shape[1], *size)

    def get_config(self):
        config = super().get_config()
        config["output_size"] = self.output_size
        return config


@keras.saving.register_keras_serializable(package="kpool")
class MaxUnpooling2D(MaxUnpooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLE, 2)
    num_spatial_dims = 2
