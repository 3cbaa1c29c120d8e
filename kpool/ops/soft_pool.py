from keras import ops

from kpool import backend
from kpool.ops.window_cells import inside_mask, low_rank_windows
from kpool.ops.windows import (
    Window,
    as_tensor,
    float_compute_dtype,
    unit_slice,
)


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
    disjoint = all(
        s >= k for k, s in zip(window.pool_size, window.strides, strict=True)
    )
    fast = backend.fast_path("disjoint_soft_pool", x, window)
    if disjoint and fast is not None:
        pooled = fast(window, x)
    elif disjoint and window.num_spatial_dims < 3:
        pooled = _disjoint_soft_pool(window, x)
    else:
        overlapping = backend.fast_path("overlapping_soft_pool", x, window)
        if overlapping is not None:
            pooled = overlapping(
                window, x, lambda: _window_soft_pool(window, x)
            )
        else:
            pooled = _window_soft_pool(window, x)
    return ops.cast(pooled, dtype)


def _window_soft_pool(window, x):
    """SoftPool of any windows, each shifted by its own maximum
    (`soft_reduce`) over the stacked windows."""
    cells = low_rank_windows(window, window.zero_pad(x))
    masked = ops.where(inside_mask(window, x.shape), cells, float("-inf"))
    pooled = soft_reduce(masked, [window.window_axis])
    return ops.squeeze(pooled, axis=window.window_axis)


def soft_reduce(cells, axes):
    """SoftPool of `cells` over `axes` (kept, with length 1), where padded
    cells are `-inf`.

    `y = m + sum((x - m) e) / sum(e)`, `e = exp(x - m)`, with `m` the
    window's maximum: the paper's `sum(x e) / sum(e)`, with every
    exponential in (0, 1], the denominator at least 1 and `(x - m) e` at
    least `-1 / e`, so nothing overflows. `x - m` is clipped at `-1e4`,
    where `e` is 0 in every float type, so that `-inf` cells (padded ones
    too) add `0 * -1e4` and not `0 * -inf`.
    """
    # y does not depend on m, so no gradient need flow through it.
    peak = ops.stop_gradient(ops.max(cells, axis=axes, keepdims=True))
    shifted = ops.maximum(cells - peak, -1e4)
    exponentials = ops.exp(shifted)
    pooled = ops.sum(shifted * exponentials, axis=axes, keepdims=True)
    pooled = peak + pooled / ops.sum(exponentials, axis=axes, keepdims=True)
    # inf - inf is NaN: a window whose maximum is infinite returns it.
    return ops.where(ops.isinf(peak), peak, pooled)


def _disjoint_soft_pool(window, x):
    """SoftPool of windows that do not overlap (`strides >= pool_size`), in
    one or two spatial dims: each dim split into `(out, s)` by a reshape,
    so the windows are a view of the (padded) input, and the reduction
    runs over the window axes of a tensor of rank 5 at most (TFLite's
    limit)."""
    outs = window.output_spatial_shape(x.shape)
    tiles = window.tile_pads(x.shape)
    # Each dim cropped, or padded with -inf (which weighs 0), to s * out.
    for axis, (keep, _, _) in zip(window.spatial_axes(), tiles, strict=True):
        x = unit_slice(x, axis, 0, keep)
    pairs = [(before, after) for _, before, after in tiles]
    if any(before or after for before, after in pairs):
        x = ops.pad(
            x, window.full_shape(pairs, (0, 0)), constant_values=float("-inf")
        )
    # (batch * out_0 [* channels], s_0, [out_1, s_1,] [channels]).
    shape = list(ops.shape(x))
    view = []
    for out, s in zip(outs, window.strides, strict=True):
        view += [out, s]
    view[0] = -1
    if window.channels_last:
        view.append(shape[-1])
    cells = ops.reshape(x, view)
    axes = [1 + 2 * d for d in range(window.num_spatial_dims)]
    for axis, k in zip(axes, window.pool_size, strict=True):
        cells = unit_slice(cells, axis, 0, k)
    pooled = soft_reduce(cells, axes)
    shape[0] = -1
    for axis, out in zip(window.spatial_axes(), outs, strict=True):
        shape[axis] = out
    return ops.reshape(pooled, shape)
