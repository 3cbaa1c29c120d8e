import keras

from kpool.ops.windows import Window


class BasePooling(keras.layers.Layer):
    """Base class of the windowed kpool poolings, for any number of dims.

    It holds what every pooling shares with `keras.layers.MaxPooling2D`: the
    arguments (validated by `kpool.ops.windows.Window`), the output shape,
    which also checks the input's rank and that `"valid"` leaves a window,
    and the config. A subclass sets `num_spatial_dims` and defines `call`,
    which calls its `kpool.ops` op; a stateless subclass calls
    `self._build_at_init()` at the end of its `__init__`, as Keras's
    poolings do, and so must not override `build`.
    """

    num_spatial_dims = None

    def __init__(
        self,
        pool_size=2,
        strides=None,
        padding="valid",
        data_format=None,
        name=None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.window = Window(
            self.num_spatial_dims, pool_size, strides, padding, data_format
        )
        self.pool_size = self.window.pool_size
        self.strides = self.window.strides
        self.padding = self.window.padding
        self.data_format = self.window.data_format
        self.input_spec = keras.layers.InputSpec(ndim=self.num_spatial_dims + 2)

    @property
    def window_args(self):
        """The window arguments of the layer's op, as keywords."""
        return {
            "pool_size": self.pool_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
        }

    def compute_output_shape(self, input_shape):
        return self.window.output_shape(input_shape, type(self).__name__)

    def get_config(self):
        config = super().get_config()
        config.update(self.window_args)
        return config


class StatelessPooling(BasePooling):
    """A windowed pooling with no weights and no randomness.

    Built at instantiation, as Keras's poolings are; `call` applies `op`,
    the subclass's `kpool.ops` function, with the layer's window.
    """

    op = None

    def __init__(
        self,
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
        self._build_at_init()

    def call(self, inputs):
        return type(self).op(inputs, **self.window_args)


_SHAPES = {
    1: ("steps", "(temporal)"),
    2: ("height, width", "(spatial)"),
    3: ("dim1, dim2, dim3", "(spatial or spatio-temporal)"),
}


def layer_doc(summary, body, args, example, rank, output="pooled"):
    """A rank's class docstring in Keras's order, from one text per layer.

    `summary` and `body` may name `{rank}` and `{data}` (e.g. "2D (spatial)
    data"); `args` is the text under `Args:` (and `Call arguments:` after
    it, if any); `output` is how the output's dims are named ("pooled", or
    "" where the output keeps no spatial dims).
    """
    dims, kind = _SHAPES[rank]
    data = f"{rank}D {kind} data"
    spatial = dims
    out_spatial = ", ".join(f"pooled_{d.strip()}" for d in dims.split(","))
    if output is None:
        out_last, out_first = "(batch, channels)", "(batch, channels)"
    else:
        out_last = f"(batch, {out_spatial}, channels)"
        out_first = f"(batch, channels, {out_spatial})"

    def fill(text):
        # Not `str.format`: formulas hold braces.
        return text.replace("{rank}", str(rank)).replace("{data}", data)

    text = f"""{fill(summary)}

{fill(body).strip()}

{args.strip()}

Input shape:
    `(batch, {spatial}, channels)` if `data_format="channels_last"`, else
    `(batch, channels, {spatial})`.

Output shape:
    `{out_last}` if `data_format="channels_last"`, else `{out_first}`.

Example:

{example.strip()}
"""
    return text
