from keras import ops

from kpool.ops.window_cells import inside_mask, low_rank_windows
from kpool.ops.windows import Window, as_tensor, float_compute_dtype


def soft_pool(
    inputs, pool_size, strides=None, padding="valid", data_format=None
):
    """SoftPool: `sum_i softmax(x)_i * x_i` over each window, per channel.

    For each window `R` and channel, `y = sum_{i in R} w_i x_i` with
    `w_i = exp(x_i) / sum_{j in R} exp(x_j)` (Stergiou, Poppe and
    Kalliatakis, 2021): a softmax-weighted average between the mean (equal
    activations) and the maximum (one dominant activation). It is computed
    as `w_i = exp(x_i - m) / sum_j exp(x_j - m)` with `m` the window's
    maximum, which leaves `y` unchanged but keeps every exponential in
    (0, 1] and the denominator at least 1: large activations neither
    overflow nor give NaN. Under `"same"` padded cells carry no weight
    (they are not in `R`). A window holding `+inf` gives `+inf`, one of only
    `-inf` gives `-inf`; NaN propagates. float16 and bfloat16 inputs are
    computed in float32.

    The authors' PyTorch code computes something else on CPU: its CPU path
    (issues #4 and #61 of alexandrosstergiou/SoftPool) sums the
    exponentials over the channel dimension,
    `torch.sum(torch.exp(x), dim=1, keepdim=True)`, so every channel of a
    cell gets one shared weight, and subtracts no maximum, so `exp`
    overflows above about 88 in float32. kpool follows the paper's formula.

    Under `"valid"` the output has `floor((n - pool_size) / strides) + 1`
    cells along a spatial dim of size `n`; under `"same"`,
    `ceil(n / strides)`.

    Reference:
        Stergiou, Poppe and Kalliatakis, "Refining activation downsampling
        with SoftPool", ICCV 2021.

    Args:
        inputs: tensor of rank 3, 4 or 5, laid out as `data_format` says.
            The spatial dims must be known.
        pool_size: int or tuple of ints, one per spatial dim.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.

    Returns:
        The pooled tensor, of the dtype of `inputs`.

    Example:

    >>> x = np.array([0.0, np.log(3.0), 1.0, 1.0]).reshape(1, 4, 1)
    >>> kpool.ops.soft_pool(x, 2)  # [[[0.75 * log(3)], [1.]]]
    """
    inputs = as_tensor(inputs)
    window = Window.of(
        inputs, pool_size, strides, padding, data_format, "soft_pool"
    )
    window.check_fits(inputs.shape, "soft_pool")
    dtype = inputs.dtype
    x = ops.cast(inputs, float_compute_dtype(dtype))
    cells = low_rank_windows(window, window.zero_pad(x))
    inside = inside_mask(window, x.shape)
    axis = window.window_axis
    masked = ops.where(inside, cells, float("-inf"))
    # y does not depend on m, so no gradient need flow through it.
    peak = ops.stop_gradient(ops.max(masked, axis=axis, keepdims=True))
    exponentials = ops.exp(masked - peak)  # exp(-inf) = 0 when padded
    # Normalised before the product: a convex combination of the cells,
    # which cannot overflow where a sum of exp * x near the float's range
    # would.
    weights = exponentials / ops.sum(exponentials, axis=axis, keepdims=True)
    # A zero weight times x = -inf would be NaN; it contributes 0.
    weighted = ops.where(weights == 0, 0.0, weights * cells)
    pooled = ops.sum(weighted, axis=axis)
    peak = ops.squeeze(peak, axis=axis)
    # inf - inf is NaN: a window whose maximum is infinite returns it.
    pooled = ops.where(ops.isinf(peak), peak, pooled)
    return ops.cast(pooled, dtype)
