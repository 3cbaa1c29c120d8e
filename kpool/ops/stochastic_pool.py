import keras
from keras import ops

from kpool import backend
from kpool.ops.windows import Window, as_tensor, unit_slice

# Above this, `a**2` and the window sums of `a` are computed on `a / max`,
# per example and channel: float16's and float32's squares overflow from
# 2**8 and 2**64 on.
_RESCALE_ABOVE = 2.0**30


def stochastic_pool(
    inputs,
    pool_size,
    strides=None,
    padding="valid",
    data_format=None,
    training=False,
    seed=None,
):
    """Stochastic pooling (Zeiler and Fergus, 2013).

    For a window with activations `a_i >= 0`, let `p_i = a_i / sum_j a_j`.
    With `training=True` the output is `a_l` with `l ~ Multinomial(p)`,
    drawn independently for each window and channel; otherwise it is the
    expectation `sum_i p_i a_i = sum_i a_i**2 / sum_i a_i`.

    The method is defined for non-negative activations (it follows a ReLU
    in the paper), so the op pools `a = max(x, 0)`: a negative input
    carries no probability mass and is never sampled, and a window with no
    positive input gives 0. Under `"same"` the padded cells carry no mass
    either.

    Sampling draws one uniform `u` per output cell and inverts the window's
    cumulative sum: with `c_j` the running sum of the window's elements in
    row-major order, the output is the `a_j` with `c_{j-1} <= u * c_last <
    c_j`. The gradient reaches only the sampled element. The expectation is
    `mean(a**2) / mean(a)` over each window, two built-in average poolings.

    Special values: NaN in a window gives NaN and `+inf` gives `+inf`, in
    both phases, as in `keras.ops.average_pool`. Large finite activations
    do not overflow: where an example's channel holds values above 2**30,
    the sums are computed on `256 a / max(a)` over that channel (whose
    squares then lose precision only below `2**-71` of that maximum).
    float16 and bfloat16 inputs are computed in float32 and cast back.

    Reference: Zeiler and Fergus, "Stochastic Pooling for Regularization of
    Deep Convolutional Neural Networks", ICLR 2013.

    Args:
        inputs: tensor of rank 3, 4 or 5, laid out as `data_format` says.
        pool_size: int or tuple of ints, one per spatial dim.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        training: bool. Sample (`True`) or take the expectation (`False`).
        seed: int, `keras.random.SeedGenerator` or `None`, for the samples.
            Inside a compiled function, pass a `SeedGenerator`: an int seed
            is frozen at trace time.

    Returns:
        The pooled tensor, of the dtype of `inputs`.

    Example:

    >>> x = np.array([1.0, 3.0, 0.0, 0.0]).reshape(1, 4, 1)
    >>> kpool.ops.stochastic_pool(x, 2)  # [[[2.5], [0.]]]
    """
    inputs = as_tensor(inputs)
    window = Window.of(
        inputs, pool_size, strides, padding, data_format, "stochastic_pool"
    )
    window.check_fits(inputs.shape, "stochastic_pool")
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    compute_dtype = dtype if dtype in ("float32", "float64") else "float32"
    activations = ops.relu(ops.cast(inputs, compute_dtype))
    if training:
        outputs = _sample(window, activations, seed)
    else:
        outputs = _expectation(window, activations)
    return ops.cast(outputs, dtype)


def _sample(window, activations, seed):
    """`sample`, by the backend's form where it has one: each is handed
    the form without rescaling and the `keras.ops` form (rescaled where
    activations are large), and runs the first only where no activation
    is above `_RESCALE_ABOVE` (then every scale is 1, and the two sample
    alike). Without rescaling, by `cells_sample`."""

    def plain():
        uniform = draw_uniform(window, activations, seed)
        return cells_sample(window, activations, uniform)

    def rescaled():
        return sample(window, activations, _scale(window, activations), seed)

    fast = backend.fast_path("stochastic_sample", activations, window)
    if fast is None:
        return rescaled()
    return fast(activations, _RESCALE_ABOVE, plain, rescaled)


def _expectation(window, activations):
    """`expectation`, by the backend's form where it has one: each is
    handed the `keras.ops` form (rescaled) for the inputs it cannot take."""

    def rescaled():
        return expectation(window, activations, _scale(window, activations))

    fast = backend.fast_path("stochastic_expectation", activations, window)
    if fast is None:
        return rescaled()
    return fast(window, activations, _RESCALE_ABOVE, rescaled)


def _scale(window, activations):
    """1, or an example's channel's largest finite activation over 2**8
    where that activation is large (NaN and inf elsewhere in the channel
    do not count). Over 2**8 (exact) so that the scale's reciprocal stays
    normal: XLA's CPU code divides by multiplying with it, and flushes a
    subnormal one (below 2**-126) to 0. Scaled, activations are at most
    2**8, their squares 2**16."""
    finite = ops.where(
        ops.isfinite(activations), activations, ops.zeros_like(activations)
    )
    largest = ops.max(finite, axis=window.spatial_axes(), keepdims=True)
    scale = ops.where(
        largest > _RESCALE_ABOVE, largest * 2.0**-8, ops.ones_like(largest)
    )
    # The expectation is `E(a / s) * s = E(a)` for any `s` (it is
    # homogeneous of degree 1), so no gradient flows through the scale:
    # without this, autograd runs the maximum's backward pass for a sum
    # of terms that cancel (2x the pooling's training time on JAX).
    return ops.stop_gradient(scale)


