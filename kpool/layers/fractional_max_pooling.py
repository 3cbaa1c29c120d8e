import numbers

import keras
import numpy as np
from keras import ops as keras_ops

from kpool import ops
from kpool.layers.base_pooling import layer_doc
from kpool.ops.fractional_max_pool import FractionalWindows

_SUMMARY = "Fractional max pooling for {data} (Graham, 2014)."
_BODY = """
Max pooling over regions that shrink each spatial dim by a factor
`alpha = n_in / n_out` that need not be an integer
(`kpool.ops.fractional_max_pool`). Along a dim of size `n` with `m`
outputs, a sequence `0 = a_0 < ... < a_m = n` of increments `floor(alpha)`
or `ceil(alpha)` cuts the dim into regions: pseudo-random,
`a_i = floor((i + u) * alpha) - floor(u * alpha)` for a uniform `u`, or
random, the increments in random order. With `pool_size=None` the regions
are Graham's, disjoint `[a_{i-1}, a_i - 1]` or (`overlapping=True`)
`[a_{i-1}, a_i]`; with a `pool_size` `k` they are
`torch.nn.FractionalMaxPool{rank}d`'s windows of `k` cells starting at a
sequence from `0` to `n - k`, which give torch's outputs given the same `u`.
`m` is `output_size`, or `int(n * output_ratio)`.

Training draws new sequences at every call, one per example, channel and
spatial dim, from the layer's `keras.random.SeedGenerator`. Inference is
deterministic by default (`inference_draws=1`): every example and channel
takes the pseudo-random sequence of `u = 0.5`, whatever `pseudo_random` is
(its increments are spread evenly). With `inference_draws=n > 1` the output
is the mean of `n` poolings with drawn sequences, Graham's test-time rule
(he used about a dozen); those draws come from the seed generator too.

Unlike `torch.nn.FractionalMaxPool{rank}d`, which draws in evaluation too,
`training=False` gives the same output every time. The spatial dims of the
input must be known.

Reference: Graham, "Fractional Max-Pooling", arXiv:1412.6071, 2014.
"""
_ARGS = """
Args:
    output_ratio: float in (0, 1) or a tuple of them, one per spatial dim.
        With neither it nor `output_size`, `1 / sqrt(2)` (Graham's).
    output_size: int or tuple of ints: the output's spatial shape.
    pool_size: `None` for Graham's regions, or an int or tuple of ints for
        torch's windows of that size.
    pseudo_random: bool. Pseudo-random (`True`) or random sequences.
    overlapping: bool. Graham's overlapping regions (`pool_size=None`).
    inference_draws: int >= 1. 1: one fixed pseudo-random sequence at
        inference; more: the mean over that many drawn sequences.
    data_format: `"channels_last"`, `"channels_first"`, or `None` for
        `keras.config.image_data_format()`.
    seed: int or `None`. Seed of the layer's `keras.random.SeedGenerator`.
    name: string. Name of the layer.
    **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).

Call arguments:
    inputs: the input tensor.
    training: bool. Draw new sequences (`True`) or apply the inference
        rule (`False`).
"""
_EXAMPLES = {
    2: """
>>> layer = kpool.layers.FractionalMaxPooling2D(output_ratio=0.7, seed=1)
>>> x = np.random.rand(8, 32, 32, 16)
>>> layer(x, training=True).shape  # (8, 22, 22, 16), new regions each call
""",
    3: """
>>> layer = kpool.layers.FractionalMaxPooling3D(output_size=5, pool_size=2)
>>> layer(np.random.rand(2, 8, 8, 8, 3)).shape  # (2, 5, 5, 5, 3)
""",
}


class FractionalMaxPooling(keras.layers.Layer):
    """Fractional max pooling for any rank; see `FractionalMaxPooling2D`."""

    num_spatial_dims = None

    def __init__(
        self,
        output_ratio=None,
        output_size=None,
        pool_size=None,
        pseudo_random=True,
        overlapping=False,
        inference_draws=1,
        data_format=None,
        seed=None,
        name=None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.windows = FractionalWindows(
            self.num_spatial_dims,
            output_size,
            output_ratio,
            pool_size,
            pseudo_random,
            overlapping,
            data_format,
        )
        if (
            isinstance(inference_draws, bool)
            or not isinstance(inference_draws, numbers.Integral)
            or inference_draws < 1
        ):
            raise ValueError(
                "`inference_draws` must be an int >= 1. Received: "
                f"inference_draws={inference_draws!r}"
            )
        self.output_ratio = self.windows.output_ratio
        self.output_size = self.windows.output_size
        self.pool_size = self.windows.pool_size
        self.pseudo_random = pseudo_random
        self.overlapping = overlapping
        self.inference_draws = int(inference_draws)
        self.data_format = self.windows.data_format
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.input_spec = keras.layers.InputSpec(ndim=self.num_spatial_dims + 2)
        self._build_at_init()

    def _pool(self, inputs, pseudo_random, samples=None):
        return ops.fractional_max_pool(
            inputs,
            output_size=self.output_size,
            output_ratio=self.output_ratio,
            pool_size=self.pool_size,
            pseudo_random=pseudo_random,
            overlapping=self.overlapping,
            samples=samples,
            seed=self.seed_generator,
            data_format=self.data_format,
        )

    def call(self, inputs, training=False):
        if training:
            return self._pool(inputs, self.pseudo_random)
        if self.inference_draws == 1:
            # One sequence for every example and channel: the op gathers
            # whole slices.
            samples = np.full((1, 1, self.num_spatial_dims), 0.5, "float32")
            return self._pool(inputs, True, samples)
        draws = [
            self._pool(inputs, self.pseudo_random)
            for _ in range(self.inference_draws)
        ]
        return keras_ops.mean(keras_ops.stack(draws), axis=0)

    def compute_output_shape(self, input_shape):
        return self.windows.output_shape(input_shape, type(self).__name__)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_ratio": self.output_ratio,
                "output_size": self.output_size,
                "pool_size": self.pool_size,
                "pseudo_random": self.pseudo_random,
                "overlapping": self.overlapping,
                "inference_draws": self.inference_draws,
                "data_format": self.data_format,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kpool")
class FractionalMaxPooling2D(FractionalMaxPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[2], 2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class FractionalMaxPooling3D(FractionalMaxPooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[3], 3)
    num_spatial_dims = 3
