import keras

from kpool import ops
from kpool.layers.base_pooling import StatelessPooling, layer_doc

_SUMMARY = "Max pooling for {data} that also returns the argmax indices."
_BODY = """
Returns `(values, indices)` (`kpool.ops.max_pool_with_argmax`): `values`
is `keras.layers.MaxPooling{rank}D`'s output, with its gradient, and
`indices` (int32, the same shape) the flat index of each maximum within its
example and channel, row-major over the spatial dims (`h * width + w` in
2D) whatever `data_format` is: `torch.nn.MaxPool2d(return_indices=True)`'s
layout. Pass both to `kpool.layers.MaxUnpooling{rank}D` to scatter a
decoder's values back to where the maxima were (SegNet). TFA's
`MaxUnpooling2D` used TensorFlow's layout instead, flat over
`(batch, height, width, channels)`.

A padded cell is never a maximum; with ties the first maximal cell of the
window in row-major order wins.
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
_EXAMPLE = """
A SegNet-style encoder-decoder, the pool indices passed to the decoder:

>>> images = keras.Input((32, 32, 3))
>>> x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(images)
>>> x, indices = kpool.layers.MaxPoolingWithArgmax2D(2)(x)
>>> x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
>>> x = kpool.layers.MaxUnpooling2D(2)(x, indices)  # (None, 32, 32, 16)
>>> masks = keras.layers.Conv2D(4, 1, activation="softmax")(x)
>>> model = keras.Model(images, masks)
"""


class MaxPoolingWithArgmax(StatelessPooling):
    """Max pooling with argmax for any rank; see `MaxPoolingWithArgmax2D`."""

    op = staticmethod(ops.max_pool_with_argmax)

    def compute_output_shape(self, input_shape):
        shape = super().compute_output_shape(input_shape)
        return shape, shape

    def compute_output_spec(self, inputs):
        shape, _ = self.compute_output_shape(inputs.shape)
        return (
            keras.KerasTensor(shape, dtype=self.compute_dtype),
            keras.KerasTensor(shape, dtype="int32"),
        )


@keras.saving.register_keras_serializable(package="kpool")
class MaxPoolingWithArgmax2D(MaxPoolingWithArgmax):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLE, 2)
    num_spatial_dims = 2