def expectation(window, activations, scale):
    """`sum a**2 / sum a` over each window of `activations` (`a >= 0`)."""
    scaled = activations / scale
    padded = window.zero_pad(scaled)
    mean = window.window_means(padded)
    mean_square = window.window_means(window.zero_pad(ops.square(scaled)))
    # A window with mean 0 holds only zeros, so its mean square is 0 as well
    # and dividing it by 1 instead gives the 0 it should, with a finite
    # gradient.
    outputs = mean_square / ops.where(mean > 0, mean, ops.ones_like(mean))
    outputs = outputs * scale
    # +inf in a window: inf / inf, where the expectation is +inf.
    return ops.where(mean == float("inf"), mean, outputs)


def sample(window, activations, scale, seed):
    """One sampled element of each window of `activations` (`a >= 0`),
    drawn by `activations / scale`."""
    uniform = draw_uniform(window, activations, seed)
    windows = window.windows(window.zero_pad(activations))
    weights = windows / _window_scale(window, scale)
    # A product with the 0-or-1 mask of the sample, not a selection: its
    # gradient is one product where a selection's is two selections (each
    # a pass over the windows outside XLA). Exact for finite cells; a
    # window holding NaN or inf is given its sum below.
    chosen = ops.cast(sampled(window, weights, uniform), windows.dtype)
    outputs = ops.sum(windows * chosen, axis=window.window_axis)
    # Summed as sampled (rescaled): finite activations whose sum
    # overflows still give a sample.
    total = ops.sum(weights, axis=window.window_axis)
    # A window holding NaN or +inf samples nothing by the running sums;
    # it gives NaN or +inf, as the expectation does.
    special = ops.logical_not(ops.isfinite(total))
    return ops.where(special, total, outputs)


def cells_sample(window, activations, uniform):
    """`sample` without rescaling, from activations whose window sums are
    finite (no activation above `_RESCALE_ABOVE`, none NaN or inf), with
    `uniform` as `draw_uniform` shapes it: the same samples, and the same
    gradients (summed in another order where windows overlap).

    The window's `k` cells are `k` tensors of the output's size
    (`Window.cells`); their running sums `c_j`, the 0-or-1 mask of the
    sample (the first `a_j` with `u * c_last < c_j`, none where the
    window sums to 0) and the sample are then about `5 k` elementwise ops
    on those, and the gradient `k` products and the cells' slices and
    transpose. `sample` stacks the cells on a window axis and computes
    masks and sums over it, and with them the finite test of each
    window's sum: passes over tensors of all the windows' size, forward
    and backward, which TensorFlow's graph mode and torch's eager mode run
    one kernel each (`results/peers/PROFILE.md`: training 1.2-2.4x
    faster). Products with the masks, not selections: a selection's
    gradient is two of them, each slower than a product.
    """
    cells = window.cells(window.zero_pad(activations))
    uniform = ops.squeeze(uniform, window.window_axis)
    sums = [cells[0]]
    for a in cells[1:]:
        sums.append(sums[-1] + a)
    threshold = uniform * sums[-1]
    # `exceeds[j]`, 1 where `u * c_last < c_j`, never decreases along the
    # window, so `exceeds[j] - exceeds[j - 1]` is 1 at the sample alone;
    # products with it are exact for finite cells.
    exceeds = [ops.cast(threshold < c, activations.dtype) for c in sums]
    chosen = [exceeds[0]]
    chosen += [exceeds[j] - exceeds[j - 1] for j in range(1, len(cells))]
    outputs = cells[0] * chosen[0]
    for a, m in zip(cells[1:], chosen[1:], strict=True):
        outputs = outputs + a * m
    return outputs


def _window_scale(window, scale):
    """`scale` (per example and channel) broadcast against `windows`."""
    return ops.expand_dims(scale, window.window_axis)


def draw_uniform(window, activations, seed):
    """One uniform in [0, 1) per output cell and channel, shaped as the
    running sums of `sampled` with the window axis of length 1."""
    shape = list(window.output_shape(ops.shape(activations)))
    shape.insert(window.window_axis % (len(shape) + 1), 1)
    return backend.uniform(shape, activations.dtype, seed)


def sampled(window, windows, uniform):
    """True at the sampled element of each window of `Window.windows`."""
    axis = window.window_axis % len(windows.shape)
    size = windows.shape[axis]
    cumulative = backend.running_sums(window, windows)
    total = unit_slice(cumulative, axis, size - 1, 1)
    # The sample is the first element whose running sum exceeds the
    # threshold. The running sums never decrease, so `exceeds` is False then
    # True along a window and the sample is where it turns True. A zero
    # element is never it (its running sum equals the one before it), and a
    # window summing to 0 (threshold 0) never turns and outputs 0. Selecting
    # passes the gradient to the sampled element only.
    exceeds = uniform * total < cumulative
    pads = [(0, 0)] * len(exceeds.shape)
    pads[axis] = (1, 0)
    exceeded_before = ops.pad(
        unit_slice(exceeds, axis, 0, size - 1), pads, constant_values=False
    )
    return ops.logical_and(exceeds, ops.logical_not(exceeded_before))
