import copy
import math
import numbers

import keras
import numpy as np
from keras import ops

from kpool import backend
from kpool.ops.windows import (
    Window,
    as_tensor,
    check_rank,
    float_compute_dtype,
    standardize_data_format,
    standardize_tuple,
)

# Graham's alpha = sqrt(2): each pooling shrinks the area by 2.
DEFAULT_OUTPUT_RATIO = 0.5**0.5


class FractionalWindows:
    """The arguments of a fractional max pooling, validated, and its output
    size for an input size."""

    def __init__(
        self,
        num_spatial_dims,
        output_size=None,
        output_ratio=None,
        pool_size=None,
        pseudo_random=True,
        overlapping=False,
        data_format=None,
    ):
        n = num_spatial_dims
        self.num_spatial_dims = n
        if output_size is not None and output_ratio is not None:
            raise ValueError(
                "Pass `output_size` or `output_ratio`, not both. Received: "
                f"output_size={output_size!r}, output_ratio={output_ratio!r}"
            )
        self.output_size = (
            None
            if output_size is None
            else standardize_tuple(output_size, n, "output_size")
        )
        if output_size is None and output_ratio is None:
            output_ratio = DEFAULT_OUTPUT_RATIO
        self.output_ratio = None
        if output_ratio is not None:
            ratios = (
                (output_ratio,) * n
                if isinstance(output_ratio, numbers.Real)
                else tuple(output_ratio)
                if isinstance(output_ratio, (list, tuple))
                else ()
            )
            if len(ratios) != n or not all(
                isinstance(r, numbers.Real)
                and not isinstance(r, bool)
                and 0 < r < 1
                for r in ratios
            ):
                raise ValueError(
                    "`output_ratio` must be a float in (0, 1) or a tuple of "
                    f"{n} of them. Received: output_ratio={output_ratio!r}"
                )
            self.output_ratio = tuple(float(r) for r in ratios)
        self.pool_size = (
            None
            if pool_size is None
            else standardize_tuple(pool_size, n, "pool_size")
        )
        for name, value in (
            ("pseudo_random", pseudo_random),
            ("overlapping", overlapping),
        ):
            if not isinstance(value, bool):
                raise ValueError(
                    f"`{name}` must be True or False. Received: "
                    f"{name}={value!r}"
                )
        if overlapping and pool_size is not None:
            raise ValueError(
                "`overlapping` applies to Graham's regions (pool_size=None); "
                "a `pool_size` window overlaps its neighbours by itself. "
                f"Received: overlapping=True, pool_size={pool_size!r}"
            )
        self.pseudo_random = pseudo_random
        self.overlapping = overlapping
        self.data_format = standardize_data_format(data_format)

    @property
    def channels_last(self):
        return self.data_format == "channels_last"

    def spatial_shape(self, shape):
        # Python ints: torch's tracer (ONNX export) gives sizes as tensors.
        spatial = shape[1:-1] if self.channels_last else shape[2:]
        return tuple(None if n is None else int(n) for n in spatial)

    def output_spatial_shape(self, input_shape, caller):
        check_rank(input_shape, self.num_spatial_dims, self.data_format, caller)
        spatial = self.spatial_shape(input_shape)
        if self.output_size is not None:
            sizes = self.output_size
        else:
            sizes = tuple(
                None if n is None else int(n * r)
                for n, r in zip(spatial, self.output_ratio, strict=True)
            )
        for d, (n, m) in enumerate(zip(spatial, sizes, strict=True)):
            if n is None or m is None:
                continue
            k = 1 if self.pool_size is None else self.pool_size[d]
            if m < 1 or m + k - 1 > n:
                raise ValueError(
                    f"{caller} takes dim {d} of the input, of size {n}, to "
                    f"{m} outputs: it needs 1 <= outputs <= size - pool_size "
                    f"+ 1 = {n - k + 1}. Choose another `output_size` or "
                    f"`output_ratio` (or `pool_size`). Received: "
                    f"inputs.shape={tuple(input_shape)}"
                )
        return sizes

    def output_shape(self, input_shape, caller):
        sizes = self.output_spatial_shape(input_shape, caller)
        if self.channels_last:
            return (input_shape[0], *sizes, input_shape[-1])
        return (input_shape[0], input_shape[1], *sizes)


