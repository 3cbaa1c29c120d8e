import math
import numbers

import keras

from kpool import ops
from kpool.layers.base_pooling import BasePooling, layer_doc
from kpool.layers.unit_interval import UnitInterval

GRANULARITIES = {
    "random": ("region", "channel", "layer"),
    "learned": ("layer", "channel"),
    "gated": ("layer", "channel"),
}

_SUMMARY = "Mixed max/average pooling for {data}."
_BODY = """
Every mode outputs `a * max + (1 - a) * avg` (`kpool.ops.mixed_pool`), with
`max` and `avg` the maximum and the mean of the window's cells inside the
input, as `MaxPooling{rank}D` and `AveragePooling{rank}D` compute them
(under `"same"` padded cells never count). The modes differ in `a`:

- `"random"` (Yu et al., 2014): in training `a` is 1 (max) with probability
  `alpha` and 0 (average) otherwise, drawn independently for each unit of
  `granularity`, per example: `"region"` for each output cell and channel,
  `"channel"` for each channel, `"layer"` once for the whole example. In
  inference `a = alpha`: the expectation of the training output, as
  `Dropout`'s rescaling matches its training mean. (The paper reuses, at
  test time, the choice made most often in training; with independent
  draws that converges to the majority choice, which `alpha` alone decides,
  so recording it adds state without information.) Stateless: built at
  instantiation.
- `"learned"` (Lee et al., 2016, "mixed"): `a` is a trainable weight named
  `"alpha"`, one per layer or per channel (`granularity`), initialised to
  `alpha` and kept in [0, 1] by the `UnitInterval` constraint.
- `"gated"` (Lee et al., 2016): `a = sigmoid(w . region)` for each output
  cell and channel, with the window's elements flattened in row-major
  order and `w` a trainable weight named `"gate_kernel"` of length
  `prod(pool_size)`, one per layer or per channel (`granularity`). Under
  `"same"` the gate sees padded cells as zeros. `w` starts at zeros: the
  gate opens at 0.5 for every input, so training starts from the half-half
  mix, independently of the activations' scale.

Gradients reach both the max and the average paths (weighted by `a`) and,
in the learned and gated modes, `a` itself. A window holding `+inf` gives
`+inf`, as both built-in poolings do; NaN propagates.

Under `"valid"` the output has `floor((n - pool_size) / strides) + 1` cells
along a spatial dim of size `n`; under `"same"`, `ceil(n / strides)`.

References:
    Yu, Wang, Chen and Wei, "Mixed Pooling for Convolutional Neural
    Networks", RSKT 2014.
    Lee, Gallagher and Tu, "Generalizing Pooling Functions in Convolutional
    Neural Networks: Mixed, Gated, and Tree", AISTATS 2016.
"""
_ARGS = """
Args:
    pool_size: int or tuple of ints, one per spatial dim. Window size.
    strides: int, tuple of ints, or `None` (meaning `pool_size`).
    padding: `"valid"` or `"same"` (case-insensitive), as in
        `keras.layers.MaxPooling2D`.
    data_format: `"channels_last"`, `"channels_first"`, or `None` for
        `keras.config.image_data_format()`.
    mode: `"random"`, `"learned"` or `"gated"`. How `a` is chosen.
    alpha: float in [0, 1]. `"random"`: the probability of max pooling;
        `"learned"`: the initial `a`. Unused by `"gated"`.
    granularity: the unit that gets its own `a`. `"random"`: `"region"`
        (default), `"channel"` or `"layer"`; `"learned"` and `"gated"`:
        `"layer"` (default) or `"channel"`.
    seed: int or `None`. Seed of the `keras.random.SeedGenerator` of the
        `"random"` mode.
    name: string. Name of the layer.
    **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).

Call arguments:
    inputs: the input tensor.
    training: bool. In `"random"` mode, draw `a` (`True`) or use `alpha`
        (`False`). The other modes ignore it.
"""
_EXAMPLES = {
    1: """
>>> x = np.array([1.0, 3.0, 2.0, 2.0]).reshape(1, 4, 1)
>>> layer = kpool.layers.MixedPooling1D(pool_size=2, alpha=0.25)
>>> layer(x)  # inference: 0.25 * max + 0.75 * avg = [[[2.25], [2.]]]
""",
    2: """
>>> layer = kpool.layers.MixedPooling2D(3, 2, mode="gated",
...                                     granularity="channel")
>>> layer(np.random.rand(8, 32, 32, 16)).shape  # (8, 15, 15, 16)
""",
    3: """
>>> layer = kpool.layers.MixedPooling3D(2, mode="learned")
>>> layer(np.random.rand(2, 8, 8, 8, 3)).shape  # (2, 4, 4, 4, 3)
""",
}


