import keras
from keras import ops

from kpool.layers import tensorflow_kernels, tensorflow_ops
from kpool.layers.base_pooling import BasePooling


class StochasticPooling(BasePooling):
    """Stochastic pooling (Zeiler and Fergus, 2013).

    For a window with activations `a_i >= 0`, let `p_i = a_i / sum_j a_j`.
    In training the output is `a_l` with `l ~ Multinomial(p)`, drawn
    independently for each window and channel; in inference it is the
    expectation `sum_i p_i a_i = sum_i a_i**2 / sum_i a_i`.

    The method is defined for non-negative activations (it follows a ReLU in
    the paper), so the layer pools `a = max(x, 0)`: a negative input carries
    no probability mass and is never sampled. A window with no positive
    input (all zero or negative) gives 0 in training and in inference, never
    NaN. Under `"same"` the padded cells carry no mass either, so they are
    never the result and the output cell count follows
    `keras.layers.MaxPooling2D`: `floor((n - pool_size) / strides) + 1` under
    `"valid"`, `ceil(n / strides)` under `"same"`.

    Inference is `mean(a**2) / mean(a)` over each window, both means taken
    by the built-in average pooling of the zero-padded `a` (they share the
    window size as divisor, which cancels). Training draws one uniform `u`
    per output cell and samples by inverting the window's cumulative sum:
    with `c_j` the running sum of the window's elements in row-major order,
    the output is the `a_j` with `c_{j-1} <= u * c_last < c_j`. The
    gradient reaches only the sampled element. (On TensorFlow outside XLA
    on a CPU, fused kernels sample with the same `u` and pick the same
    elements: `tensorflow_ops`; where they cannot be built, overlapping
    windows are sampled by `tensorflow_kernels.stochastic_sample`, and both
    phases take hand-written gradients with the same values.) Both are
    computed in
    float32 when the compute dtype is float16 or bfloat16 (`a**2` overflows
    float16, and a bfloat16 uniform has only 8 bits), then cast back to the
    compute dtype.

    The spatial dims must be known when the layer is called in training or
    under `"same"`.

    Reference: Zeiler and Fergus, "Stochastic Pooling for Regularization of
    Deep Convolutional Neural Networks", ICLR 2013.

    Args:
        pool_size: int or tuple of ints, one per spatial dim. Window size.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"` (case-insensitive), as in
            `keras.layers.MaxPooling2D`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        seed: int or `None`. Seed of the layer's
            `keras.random.SeedGenerator`: two layers with the same seed draw
            the same samples.
        name: string. Name of the layer.
        **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).

    Call arguments:
        inputs: the input tensor.
        training: bool. Sample (`True`) or take the expectation (`False`).
    """

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

    def call(self, inputs, training=False):
        dtype = self.compute_dtype
        if dtype in ("float16", "bfloat16"):
            dtype = "float32"
        inputs = ops.cast(inputs, dtype)
        # TensorFlow outside XLA on a CPU: one fused pass over the windows
        # each way.
        if tensorflow_ops.applies(self):
            if training:
                outputs = tensorflow_ops.stochastic_sample(
                    self, inputs, self._draw_uniform(inputs)
                )
            else:
                outputs = tensorflow_ops.stochastic_expectation(self, inputs)
            return ops.cast(outputs, self.compute_dtype)
        # Otherwise, outside XLA (measured on TF-CPU,
        # results/layers/PROFILE.md): where windows overlap, the gradient of
        # the window extraction dominates and the kernel's scatter replaces
        # it; where they tile the input, the extraction is a reshape and the
        # kernel writes the gradient in the input's layout, the upstream
        # gradient broadcast over each window; other disjoint windows keep
        # the plain ops, faster there than the scatter.
        overlapping = any(
            k > s for k, s in zip(self.pool_size, self.strides, strict=True)
        )
        kernels = tensorflow_kernels.applies()
        tiled = kernels and tensorflow_kernels.window_blocks(self, inputs.shape)
        if training and overlapping and kernels:
            outputs = tensorflow_kernels.stochastic_sample(
                self, inputs, self._draw_uniform(inputs)
            )
        elif training and tiled:
            outputs = tensorflow_kernels.tiled_stochastic_sample(
                self, inputs, self._draw_uniform(inputs)
            )
        elif training:
            outputs = self._sample(
                self._zero_pad(ops.relu(inputs)), self._draw_uniform(inputs)
            )
        elif kernels:
            outputs = tensorflow_kernels.stochastic_expectation(self, inputs)
        else:
            # Zero padding carries no probability mass: padded cells add
            # nothing to the sums.
            outputs = self._expectation(self._zero_pad(ops.relu(inputs)))
        return ops.cast(outputs, self.compute_dtype)

    def _draw_uniform(self, inputs):
        """One uniform in [0, 1) per output cell and channel.

        Shaped as the running sums of `_sample` with the window axis of
        length 1, so both training paths draw the same numbers.
        """
        shape = list(self.compute_output_shape(ops.shape(inputs)))
        shape.insert(self._window_axis % (len(shape) + 1), 1)
        return tensorflow_kernels.uniform(
            shape, inputs.dtype, self.seed_generator
        )

    def _expectation(self, activations):
        # Both means divide by the window size, which cancels.
        mean_square = self._window_means(ops.square(activations))
        mean = self._window_means(activations)
        # A window with mean 0 holds only zeros, so its mean square is 0 as
        # well and dividing it by 1 instead gives the 0 it should, with a
        # finite gradient.
        return mean_square / ops.where(mean > 0, mean, ops.ones_like(mean))

    def _sample(self, activations, uniform):
        windows = self._windows(activations)
        sampled = self._sampled(windows, uniform)
        return ops.sum(ops.where(sampled, windows, 0), axis=self._window_axis)

    def _sampled(self, windows, uniform):
        """True at the sampled element of each window of `_windows`."""
        axis = self._window_axis % len(windows.shape)
        size = windows.shape[axis]
        if keras.config.backend() == "tensorflow":
            # TensorFlow in XLA: see `tensorflow_kernels.running_sums`.
            cumulative = tensorflow_kernels.running_sums(self, windows)
        else:
            cumulative = ops.cumsum(windows, axis=axis)
        total = self._unit_slice(cumulative, axis, size - 1, 1)
        # The sample is the first element whose running sum exceeds the
        # threshold. The running sums never decrease, so `exceeds` is False
        # then True along a window and the sample is where it turns True. A
        # zero element is never it (its running sum equals the one before
        # it), and a window summing to 0 (threshold 0) never turns and
        # outputs 0. Selecting passes the gradient to the sampled element
        # only.
        exceeds = uniform * total < cumulative
        pads = [(0, 0)] * len(exceeds.shape)
        pads[axis] = (1, 0)
        exceeded_before = ops.pad(
            self._unit_slice(exceeds, axis, 0, size - 1),
            pads,
            constant_values=False,
        )
        return ops.logical_and(exceeds, ops.logical_not(exceeded_before))

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config