def boundaries(span, steps, samples, keys=None):
    """Graham's sequence `0 = b_0 <= ... <= b_steps = span`, per row.

    Its increments are `floor(alpha)` or `ceil(alpha)`, `alpha = span /
    steps`. Pseudo-random (`keys=None`): `b_i = floor((i + u) * alpha) -
    floor(u * alpha)` with `u` from `samples` (shape `(rows,)`), in float32
    as torch computes it. Random: the `span - steps * floor(alpha)` larger
    increments go where `keys` (shape `(rows, steps)`, uniform) are
    smallest, a uniformly random choice. Returns int32 `(rows, steps + 1)`.
    """
    rows = ops.shape(samples)[0]
    if steps == 0:
        return ops.zeros((rows, 1), "int32") + span
    alpha = np.float32(span) / np.float32(steps)
    if keys is None:
        i = ops.arange(1, steps, dtype="float32")[None, :]
        u = ops.cast(samples, "float32")[:, None]
        inner = ops.floor((i + u) * alpha) - ops.floor(u * alpha)
        inner = ops.cast(inner, "int32") if steps > 1 else None
    else:
        small = int(math.floor(alpha))
        large_count = span - steps * small
        ranks = ops.argsort(ops.argsort(keys, axis=-1), axis=-1)
        increments = small + ops.cast(ranks < large_count, "int32")
        inner = ops.cumsum(increments, axis=-1)[:, :-1] if steps > 1 else None
    first = ops.zeros((rows, 1), "int32")
    last = ops.zeros((rows, 1), "int32") + span
    pieces = [first] if inner is None else [first, inner]
    return ops.concatenate([*pieces, last], axis=-1)


def regions(n, m, pool_size, overlapping, samples, keys=None):
    """The start and end (exclusive) of each of the `m` regions along a dim
    of size `n`: int32 `(rows, m)` each."""
    if pool_size is not None:
        # torch's windows: starts from 0 to n - k in m - 1 steps.
        starts = boundaries(n - pool_size, m - 1, samples, keys)
        if m == 1:
            starts = starts[:, -1:]
        return starts, starts + pool_size
    bounds = boundaries(n, m, samples, keys)
    starts, ends = bounds[:, :-1], bounds[:, 1:]
    if overlapping:
        ends = ops.minimum(ends + 1, n)
    return starts, ends


def region_size(n, m, pool_size, overlapping):
    """The largest region `regions` can give."""
    if pool_size is not None:
        return pool_size
    return math.ceil(n / m) + int(overlapping)


