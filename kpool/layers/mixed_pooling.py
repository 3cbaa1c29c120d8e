import math
import numbers

import keras
from keras import ops

from kpool.layers import tensorflow_kernels, tensorflow_ops
from kpool.layers.base_pooling import BasePooling
from kpool.layers.unit_interval import UnitInterval

GRANULARITIES = {
    "random": ("region", "channel", "layer"),
    "learned": ("layer", "channel"),
    "gated": ("layer", "channel"),
}


class MixedPooling(BasePooling):
    """Mixed pooling: a mix of max and average pooling of each window.

    Every mode outputs `a * max + (1 - a) * avg`, with `max` and `avg` the
    maximum and the mean of the window's cells inside the input, as
    `MaxPooling*D` and `AveragePooling*D` compute them on TensorFlow and JAX
    (under `"same"` padded cells never count). The modes differ in `a`:

    - `"random"` (Yu et al., 2014): in training `a` is 1 (max) with
      probability `alpha` and 0 (average) otherwise, drawn independently for
      each unit given by `granularity`, all per example: `"region"` draws
      for each output cell and channel, `"channel"` for each channel,
      `"layer"` once for the whole example. In inference `a = alpha`: the
      output is the expectation of the training output, as `Dropout`'s
      rescaling matches its training mean. This is deterministic and needs
      no state. The paper instead reuses, at test time, the choice made most
      often in training; with independent draws that count converges to the
      majority choice, which `alpha` alone decides (max iff `alpha > 0.5`),
      so recording it adds state without adding information.
    - `"learned"` (Lee et al., 2016, "mixed"): `a` is a trainable weight
      named `"alpha"`, one per layer or per channel (`granularity`),
      initialised to `alpha` and kept in [0, 1] by the `UnitInterval`
      constraint, which clips it after each update.
    - `"gated"` (Lee et al., 2016): `a = sigmoid(w . region)`, for each
      output cell and channel, with the window's elements flattened in
      row-major order and `w` a trainable weight named `"gate_kernel"` of
      length `prod(pool_size)`, one per layer or per channel
      (`granularity`). Under `"same"` the gate sees padded cells as zeros.
      `w` starts at zeros: the gate then opens at 0.5 for every input, so
      training starts from the plain half-half mix (as `"learned"` does with
      `alpha=0.5`), the gradient with respect to `w` is not zero, and the
      start does not depend on the scale of the activations, as a random
      `w` would through the sigmoid's saturation. The gate needs the
      spatial dims to be known when the layer is called, as does `"same"`
      padding in every mode.

    Gradients reach both the max and the average paths (weighted by `a`)
    and, in the learned and gated modes, `a` itself. (On TensorFlow outside
    XLA on a CPU, fused kernels compute the same values, drawing the random
    mode's choices from the same seed: `tensorflow_ops`; where they cannot
    be built, the gradients are hand-written: `tensorflow_kernels`.)

    Under `"valid"` the output has `floor((n - pool_size) / strides) + 1`
    cells along a spatial dim of size `n`; under `"same"`, `ceil(n / strides)`.

    References:
        Yu, Wang, Chen and Wei, "Mixed Pooling for Convolutional Neural
        Networks", RSKT 2014.
        Lee, Gallagher and Tu, "Generalizing Pooling Functions in
        Convolutional Neural Networks: Mixed, Gated, and Tree", AISTATS 2016.

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
        granularity: the unit that gets its own `a`. `"random"`:
            `"region"` (default), `"channel"` or `"layer"`; `"learned"` and
            `"gated"`: `"layer"` (default) or `"channel"`.
        seed: int or `None`. Seed of the `keras.random.SeedGenerator` of the
            `"random"` mode.
        name: string. Name of the layer.
        **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).

    Call arguments:
        inputs: the input tensor.
        training: bool. In `"random"` mode, draw `a` (`True`) or use
            `alpha` (`False`). The other modes ignore it.
    """

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
        if not (isinstance(alpha, numbers.Real) and 0 <= alpha <= 1):
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

    def build(self, input_shape):
        super().build(input_shape)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        per_unit = (
            (input_shape[channel_axis],)
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
        choose = self.mode == "random" and bool(training)
        # TensorFlow outside XLA: the fused kernels (`tensorflow_ops`), or
        # where they cannot be built, hand-written gradients over built-in
        # ops (`tensorflow_kernels`; random-mode inference mixes with the
        # constant `alpha` and needs none).
        fused = tensorflow_ops.applies(self)
        if fused and self.mode == "gated":
            kernel = ops.cast(self.gate_kernel, inputs.dtype)
            return tensorflow_ops.mixed_pool(self, inputs, gate_kernel=kernel)
        if fused and choose:  # The kernel draws the choices.
            return tensorflow_ops.mixed_pool(self, inputs)
        kernel = not fused and (
            tensorflow_kernels.applies() and (self.mode != "random" or choose)
        )
        # The kernels pad for themselves; the gate and the keras.ops path
        # need the padded input.
        padded = None
        if self.mode == "gated" or not (fused or kernel):
            padded = self._zero_pad(inputs)
        if self.mode == "learned":
            mixing = self._broadcast_channels(self.mixing_weight)
        elif self.mode == "gated":
            mixing = ops.sigmoid(self._gate_logits(padded))
        elif choose:
            mixing = self._draw_max_choices(inputs)
        else:
            mixing = ops.cast(self.alpha, inputs.dtype)
        if fused:
            return tensorflow_ops.mixed_pool(self, inputs, mixing)
        if kernel:
            return tensorflow_kernels.mixed_pool(self, inputs, mixing, choose)
        max_pooled = self._max_pool(inputs)
        avg_pooled = self._average_pool(inputs, padded)
        if choose:
            return ops.where(mixing, max_pooled, avg_pooled)
        return avg_pooled + mixing * (max_pooled - avg_pooled)

    def _draw_max_choices(self, inputs):
        """True where a unit takes max pooling, broadcastable to the output."""
        output_shape = self.compute_output_shape(ops.shape(inputs))
        rank = len(output_shape)
        channel_axis = 1 if self.data_format == "channels_first" else -1
        kept_axes = {0}
        if self.granularity == "region":
            kept_axes = set(range(rank))
        elif self.granularity == "channel":
            kept_axes.add(channel_axis % rank)
        shape = [
            n if axis in kept_axes else 1 for axis, n in enumerate(output_shape)
        ]
        # Drawn in float32 whatever the compute dtype: a bfloat16 uniform has
        # 8 bits, too coarse to compare with an arbitrary `alpha`.
        uniform = tensorflow_kernels.uniform(
            shape, "float32", self.seed_generator
        )
        return uniform < self.alpha

    def _gate_logits(self, padded):
        kernel = ops.cast(self.gate_kernel, padded.dtype)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        channels = padded.shape[channel_axis]
        # keras.ops has no 3D depthwise convolution on TensorFlow, and XLA
        # (JAX, TensorFlow with jit_compile=True) runs one on CPU 3-9x slower
        # than the window extraction it fuses; TensorFlow's graph mode and
        # torch run the convolution as one fast kernel, where the extraction
        # costs several times more.
        backend = keras.config.backend()
        in_xla = backend == "jax" or (
            backend == "tensorflow" and not tensorflow_kernels.applies()
        )
        if self.num_spatial_dims == 3 or in_xla:
            windows = self._windows(padded)
            if len(kernel.shape) == 1 and self._channels_last:
                kernel = kernel[:, None]
            elif len(kernel.shape) == 2 and not self._channels_last:
                kernel = ops.reshape(
                    ops.transpose(kernel),
                    (channels, *(1,) * self.num_spatial_dims, -1),
                )
            return ops.sum(windows * kernel, axis=self._window_axis)
        # Each window's `w . region` is a depthwise convolution of the
        # zero-padded input, one kernel per channel.
        if len(kernel.shape) == 1:
            kernel = ops.repeat(kernel[:, None], channels, axis=1)
        kernel = ops.reshape(kernel, (*self.pool_size, channels, 1))
        return ops.depthwise_conv(
            padded,
            kernel,
            strides=self.strides,
            padding="valid",
            data_format=self.data_format,
        )

    def _broadcast_channels(self, weight):
        """Reshapes a per-channel weight to broadcast against the output."""
        if self.data_format == "channels_last" or not len(weight.shape):
            return weight
        return ops.reshape(weight, (-1,) + (1,) * self.num_spatial_dims)

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
    """Mixed max/average pooling for 1D (temporal) data.

    See `MixedPooling` for the arguments and the modes.

    Input shape: `(batch, steps, channels)` if `channels_last`, else
    `(batch, channels, steps)`.

    Output shape: `(batch, pooled_steps, channels)` if `channels_last`, else
    `(batch, channels, pooled_steps)`.

    Example:

    >>> x = np.array([1.0, 3.0, 2.0, 2.0]).reshape(1, 4, 1)
    >>> layer = kpool.layers.MixedPooling1D(pool_size=2, alpha=0.25)
    >>> layer(x)  # inference: 0.25 * max + 0.75 * avg = [[[2.25], [2.]]]
    """

    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class MixedPooling2D(MixedPooling):
    """Mixed max/average pooling for 2D (spatial) data.

    See `MixedPooling` for the arguments and the modes.

    Input shape: `(batch, height, width, channels)` if `channels_last`, else
    `(batch, channels, height, width)`.

    Output shape: `(batch, pooled_height, pooled_width, channels)` if
    `channels_last`, else `(batch, channels, pooled_height, pooled_width)`.

    Example:

    >>> layer = kpool.layers.MixedPooling2D(3, 2, mode="gated",
    ...                                     granularity="channel")
    >>> layer(np.random.rand(8, 32, 32, 16)).shape  # (8, 15, 15, 16)
    """

    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class MixedPooling3D(MixedPooling):
    """Mixed max/average pooling for 3D (spatial or spatio-temporal) data.

    See `MixedPooling` for the arguments and the modes.

    Input shape: `(batch, dim1, dim2, dim3, channels)` if `channels_last`,
    else `(batch, channels, dim1, dim2, dim3)`.

    Output shape: `(batch, pooled_dim1, pooled_dim2, pooled_dim3, channels)`
    if `channels_last`, else
    `(batch, channels, pooled_dim1, pooled_dim2, pooled_dim3)`.

    Example:

    >>> layer = kpool.layers.MixedPooling3D(2, mode="learned")
    >>> layer(np.random.rand(2, 8, 8, 8, 3)).shape  # (2, 4, 4, 4, 3)
    """

    num_spatial_dims = 3


MixedPool1D = MixedPooling1D
MixedPool2D = MixedPooling2D
MixedPool3D = MixedPooling3D