@keras.saving.register_keras_serializable(package="kpool")
class StochasticPooling1D(StochasticPooling):
    """Stochastic pooling for 1D (temporal) data.

    See `StochasticPooling` for the arguments and the method.

    Input shape: `(batch, steps, channels)` if `channels_last`, else
    `(batch, channels, steps)`.

    Output shape: `(batch, pooled_steps, channels)` if `channels_last`, else
    `(batch, channels, pooled_steps)`.

    Example:

    >>> x = np.array([1.0, 3.0, 0.0, 0.0]).reshape(1, 4, 1)
    >>> kpool.layers.StochasticPooling1D(pool_size=2)(x)  # [[[2.5], [0.]]]
    """

    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class StochasticPooling2D(StochasticPooling):
    """Stochastic pooling for 2D (spatial) data.

    See `StochasticPooling` for the arguments and the method.

    Input shape: `(batch, height, width, channels)` if `channels_last`, else
    `(batch, channels, height, width)`.

    Output shape: `(batch, pooled_height, pooled_width, channels)` if
    `channels_last`, else `(batch, channels, pooled_height, pooled_width)`.

    Example:

    >>> layer = kpool.layers.StochasticPooling2D(pool_size=2, seed=1)
    >>> x = np.random.rand(8, 32, 32, 16)
    >>> layer(x, training=True).shape  # (8, 16, 16, 16), sampled elements
    """

    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class StochasticPooling3D(StochasticPooling):
    """Stochastic pooling for 3D (spatial or spatio-temporal) data.

    See `StochasticPooling` for the arguments and the method.

    Input shape: `(batch, dim1, dim2, dim3, channels)` if `channels_last`,
    else `(batch, channels, dim1, dim2, dim3)`.

    Output shape: `(batch, pooled_dim1, pooled_dim2, pooled_dim3, channels)`
    if `channels_last`, else
    `(batch, channels, pooled_dim1, pooled_dim2, pooled_dim3)`.

    Example:

    >>> x = np.random.rand(2, 8, 8, 8, 3)
    >>> kpool.layers.StochasticPooling3D(2)(x).shape  # (2, 4, 4, 4, 3)
    """

    num_spatial_dims = 3


StochasticPool1D = StochasticPooling1D
StochasticPool2D = StochasticPooling2D
StochasticPool3D = StochasticPooling3D