def fractional_max_pool(
    inputs,
    output_size=None,
    output_ratio=None,
    pool_size=None,
    pseudo_random=True,
    overlapping=False,
    samples=None,
    seed=None,
    data_format=None,
    return_indices=False,
):
    """Fractional max pooling (Graham, 2014).

    Max pooling over regions that shrink each spatial dim by a factor
    `alpha = n_in / n_out` that need not be an integer (Graham's is
    `sqrt(2)`). Along a dim of size `n` with `m` outputs, a sequence
    `0 = a_0 < a_1 < ... < a_m = n` of increments `floor(alpha)` or
    `ceil(alpha)` cuts the dim into regions:

    - `pseudo_random=True`: `a_i = floor((i + u) * alpha) - floor(u * alpha)`
      for a uniform `u` in [0, 1) (Graham's `ceil(alpha * (i + u))`, shifted
      to start at 0, as torch writes it);
    - `pseudo_random=False` ("random"): the increments in a uniformly random
      order.

    With `pool_size=None` the regions are Graham's: disjoint `[a_{i-1},
    a_i - 1]`, or with `overlapping=True` `[a_{i-1}, a_i]` (clipped to the
    input). With a `pool_size` `k` they are torch's
    (`torch.nn.functional.fractional_max_pool2d/3d`): windows of `k` cells
    starting at a sequence from `0` to `n - k` in `m - 1` steps, `alpha =
    (n - k) / (m - 1)`. Given the same `u`, this gives torch's outputs and
    indices exactly.

    `m` is `output_size`, or `int(n * output_ratio)` (torch's rounding);
    with neither, `output_ratio = 1 / sqrt(2)`. Each example and channel
    gets its own sequences, one per spatial dim: `samples` holds their `u`,
    shape `(batch, channels, num_spatial_dims)` in the input's spatial
    order (torch's `_random_samples` for 2D lists width before height: flip
    its last axis). Without `samples` they are drawn from `seed`; random
    sequences always are.

    The gradient reaches each region's maximal cell (summed where regions
    overlap). Ties go to the first maximal cell in row-major order, as in
    torch. The spatial dims of `inputs` must be known.

    Where every dim shrinks by a whole factor `k = n / m` (Graham's
    disjoint regions), every region is `k` cells whatever is drawn, and it
    is computed as max pooling with window and stride `k`. Otherwise it is
    computed one spatial dim at a time, the last first: a max pooling of
    stride 1 whose window is the shortest region's length `w`, then a
    gather of the `ceil(longest / w)` windows that cover each region (one
    with torch's windows) and their maximum. With `return_indices`, and on
    TensorFlow outside XLA for one sequence per dim (1D and 2D), every cell
    of every region is gathered instead (a shorter region repeats its last
    cell), then reduced.

    Reference: Graham, "Fractional Max-Pooling", arXiv:1412.6071, 2014.

    Args:
        inputs: tensor of rank 4 or 5 (3 works too), laid out as
            `data_format` says.
        output_size: int or tuple of ints, one per spatial dim, or `None`.
        output_ratio: float in (0, 1) or tuple of them, or `None`.
        pool_size: `None` (Graham's regions) or int or tuple of ints
            (torch's windows).
        pseudo_random: bool. Pseudo-random (`True`) or random sequences.
        overlapping: bool. Graham's overlapping regions (`pool_size=None`
            only).
        samples: `None` or a tensor `(batch, channels, num_spatial_dims)`
            of floats in [0, 1): the pseudo-random sequences' `u`; or
            `(1, 1, num_spatial_dims)`: one sequence per dim for every
            example and channel (as at inference), pooled as whole slices.
        seed: int, `keras.random.SeedGenerator` or `None`, for what is
            drawn. Inside a compiled function pass a `SeedGenerator`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        return_indices: bool. Also return the int32 flat index of each
            maximum within its example and channel, row-major over the
            spatial dims (`kpool.ops.max_pool_with_argmax`'s layout, which
            `kpool.ops.max_unpool` takes with `output_size`).

    Returns:
        The pooled tensor, of the dtype of `inputs`, and with
        `return_indices` the indices.

    Example:

    >>> x = np.random.rand(2, 25, 25, 3)
    >>> kpool.ops.fractional_max_pool(x, output_ratio=0.7, seed=0).shape
    (2, 17, 17, 3)
    """
    inputs = as_tensor(inputs)
    rank = len(inputs.shape) - 2
    if rank not in (1, 2, 3):
        raise ValueError(
            "`inputs` of fractional_max_pool must have rank 3, 4 or 5. "
            f"Received: inputs.shape={tuple(inputs.shape)}"
        )
    windows = FractionalWindows(
        rank,
        output_size,
        output_ratio,
        pool_size,
        pseudo_random,
        overlapping,
        data_format,
    )
    caller = "fractional_max_pool"
    outputs = windows.output_spatial_shape(inputs.shape, caller)
    spatial = windows.spatial_shape(inputs.shape)
    if any(n is None for n in spatial):
        raise ValueError(
            "fractional_max_pool needs the spatial dims of `inputs` to be "
            f"known. Received: inputs.shape={tuple(inputs.shape)}"
        )
    shape = ops.shape(inputs)
    batch = shape[0]
    channels = shape[-1 if windows.channels_last else 1]
    if samples is None and pseudo_random:
        samples = keras.random.uniform((batch, channels, rank), seed=seed)
    shared = False
    if samples is not None:
        samples = ops.convert_to_tensor(samples)
        if pseudo_random and windows.pool_size is not None:
            fast = backend.fast_path("fractional_max_pool", inputs)
            pooled = None
            if fast is not None:
                pooled = fast(
                    inputs,
                    windows.pool_size,
                    outputs,
                    samples,
                    windows.data_format,
                )
            if pooled is not None:
                return pooled if return_indices else pooled[0]
        shared = tuple(samples.shape[:2]) == (1, 1)
        if return_indices and shared:
            samples = ops.broadcast_to(samples, (batch, channels, rank))
            shared = False
        samples = ops.reshape(ops.cast(samples, "float32"), (-1, rank))
    factors = _whole_factors(windows, spatial, outputs)
    if factors is not None and not return_indices:
        # Every region is the same `k` cells: the sequence is `a_i = k i`
        # whatever is drawn (both increments are `k`), and the pooling is
        # max pooling with window and stride `k`, computed as such.
        x = ops.cast(inputs, float_compute_dtype(inputs.dtype))
        window = Window(rank, factors, factors, "valid", windows.data_format)
        return ops.cast(window.max_pool(x), inputs.dtype)
    rows = 1 if shared else batch * channels
    # Each dim's regions: int32 (rows, m) starts and ends (exclusive).
    bounds = []
    for d, (n, m) in enumerate(zip(spatial, outputs, strict=True)):
        k = None if windows.pool_size is None else windows.pool_size[d]
        keys = None
        if not pseudo_random:
            steps = m - 1 if k is not None else m
            keys = keras.random.uniform((rows, max(steps, 1)), seed=seed)
        u = (
            samples[:, d]
            if samples is not None
            else ops.zeros((rows,), "float32")
        )
        bounds.append(regions(n, m, k, overlapping, u, keys))
    if return_indices:
        return _pooled_with_indices(
            inputs, windows, spatial, outputs, bounds, batch, channels
        )
    # TensorFlow's CPU max pooling has no float16 3D kernel; maxima are
    # exact in float32.
    pooled = ops.cast(inputs, float_compute_dtype(inputs.dtype))
    # One sequence per dim for every example and channel (as at
    # inference): TensorFlow gathers whole slices. Per example and channel
    # its gathers take transposes, and it measured no faster (forward
    # 1.0-1.25x the form below).
    fast = backend.fast_path("region_max", inputs, windows) if shared else None
    if fast is None:
        pooled = _per_dim_maxima(
            pooled, windows, spatial, outputs, bounds, shared, batch
        )
    else:
        cells = []
        sizes = []
        for d, (n, m) in enumerate(zip(spatial, outputs, strict=True)):
            k = None if windows.pool_size is None else windows.pool_size[d]
            size = region_size(n, m, k, overlapping)
            sizes.append(size)
            cells.append(
                ops.reshape(region_cells(bounds[d], size), (1, m * size))
            )
        pooled = fast(pooled, cells, tuple(sizes), windows.data_format)
    return ops.cast(pooled, inputs.dtype)


