import keras

from kpool import ops
from kpool.layers.base_pooling import BasePooling, layer_doc

_SUMMARY = "Stochastic pooling for {data} (Zeiler and Fergus, 2013)."
_BODY = """
For a window with activations `a_i >= 0`, let `p_i = a_i / sum_j a_j`. In
training the output is `a_l` with `l ~ Multinomial(p)`, drawn independently
for each window and channel; in inference it is the expectation
`sum_i p_i a_i = sum_i a_i**2 / sum_i a_i` (`kpool.ops.stochastic_pool`).

The method is defined for non-negative activations (it follows a ReLU in
the paper), so the layer pools `a = max(x, 0)`: a negative input carries no
probability mass and is never sampled. A window with no positive input
gives 0, never NaN. Under `"same"` padded cells carry no mass either, and
the output cell count follows `keras.layers.MaxPooling{rank}D`.

Training draws one uniform per output cell from the layer's
`keras.random.SeedGenerator` and samples by inverting the window's
cumulative sum; the gradient reaches only the sampled element. NaN in a
window gives NaN and `+inf` gives `+inf`, as average pooling does; large
finite activations do not overflow. float16 and bfloat16 inputs are
computed in float32 (`a**2` overflows float16) and cast back.

Reference: Zeiler and Fergus, "Stochastic Pooling for Regularization of
Deep Convolutional Neural Networks", ICLR 2013.
"""
_ARGS = """
Args:
    pool_size: int or tuple of ints, one per spatial dim. Window size.
    strides: int, tuple of ints, or `None` (meaning `pool_size`).
    padding: `"valid"` or `"same"` (case-insensitive), as in
        `keras.layers.MaxPooling2D`.
    data_format: `"channels_last"`, `"channels_first"`, or `None` for
        `keras.config.image_data_format()`.
    seed: int or `None`. Seed of the layer's `keras.random.SeedGenerator`:
        two layers with the same seed draw the same samples.
    name: string. Name of the layer.
    **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).

Call arguments:
    inputs: the input tensor.
    training: bool. Sample (`True`) or take the expectation (`False`).
"""
_EXAMPLES = {
    1: """
>>> x = np.array([1.0, 3.0, 0.0, 0.0]).reshape(1, 4, 1)
>>> kpool.layers.StochasticPooling1D(pool_size=2)(x)  # [[[2.5], [0.]]]
""",
    2: """
>>> layer = kpool.layers.StochasticPooling2D(pool_size=2, seed=1)
>>> x = np.random.rand(8, 32, 32, 16)
>>> layer(x, training=True).shape  # (8, 16, 16, 16), sampled elements
""",
    3: """
>>> x = np.random.rand(2, 8, 8, 8, 3)
>>> kpool.layers.StochasticPooling3D(2)(x).shape  # (2, 4, 4, 4, 3)
""",
}


class StochasticPooling(BasePooling):
    """Stochastic pooling for any rank; see `StochasticPooling2D`."""

    def __init__(
        self,
        pool_size=2,
        strides=None,
        padding="valid",
        data_format=None,
        seed=None,
        name=None,
        **kwargs,
    ):
        super().__init__(
            pool_size, strides, padding, data_format, name=name, **kwargs
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._build_at_init()

    def call(self, inputs, training=False):
        return ops.stochastic_pool(
            inputs,
            **self.window_args,
            training=training,
            seed=self.seed_generator,
        )

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config


@keras.saving.register_keras_serializable(package="kpool")
class StochasticPooling1D(StochasticPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[1], 1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class StochasticPooling2D(StochasticPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[2], 2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class StochasticPooling3D(StochasticPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[3], 3)
    num_spatial_dims = 3


StochasticPool1D = StochasticPooling1D
StochasticPool2D = StochasticPooling2D
StochasticPool3D = StochasticPooling3D
