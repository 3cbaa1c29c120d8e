import keras

from kpool.ops.windows import check_rank, standardize_data_format


class BaseGlobalPooling(keras.layers.Layer):
    """Base class of the global kpool poolings, for any number of dims.

    It holds what every global pooling shares with
    `keras.layers.GlobalMaxPooling2D`: the arguments, the output shape
    (which checks the input's rank) and the config. A subclass sets
    `num_spatial_dims` and defines `call`, reducing over `self.spatial_axes`.
    """

    num_spatial_dims = None

    def __init__(self, data_format=None, keepdims=False, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.data_format = standardize_data_format(data_format)
        self.keepdims = keepdims
        first = 1 if self.data_format == "channels_last" else 2
        self.spatial_axes = tuple(range(first, first + self.num_spatial_dims))
        self.input_spec = keras.layers.InputSpec(ndim=self.num_spatial_dims + 2)

    def compute_output_shape(self, input_shape):
        check_rank(
            input_shape,
            self.num_spatial_dims,
            self.data_format,
            type(self).__name__,
        )
        if self.keepdims:
            return tuple(
                1 if axis in self.spatial_axes else n
                for axis, n in enumerate(input_shape)
            )
        return tuple(
            n
            for axis, n in enumerate(input_shape)
            if axis not in self.spatial_axes
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"data_format": self.data_format, "keepdims": self.keepdims}
        )
        return config