class MixedPooling(BasePooling):
    """Mixed pooling for any rank; see `MixedPooling2D`."""

    def __init__(
        self,
        pool_size=2,
        strides=None,
        padding="valid",
        data_format=None,
        mode="random",
        alpha=0.5,
        granularity=None,
        seed=None,
        name=None,
        **kwargs,
    ):
        super().__init__(
            pool_size, strides, padding, data_format, name=name, **kwargs
        )
        if mode not in GRANULARITIES:
            raise ValueError(
                f"`mode` must be one of {list(GRANULARITIES)}. "
                f"Received: mode={mode!r}"
            )
        if not (
            isinstance(alpha, numbers.Real)
            and not isinstance(alpha, bool)
            and 0 <= alpha <= 1
        ):
            raise ValueError(
                f"`alpha` must be a float in [0, 1]. Received: alpha={alpha!r}"
            )
        allowed = GRANULARITIES[mode]
        granularity = allowed[0] if granularity is None else granularity
        if granularity not in allowed:
            raise ValueError(
                f"`granularity` must be one of {list(allowed)} when "
                f"mode={mode!r}. Received: granularity={granularity!r}"
            )
        self.mode = mode
        self.alpha = float(alpha)
        self.granularity = granularity
        self.seed = seed
        if mode == "random":
            self.seed_generator = keras.random.SeedGenerator(seed)
            # Stateless, so built now, as Keras's `_build_at_init` builds
            # the layers that keep the default `build` (this class defines
            # one for the other modes' weights). A subclass that overrides
            # `build` is left to build itself.
            if type(self).build is MixedPooling.build:
                self.built = True
                self._post_build()
                self._lock_state()

    def build(self, input_shape):
        per_unit = (
            (input_shape[self.window.channel_axis],)
            if self.granularity == "channel"
            else ()
        )
        if self.mode == "learned":
            self.mixing_weight = self.add_weight(
                name="alpha",
                shape=per_unit,
                initializer=keras.initializers.Constant(self.alpha),
                constraint=UnitInterval(),
            )
        elif self.mode == "gated":
            self.gate_kernel = self.add_weight(
                name="gate_kernel",
                shape=(math.prod(self.pool_size), *per_unit),
                initializer="zeros",
            )

    def call(self, inputs, training=False):
        if self.mode == "learned":
            mixing = {"alpha": keras.ops.cast(self.mixing_weight, inputs.dtype)}
        elif self.mode == "gated":
            mixing = {"gate_kernel": self.gate_kernel}
        else:
            mixing = {
                "alpha": self.alpha,
                "granularity": self.granularity,
                "training": bool(training),
                "seed": self.seed_generator,
            }
        return ops.mixed_pool(inputs, **self.window_args, **mixing)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mode": self.mode,
                "alpha": self.alpha,
                "granularity": self.granularity,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kpool")
class MixedPooling1D(MixedPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[1], 1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class MixedPooling2D(MixedPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[2], 2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class MixedPooling3D(MixedPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[3], 3)
    num_spatial_dims = 3


MixedPool1D = MixedPooling1D
MixedPool2D = MixedPooling2D
MixedPool3D = MixedPooling3D