def _whole_factors(windows, spatial, outputs):
    """`n / m` per spatial dim where it is a whole number in every dim and
    Graham's regions do not overlap, else `None`. Then each region is `n /
    m` cells: Graham's increments `floor(alpha)` and `ceil(alpha)` are
    both `alpha`. (Computed in float32, the pseudo-random sequence's
    `floor((i + u) * alpha)` can round `i + u` up to `i + 1` for `u` within
    half a float32 step of 1, a region of `alpha + 1` cells and one of
    `alpha - 1`; the exact sequence has none.)"""
    if windows.pool_size is not None or windows.overlapping:
        return None
    if any(n % m for n, m in zip(spatial, outputs, strict=True)):
        return None
    return tuple(n // m for n, m in zip(spatial, outputs, strict=True))


def region_cells(bounds, size):
    """Every cell of each region, `size` of them (a shorter region repeats
    its last cell): int32 `(rows, m, size)` from a dim's `(starts, ends)`."""
    starts, ends = bounds
    offsets = ops.arange(size, dtype="int32")
    return ops.minimum(starts[:, :, None] + offsets, ends[:, :, None] - 1)


def _per_dim_maxima(x, windows, spatial, outputs, bounds, shared, batch):
    """The maximum over each region, one spatial dim at a time, the last
    first: a max pooling of stride 1 whose window is the shortest region's
    length `w`, then a gather of the `ceil(longest / w)` windows that cover
    each region (one with torch's windows) and their maximum.

    The last dim first: ties then go to the first maximal cell in
    row-major order (each max pooling gives its first maximal cell the
    gradient, and each comparison the earlier window). Where the backend
    gathers one row per example and channel faster in another layout
    (TensorFlow: the dim's axis just after the example and channel;
    torch: the dim's axis innermost), and no max pooling comes between
    the gathers (every region at most twice the shortest, as at Graham's
    ratios), each dim runs in that layout (`each_dim_arranged`)."""
    rank = windows.num_spatial_dims
    widths = [
        n // m if windows.pool_size is None else windows.pool_size[d]
        for d, (n, m) in enumerate(zip(spatial, outputs, strict=True))
    ]
    arranged = None
    if not shared and max(widths) == 1:
        arranged = backend.fast_path("each_dim_arranged", x)
    if arranged is None:
        for d in reversed(range(rank)):
            axis = (1 if windows.channels_last else 2) + d
            x = _dim_maxima(
                x, windows, d, axis, spatial, outputs, bounds, shared, batch
            )
        return x
    # Each dim's gathers see the example and channel axes first.
    laid_out = copy.copy(windows)
    laid_out.data_format = "channels_first"
    return arranged(
        x,
        lambda x, d, axis: _dim_maxima(
            x, laid_out, d, axis, spatial, outputs, bounds, shared, batch
        ),
        rank,
        windows.channels_last,
    )


def _dim_maxima(x, windows, d, axis, spatial, outputs, bounds, shared, batch):
    """The maxima over spatial dim `d`'s regions, `x`'s axis `axis`."""
    n, m = spatial[d], outputs[d]
    starts, ends = bounds[d]
    if windows.pool_size is not None:
        width, count = windows.pool_size[d], 1
    else:
        # Every region holds at least `width` cells and at most `count`
        # windows of them, which cover it, overlapping.
        width = n // m
        size = region_size(n, m, None, windows.overlapping)
        count = math.ceil(size / width)
    if width > 1:
        sizes = [1] * windows.num_spatial_dims
        sizes[d] = width
        x = Window(
            windows.num_spatial_dims,
            tuple(sizes),
            1,
            "valid",
            windows.data_format,
        ).max_pool(x)
    cell_sets = [
        ops.minimum(starts + j * width, ends - width) for j in range(count)
    ]
    fast = backend.fast_path("rows_maximum", x) if count > 1 else None
    if fast is not None:
        return fast(x, cell_sets, axis, windows.channels_last)
    reduced = None
    for cells in cell_sets:
        chosen = _take_rows(x, cells, axis, shared, windows, batch)
        if reduced is None:
            reduced = chosen
        else:
            later = ops.logical_or(chosen > reduced, ops.isnan(chosen))
            reduced = ops.where(later, chosen, reduced)
    return reduced


def _take_rows(x, cells, axis, shared, windows, batch):
    """`x`'s cells `cells` along `axis`: int32 `(rows, m)`, one row for
    all examples and channels (`shared`) or one per example and channel."""
    fast = backend.fast_path("take_rows", x)
    if fast is not None:
        return fast(x, cells, axis, windows.channels_last)
    if shared:
        # A gather of whole slices: no index per element.
        return ops.take(x, ops.reshape(cells, (-1,)), axis=axis)
    m = cells.shape[-1]
    index = ops.reshape(cells, (batch, -1, m))
    rank = windows.num_spatial_dims
    spread = [1] * rank
    spread[axis - (1 if windows.channels_last else 2)] = m
    if windows.channels_last:
        index = ops.reshape(ops.transpose(index, (0, 2, 1)), (batch, -1))
        index = ops.reshape(index, (batch, *spread, -1))
    else:
        index = ops.reshape(index, (batch, -1, *spread))
    target = list(ops.shape(x))
    target[axis] = m
    return ops.take_along_axis(x, ops.broadcast_to(index, target), axis=axis)


def _pooled_with_indices(
    inputs, windows, spatial, outputs, bounds, batch, channels
):
    """The pooled tensor and the flat index of each maximum, from every
    cell of every region gathered (`size` cells each, repeating a region's
    last cell where it is shorter), keeping the cells' input positions."""
    rank = windows.num_spatial_dims
    x = inputs
    if windows.channels_last:
        x = ops.transpose(x, [0, rank + 1, *range(1, rank + 1)])
    gathered = x
    positions = []
    sizes = []
    for d, (n, m) in enumerate(zip(spatial, outputs, strict=True)):
        k = None if windows.pool_size is None else windows.pool_size[d]
        size = region_size(n, m, k, windows.overlapping)
        cells = ops.reshape(
            region_cells(bounds[d], size), (batch, channels, m, size)
        )
        positions.append(cells)
        sizes.append(size)
        axis = 2 + d
        index_shape = [batch, channels] + [1] * rank
        index_shape[axis] = m * size
        index = ops.reshape(cells, index_shape)
        target = list(ops.shape(gathered))
        target[axis] = m * size
        gathered = ops.take_along_axis(
            gathered, ops.broadcast_to(index, target), axis=axis
        )
    # (batch, channels, m_0, size_0, m_1, size_1, ...) -> windows last.
    split = [batch, channels]
    for m, size in zip(outputs, sizes, strict=True):
        split += [m, size]
    gathered = ops.reshape(gathered, split)
    order = [0, 1, *range(2, 2 + 2 * rank, 2), *range(3, 3 + 2 * rank, 2)]
    window_cells = math.prod(sizes)
    gathered = ops.reshape(
        ops.transpose(gathered, order), [batch, channels, *outputs, -1]
    )
    pooled = ops.max(gathered, axis=-1)
    flat = _flat_positions(positions, spatial, outputs, sizes)
    chosen = ops.argmax(ops.stop_gradient(gathered), axis=-1)
    indices = ops.take_along_axis(
        ops.broadcast_to(flat, [batch, channels, *outputs, window_cells]),
        ops.expand_dims(ops.cast(chosen, "int32"), -1),
        axis=-1,
    )[..., 0]
    if windows.channels_last:
        pooled = ops.transpose(pooled, [0, *range(2, rank + 2), 1])
        indices = ops.transpose(indices, [0, *range(2, rank + 2), 1])
    return pooled, ops.cast(indices, "int32")


def _flat_positions(positions, spatial, outputs, sizes):
    """The flat input index of every gathered cell, shaped
    `(batch, channels, *outputs, prod(sizes))` like the windows."""
    rank = len(spatial)
    flat = 0
    for d, cells in enumerate(positions):
        # cells: (batch, channels, m_d, size_d), placed on axes 2 + d (the
        # output) and 2 + rank + d (the window) of a rank-(2 + 2 * rank)
        # broadcast.
        shape = [ops.shape(cells)[0], ops.shape(cells)[1]] + [1] * (2 * rank)
        shape[2 + d] = outputs[d]
        shape[2 + rank + d] = sizes[d]
        flat = flat * spatial[d] + ops.reshape(cells, shape)
    full = list(ops.shape(flat))
    return ops.reshape(flat, [full[0], full[1], *outputs, math.prod(sizes)])
