"""torch's fast paths, for its eager mode, where each op is its own kernel.

There every `keras.ops` call is a kernel and a pass over memory, forward
and backward, so where torch has a pooling of its own (`F.lp_pool2d`,
`F.max_pool2d(return_indices=True)`, `F.adaptive_max_pool2d`, a grouped
`F.conv2d`, `scatter_add`), one call of it replaces the several calls of
kpool's `keras.ops` form (results/peers/PROFILE.md). Each gives the
values, indices and gradients of the form it replaces, and the tests of
each op call both. Channels-last inputs are viewed channels-first by a
permutation, as Keras's own torch poolings do.
"""

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from kpool.backend import SHARED_PEAK_FLOOR

_AVG_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_LP_POOLS = {1: F.lp_pool1d, 2: F.lp_pool2d, 3: F.lp_pool3d}
_MAX_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_FRACTIONAL_POOLS = {2: F.fractional_max_pool2d, 3: F.fractional_max_pool3d}
_ADAPTIVE_POOLS = {
    "max": F.adaptive_max_pool2d,
    "average": F.adaptive_avg_pool2d,
}


def fast_path(name, window=None):
    return _FAST_PATHS.get(name)


def values_known():
    """Whether tensors' values can be read: not while torch traces a graph
    (`torch.jit.trace`, which the ONNX export runs, `torch.compile`,
    `torch.export`), where a value read would be frozen or fail."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


# Permutations with non-negative axes: the ONNX exporter's tracer
# mistranslates `movedim(-1, 1)`.
def _channels_first(inputs, data_format):
    if data_format == "channels_last":
        rank = inputs.dim()
        return inputs.permute(0, rank - 1, *range(1, rank - 1))
    return inputs


def _as_data_format(outputs, data_format):
    if data_format == "channels_last":
        rank = outputs.dim()
        return outputs.permute(0, *range(2, rank), 1)
    return outputs


def _spatial_shape(x):
    """The spatial dims of channels-first `x`, as ints (a tracer may give
    tensors)."""
    return tuple(int(n) for n in x.shape[2:])


def _zero_pad(window, x):
    """`x` (channels first) padded with zeros as `"same"` pads it."""
    if window.padding == "valid":
        return x
    pads = window.same_pads(_spatial_shape(x))
    return F.pad(x, [p for pair in reversed(pads) for p in pair])


def lp_pool(window, inputs, norm_type):
    """`lp_pool` of float `inputs` with torch's `F.lp_pool2d` (1d, 3d).

    torch pools `x**p`, which is `|x|**p` for an even `p`; otherwise it is
    given `|x|`. Its gradient of a window of zeros is 0, as kpool's is.
    """
    n = window.num_spatial_dims
    x = _zero_pad(window, _channels_first(inputs, window.data_format))
    kernel = window.pool_size if n > 1 else window.pool_size[0]
    if norm_type == 1:
        sums = _AVG_POOLS[n](x.abs(), kernel, window.strides)
        sums = sums * math.prod(window.pool_size)
    else:
        even = norm_type % 2 == 0
        sums = _LP_POOLS[n](
            x if even else x.abs(), norm_type, kernel, window.strides
        )
    return _as_data_format(sums, window.data_format)


def max_pool_with_argmax(window, inputs):
    """`max_pool_with_argmax` with torch's `F.max_pool2d(...,
    return_indices=True)` (1d, 3d), whose indices have kpool's layout.

    torch pads symmetrically with cells that are never the maximum; where
    `"same"` pads one cell more after than before, `ceil_mode` adds it.
    A window holding NaN gives the index of a NaN here.
    """
    n = window.num_spatial_dims
    x = _channels_first(inputs, window.data_format)
    padding, ceil_mode = 0, False
    if window.padding == "same":
        pads = window.same_pads(_spatial_shape(x))
        padding = tuple(before for before, _ in pads)
        ceil_mode = any(after > before for before, after in pads)
    values, indices = _MAX_POOLS[n](
        x,
        window.pool_size,
        window.strides,
        padding=padding,
        ceil_mode=ceil_mode,
        return_indices=True,
    )
    return (
        _as_data_format(values, window.data_format),
        _as_data_format(indices.int(), window.data_format),
    )


def max_unpool(window, inputs, indices, size):
    """`max_unpool` as one `scatter_add` per example and channel: values
    sent to one cell add up, as in the `keras.ops` form (torch's
    `F.max_unpool2d` keeps one of them). `indices` must be in range.
    In place on the zeros: `scatter_add` would copy them first."""
    x = _channels_first(inputs, window.data_format)
    index = _channels_first(indices, window.data_format)
    batch, channels = x.shape[:2]
    unpooled = x.new_zeros((batch, channels, math.prod(size))).scatter_add_(
        2,
        index.reshape(batch, channels, -1).long(),
        x.reshape(batch, channels, -1),
    )
    unpooled = unpooled.reshape(batch, channels, *size)
    return _as_data_format(unpooled, window.data_format)


def power_mean(x, p, axes, keepdims):
    """`mean(x ** p over axes) ** (1 / p)` of positive float `x` for a
    Python number `p`, with torch's scalar-exponent `pow`: `keras.ops.power`
    makes `p` a tensor, and torch's tensor-exponent `pow` runs its general
    kernel where the scalar one specialises (`p=3` is two multiplies), 2-5x
    slower forward and backward in global GeM pooling."""
    means = x.pow(p).mean(dim=tuple(axes), keepdim=keepdims)
    return means.pow(1.0 / p)


def clamp_min(x, low):
    return x.clamp(min=low)


def value_range(tensor):
    """`(min, max)` of `tensor` as Python numbers, in one pass."""
    lowest, highest = torch.aminmax(tensor)
    return lowest.item(), highest.item()


def adaptive_pool(inputs, output_size, mode, data_format):
    """2D adaptive max or average pooling to `output_size`, torch's own.

    Also for the 1x1 level of a max pyramid: `amax`'s backward compares
    every cell with the maximum, while this one scatters to the maximum.
    `None` (the `keras.ops` form) in a traced graph where the bins do not
    divide the input: torch's ONNX export takes no such adaptive pooling.
    """
    x = _channels_first(inputs, data_format)
    spatial = _spatial_shape(x)
    if not values_known() and any(
        n % b for n, b in zip(spatial, output_size, strict=True)
    ):
        return None
    pooled = _ADAPTIVE_POOLS[mode](x, output_size)
    return _as_data_format(pooled, data_format)


def stochastic_expectation(window, activations, rescale_above, safe):
    """`sum a**2 / sum a` over each window, as two average poolings, or
    `safe()` (the `keras.ops` form) where an activation exceeds
    `rescale_above` or is NaN or inf.

    The `keras.ops` form rescales every channel by its largest finite
    activation, where that is large, so that the squares do not overflow;
    that costs several passes over the input, forward and backward, for a
    case that is rare. Eagerly one reduction tells whether it can arise,
    and where it cannot, the rescaling (by 1) and the special values'
    fix-up leave the result as this computes it. A traced graph keeps the
    `keras.ops` form: there the reduction's value is not known.
    """
    if not values_known() or not bool(activations.max() <= rescale_above):
        return safe()
    n = window.num_spatial_dims
    x = _zero_pad(window, _channels_first(activations, window.data_format))
    pool = _AVG_POOLS[n]
    mean = pool(x, window.pool_size, window.strides)
    mean_square = pool(x * x, window.pool_size, window.strides)
    outputs = mean_square / torch.where(mean > 0, mean, 1)
    return _as_data_format(outputs, window.data_format)


def stochastic_sample(activations, rescale_above, plain, rescaled):
    """`plain()`, the sampling without rescaling, where no activation
    exceeds `rescale_above` or is NaN or inf, else `rescaled()` (the
    `keras.ops` form). Eagerly one reduction tells which: the rescaling
    is four passes over the input (the finite test, the selection, the
    maximum, the division), forward and backward, for scales that are 1
    unless an activation is above 2**30. A traced graph keeps the
    `keras.ops` form."""
    if not values_known() or not bool(activations.max() <= rescale_above):
        return rescaled()
    return plain()


def blur(blur, inputs, weights):
    """A `Blur` of float `inputs` as one depthwise convolution with the
    outer product of `weights` over the spatial dims, after padding them
    all at once (kornia's `blur_pool2d`, with kpool's padding modes).

    The `keras.ops` form runs one axis at a time through slices, whose
    backward fills and copies whole tensors.
    """
    n = blur.num_spatial_dims
    x = _channels_first(inputs, blur.data_format)
    before, after = blur.pads
    padding = 0
    if blur.padding_mode in ("zero", "constant") and before == after:
        padding = before
    elif before or after:
        mode = "constant"
        if blur.padding_mode in ("reflect", "replicate"):
            mode = blur.padding_mode
        x = F.pad(x, (before, after) * n, mode=mode)
    kernel = weights
    for _ in range(n - 1):
        kernel = np.multiply.outer(kernel, weights)
    # A constant of known shape, as the ONNX exporter's tracer needs.
    channels = int(x.shape[1])
    kernel = np.broadcast_to(kernel, (channels, 1, *kernel.shape))
    kernel = torch.as_tensor(
        np.ascontiguousarray(kernel), dtype=x.dtype, device=x.device
    )
    outputs = _CONVS[n](
        x, kernel, stride=blur.strides, padding=padding, groups=channels
    )
    return _as_data_format(outputs, blur.data_format)


def order_statistics(window, inputs, select):
    """`select(inputs)`: order statistics of each window of `inputs` (its
    middle values, say), each a cell of the window or an infinite stand-in
    for a padded one, with each gradient sent to the first cell of the
    window that equals the value.

    Through autograd the minima and maxima of a selection network cost
    several passes each backward (they split ties); here the network runs
    without it, one comparison per window offset finds the cell, and one
    gather takes its gradient. An exported graph (no gradient) is the
    `keras.ops` form's.
    """
    if not (torch.is_grad_enabled() and inputs.requires_grad):
        return select(inputs)
    with torch.no_grad():
        values = select(inputs)
    # Padded with NaN, which equals nothing.
    padded = window.pad(inputs, float("nan"))
    return [_through_cell(window, padded, v) for v in values]


def _through_cell(window, padded, value):
    n = window.num_spatial_dims
    first = 1 if window.channels_last else 2
    spatial = padded.shape[first : first + n]
    out = value.shape[first : first + n]
    strides = [math.prod(spatial[d + 1 :]) for d in range(n)]
    offsets = itertools.product(*(range(k) for k in window.pool_size))
    found = torch.full(value.shape, -1, dtype=torch.int64, device=value.device)
    with torch.no_grad():
        for offset in reversed(list(offsets)):
            cells = padded[
                (slice(None),) * first
                + tuple(
                    slice(o, o + s * (m - 1) + 1, s)
                    for o, s, m in zip(offset, window.strides, out, strict=True)
                )
            ]
            flat = sum(o * t for o, t in zip(offset, strides, strict=True))
            found = torch.where(cells == value, flat, found)
        # The flat index of each window's first cell, plus the offset.
        starts = 0
        for d in range(n):
            positions = np.arange(out[d]) * window.strides[d] * strides[d]
            starts = np.add.outer(starts, positions)
        index = found.clamp(min=0) + _output_constant(
            window, starts, value.device
        )
    cells = padded.flatten(first, first + n - 1)
    index = index.flatten(first, first + n - 1)
    picked = cells.gather(first, index).reshape(value.shape)
    return torch.where(found >= 0, picked, value)


def _output_constant(window, array, device):
    """A NumPy array of the output's spatial shape, broadcastable to it."""
    shape = window.full_shape(array.shape, 1)
    return torch.as_tensor(array.reshape(shape), device=device)


def disjoint_soft_pool(window, inputs):
    """SoftPool of windows that do not overlap, with the window maxima of
    `F.max_pool2d` (1d, 3d) broadcast back over each window's cells by a
    view, and the two window sums as `F.avg_pool2d`: the `keras.ops` form's
    `m + sum((x - m) e) / sum(e)`, `e = exp(x - m)`, whose strided sums
    cost 2x torch's average pooling here.
    """
    n = window.num_spatial_dims
    outs = window.output_spatial_shape(inputs.shape)
    x = _channels_first(inputs, window.data_format)
    # The per-window form below runs only where neither shared form is
    # exact.
    pooled = _exact_shared_soft_pool(window, x)
    if pooled is not None:
        return _as_data_format(pooled, window.data_format)
    # Each dim cropped or padded (with -inf, which weighs 0) to s * out.
    tiles = window.tile_pads(inputs.shape)
    for d, (keep, _, _) in enumerate(tiles):
        x = x.narrow(2 + d, 0, keep)
    pairs = [(before, after) for _, before, after in tiles]
    if any(before or after for before, after in pairs):
        x = F.pad(
            x,
            [p for pair in reversed(pairs) for p in pair],
            value=float("-inf"),
        )
    kernel, strides = window.pool_size, window.strides
    with torch.no_grad():
        if kernel == strides:
            # One dim at a time through views: 6x as fast as max pooling,
            # which finds indices too.
            peak = x
            for d in range(n):
                shape = list(peak.shape)
                shape[2 + d : 3 + d] = [outs[d], kernel[d]]
                peak = peak.reshape(shape).amax(3 + d)
        else:
            peak = _MAX_POOLS[n](x, kernel, strides)
    split = [x.shape[0], x.shape[1]]
    broadcast = list(split)
    for out, s in zip(outs, strides, strict=True):
        split += [out, s]
        broadcast += [out, 1]
    if kernel == strides and values_known():
        relative = _TiledSoftPool.apply(x, peak, split, broadcast, n)
        pooled = peak + relative
    else:
        # Cells between windows (strides > pool_size) are clipped to 0 too:
        # their exponentials are read by nothing, and must not overflow.
        shifted = x.reshape(split) - peak.reshape(broadcast)
        shifted = shifted.reshape(x.shape).clamp(-1e4, 0.0)
        exponentials = shifted.exp()
        pool = _AVG_POOLS[n]
        pooled = pool(shifted * exponentials, kernel, strides)
        pooled = peak + pooled / pool(exponentials, kernel, strides)
    pooled = torch.where(peak.isinf(), peak, pooled)
    return _as_data_format(pooled, window.data_format)


def overlapping_soft_pool(window, inputs, per_window):
    """SoftPool of any windows: `_exact_shared_soft_pool` (average
    poolings take overlapping windows too), else `per_window()` (the
    `keras.ops` form, each window shifted by its own maximum over the
    stacked windows)."""
    pooled = _exact_shared_soft_pool(
        window, _channels_first(inputs, window.data_format)
    )
    if pooled is None:
        return per_window()
    return _as_data_format(pooled, window.data_format)


def _exact_shared_soft_pool(window, x):
    """SoftPool of channels-first `x` by the first exact one of `e =
    exp(x)` (the unsafe form users write, exact for activations below
    about 85 and windows not all below about -69) and `e = exp(x - M)`,
    checked eagerly; `None` where neither is, or in a traced graph."""
    if not values_known():
        return None
    for shifted in (False, True):
        pooled, weights = shared_peak_soft_pool(window, x, shifted)
        exact = torch.logical_and(
            weights.amin() >= SHARED_PEAK_FLOOR, pooled.isfinite().all()
        )
        if bool(exact):
            return pooled
    return None


def shared_peak_soft_pool(window, x, shifted=True):
    """`(sum(x e) / sum(e), mean(e))` over each window of channels-first
    `x`, `e = exp(x - M)`, `M` the maximum of each example's channel: the
    paper's formula, every `e` at most 1, so nothing overflows, for one
    reduction and one subtraction more. It is inexact only for a window
    far below its channel's maximum (more than about 69 in float32), and
    not finite only for infinite or NaN inputs, both of which show in the
    outputs and the weights. Not `shifted`, `e = exp(x)` (`M = 0`): the
    unsafe form, which also overflows for activations above about 85.
    Autograd's gradient is the paper's."""
    n = window.num_spatial_dims
    if shifted:
        with torch.no_grad():
            peak = x.amax(dim=tuple(range(2, 2 + n)), keepdim=True)
        exponentials = x - peak
        exponentials = (
            exponentials.exp() if x.requires_grad else exponentials.exp_()
        )
    else:
        exponentials = x.exp()
    weighted = x * exponentials
    if window.padding == "same":
        # Zeros weigh nothing in either sum.
        pads = window.same_pads(_spatial_shape(x))
        flat = [p for pair in reversed(pads) for p in pair]
        exponentials = F.pad(exponentials, flat)
        weighted = F.pad(weighted, flat)
    pool = _AVG_POOLS[n]
    weights = pool(exponentials, window.pool_size, window.strides)
    pooled = pool(weighted, window.pool_size, window.strides) / weights
    return pooled, weights


class _TiledSoftPool(torch.autograd.Function):
    """`sum(s e) / sum(e)` over windows that tile channels-first `x`
    (`pool_size == strides`), `s = x - m` clipped at -1e4 (so that `-inf`
    cells add `0 * -1e4`), `e = exp(s)`, with `m` the window maxima
    (`peak`, no gradient), and its gradient written out:
    `e / sum(e) * (1 + s - y)` for each cell of a window with output `y`.
    Autograd's graph of the same formula keeps four tensors of the input's
    size and makes six more in its backward; this keeps `s` and `e`, and
    its forward works in place when no gradient is needed. Eager only: a
    traced graph (ONNX export) records the plain ops instead.
    """

    @staticmethod
    def forward(ctx, x, peak, split, broadcast, n):
        kernel = tuple(split[3::2])
        shifted = x.reshape(split) - peak.reshape(broadcast)
        shifted.clamp_(-1e4, 0.0)
        exponentials = shifted.exp()
        pool = _AVG_POOLS[n]
        sums = pool(exponentials.view(x.shape), kernel, kernel)
        needs_gradient = ctx.needs_input_grad[0]
        if needs_gradient:
            products = shifted * exponentials
        else:
            products = shifted.mul_(exponentials)
        relative = pool(products.view(x.shape), kernel, kernel) / sums
        if needs_gradient:
            ctx.save_for_backward(shifted, exponentials, sums, relative)
            ctx.shapes = (tuple(x.shape), broadcast, math.prod(kernel))
        return relative

    @staticmethod
    def backward(ctx, grad):
        shifted, exponentials, sums, relative = ctx.saved_tensors
        shape, broadcast, count = ctx.shapes
        # `sums` are window means: the window sums are `count` times them.
        scale = (grad / (sums * count)).reshape(broadcast)
        offset = (1 - relative).reshape(broadcast)
        gradient = shifted + offset
        gradient.mul_(exponentials).mul_(scale)
        return gradient.view(shape), None, None, None, None


def max_pool(window, inputs):
    """`keras.ops.max_pool` over `window`'s windows, on a permuted view.

    Keras's torch pooling copies a channels-last input to channels first
    (`.contiguous()`) and returns a view of the channels-first output;
    torch's own pooling takes the permuted view as channels-last memory,
    with no copy, and gives a channels-last output, contiguous once
    permuted back (at 512x32x32x64, 2x2: 46 ms, Keras's 213 ms). Under
    `"same"` the pads are Python ints: torch's own padding where they are
    symmetric, else the input padded with `-inf` (torch pools floats
    only). Keras pads an odd size by `replicate`, by amounts that torch's
    ONNX export sees as unknown."""
    x = _channels_first(inputs, window.data_format)
    padding = 0
    if window.padding == "same":
        pads = window.same_pads(_spatial_shape(x))
        if all(before == after for before, after in pads):
            padding = [before for before, _ in pads]
        else:
            flat = [p for pair in reversed(pads) for p in pair]
            x = F.pad(x, flat, value=float("-inf"))
    pooled = _MAX_POOLS[window.num_spatial_dims](
        x, window.pool_size, window.strides, padding
    )
    return _as_data_format(pooled, window.data_format)


def window_means(window, padded):
    """`Window.window_means`: the mean of each window of `padded`, as
    `keras.ops.average_pool(padding="valid")` but on a permuted view
    (`max_pool`: at 512x32x32x64, 2x2, 22 ms, Keras's 141 ms)."""
    x = _channels_first(padded, window.data_format)
    means = _AVG_POOLS[window.num_spatial_dims](
        x, window.pool_size, window.strides
    )
    return _as_data_format(means, window.data_format)


def take_rows(x, cells, axis, channels_last):
    """`x`'s cells `cells` along `axis`, `cells` int `(rows, m)`: one row
    for every example and channel (a gather of whole slices), or one per
    example and channel, in that order. `keras.ops.take` and
    `take_along_axis` first wrap negative indices, a pass over the whole
    broadcast index, and `take` flattens it with `ravel`, which torch's
    ONNX export lacks."""
    cells = cells.long()
    if cells.shape[0] == 1:
        return x.index_select(axis, cells[0])
    m = cells.shape[1]
    batch = x.shape[0]
    index = cells.reshape(batch, -1, m)
    spread = [1] * x.ndim
    spread[axis] = m
    if channels_last:
        spread[0], spread[-1] = batch, -1
        index = index.transpose(1, 2).reshape(spread)
    else:
        spread[0], spread[1] = batch, -1
        index = index.reshape(spread)
    target = list(x.shape)
    target[axis] = m
    return x.gather(axis, index.expand(target))


def rows_maximum(x, cell_sets, axis, channels_last):
    """The maximum over `take_rows(x, cells, axis, channels_last)` for the
    `cells` in `cell_sets`, elementwise, the earliest of tied rows taking
    the gradient and NaN propagated: one gather of every set's rows side
    by side, then torch's `max` over them, which returns (and gives the
    gradient to) the first maximal or the first NaN entry. The `keras.ops`
    form compares the sets' gathers one by one: a `where` and its
    backward for each, and one gather's backward more each; the same
    choice but for two NaN rows, where it takes the later one."""
    count = len(cell_sets)
    rows, m = cell_sets[0].shape
    # Entry `i * count + j` is region `i`'s cell in set `j`.
    cells = torch.stack(cell_sets, -1).reshape(rows, m * count)
    gathered = take_rows(x, cells, axis, channels_last)
    shape = list(gathered.shape)
    shape[axis : axis + 1] = [m, count]
    return gathered.reshape(shape).max(axis + 1).values


def each_dim_trailing(x, reduce_dim, rank, channels_last):
    """`reduce_dim(x, d, rank + 1)` for each spatial dim `d`, the last
    first, each on a contiguous copy of `x` laid out `(batch, channels, the
    other spatial dims, dim d)`; the result in `x`'s layout.

    torch's `gather` along the innermost axis of a contiguous tensor, with
    the index expanded over the other axes, runs 2.5-3.3x faster, forward
    and backward, than along any other (128x32x32x32, 22 of 32 cells), and
    faster than a permuted view: the copies cost less than they save."""
    spatial = list(range(rank))
    start = ["b", *spatial, "c"] if channels_last else ["b", "c", *spatial]
    labels = start
    for d in reversed(spatial):
        target = ["b", "c", *(e for e in spatial if e != d), d]
        x = x.permute(*(labels.index(label) for label in target))
        x = reduce_dim(x.contiguous(), d, rank + 1)
        labels = target
    return x.permute(*(labels.index(label) for label in start)).contiguous()


def fractional_max_pool(inputs, pool_size, output_size, samples, data_format):
    """`F.fractional_max_pool2d/3d` over torch's windows (`pool_size`) and
    pseudo-random sequences: `(pooled, int32 indices)`, or `None` where it
    would not give kpool's regions or cannot run.

    `samples` are float32 `(batch or 1, channels or 1, rank)` in the
    spatial dims' order; torch's 2D op takes width's first. torch computes
    the sequences in the input's dtype and kpool in float32, so inputs of
    16 bits are pooled in float32 (their maxima are exact there) and
    float64 and integer ones are left to the `keras.ops` form. Nor is it
    traced: the ONNX export has no fractional max pooling."""
    rank = len(pool_size)
    if rank not in _FRACTIONAL_POOLS or not values_known():
        return None
    if not inputs.is_floating_point() or inputs.dtype == torch.float64:
        return None
    x = _channels_first(inputs, data_format)
    x32 = x.float()
    batch, channels = x.shape[:2]
    samples = samples.float().expand(batch, channels, rank)
    if rank == 2:
        samples = samples.flip(-1)
    pooled, indices = _FRACTIONAL_POOLS[rank](
        x32,
        pool_size,
        output_size=output_size,
        return_indices=True,
        _random_samples=samples.to(x.device),
    )
    pooled = _as_data_format(pooled.to(inputs.dtype), data_format)
    return pooled, _as_data_format(indices.int(), data_format)


def window_responses(window, padded, kernel):
    """`window_responses` as one depthwise convolution (`F.conv2d`, 1d,
    3d, one group per channel) per filter, of a kernel shape known when
    traced: torch's ONNX export takes no convolution whose kernel shape it
    cannot see. Shared filters, several of them, take one convolution over
    a unit channel instead (below).

    At 128x32x32x64, channels last, against max pooling, 2x2 / 3x3
    windows: one filter 0.73 / 0.80x by depthwise convolution, 1.55 /
    2.31x over a unit channel; three per-channel filters 2.5 / 2.5x as
    three depthwise convolutions, 3.5 / 4.4x as one with three filters per
    channel (its outputs interleaved, split by a copy)."""
    n = window.num_spatial_dims
    count = int(kernel.shape[1])
    if kernel.ndim == 2 and count > 1 and n < 3:
        return _shared_responses(window, padded, kernel)
    x = _channels_first(padded, window.data_format)
    channels = int(x.shape[1])
    if kernel.ndim == 2:
        kernel = kernel[:, :, None].expand(-1, -1, channels)
    return [
        _as_data_format(
            _CONVS[n](
                x,
                kernel[:, j].T.reshape(channels, 1, *window.pool_size),
                stride=window.strides,
                groups=channels,
            ),
            window.data_format,
        )
        for j in range(count)
    ]


def _shared_responses(window, padded, kernel):
    """`window_responses` of filters `(K, n)` shared by the channels as
    one convolution of one more spatial dim over a unit channel, the
    channel axis a dim of kernel size 1. No copy in either layout; 2x
    faster than the grouped convolution with `n` filters per channel, and
    1.0-1.3x faster than `n` depthwise ones for `n = 3` (tree pooling,
    2x2 and 3x3, channels last)."""
    if window.data_format == "channels_last":
        sizes, strides = (*window.pool_size, 1), (*window.strides, 1)
    else:
        sizes, strides = (1, *window.pool_size), (1, *window.strides)
    count = int(kernel.shape[1])
    kernel = kernel.T.reshape(count, 1, *sizes)
    # Not `keras.ops.conv`: it asks for a memory format, which torch's
    # ONNX export cannot take.
    # The unit channel with stride 1, as a permutation gives it: torch then
    # takes its channels-last convolution, 4x faster here than for the
    # same tensor viewed by `unsqueeze(1)`.
    rank = padded.dim()
    x = padded.unsqueeze(-1).permute(0, rank, *range(1, rank))
    responses = _CONVS[len(sizes)](x, kernel, stride=strides)
    return list(responses.unbind(1))


_FAST_PATHS = {
    "adaptive_pool": adaptive_pool,
    "blur": blur,
    "clamp_min": clamp_min,
    "disjoint_soft_pool": disjoint_soft_pool,
    "each_dim_arranged": each_dim_trailing,
    "fractional_max_pool": fractional_max_pool,
    "lp_pool": lp_pool,
    "overlapping_soft_pool": overlapping_soft_pool,
    "max_pool_with_argmax": max_pool_with_argmax,
    "max_pool": max_pool,
    "max_unpool": max_unpool,
    "order_statistics": order_statistics,
    "power_mean": power_mean,
    "rows_maximum": rows_maximum,
    "stochastic_expectation": stochastic_expectation,
    "stochastic_sample": stochastic_sample,
    "take_rows": take_rows,
    "value_range": value_range,
    "window_means": window_means,
    "window_responses": window_responses,
}
