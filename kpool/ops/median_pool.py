import functools
import math
import random

import numpy as np
from keras import ops

from kpool import backend
from kpool.ops.window_cells import (
    as_window_constant,
    inside_cells,
    low_rank_windows,
    window_slots,
)
from kpool.ops.windows import (
    Window,
    as_tensor,
    float_compute_dtype,
    unit_slice,
)

# Windows of more cells are sorted: a selection network's size grows
# faster than a sort's cost (in torch's eager mode a 5x5 network takes
# 2/3 of the sort's time, a 3x3x3 one 1.4x to 3x), and building it checks
# every 0-1 input.
NETWORK_MAX_CELLS = 25
NETWORK_MAX_PATTERNS = 2**18


def median_pool(
    inputs, pool_size, strides=None, padding="valid", data_format=None
):
    """Median pooling: the median of each window, for each channel.

    The median is `numpy.median`'s: with an even number `m` of cells, the
    mean of the two middle values (the `m // 2`-th and `m // 2 + 1`-th
    smallest), so a 2x2 window gives the mean of its two middle values.
    (timm's `MedianPool2d` takes `torch.median`, the lower of the two.)
    Under `"same"` padded cells are left out: a window at the edge gives
    the median of its cells inside the input, `numpy.nanmedian` of the
    window padded with NaN. (timm's `MedianPool2d(same=True)` instead pads
    by reflection.) The gradient goes to the middle cell, or half to each
    of the two middle cells. NaN in a window gives NaN, as in
    `numpy.median`. float16 and bfloat16 are computed in float32. Integer
    inputs (8-bit images, say) are computed in float32, float64 from 32
    bits up (float32 again where the backend has no float64, as JAX by
    default), and the mean of two middle values is truncated toward zero,
    as a cast truncates.

    Windows of up to 25 cells go through a selection network: each window
    offset is one shifted slice of the input, and a fixed sequence of
    elementwise minima and maxima of the slices leaves the middle values
    on two of them (a 3x3 window takes 14 after its columns are sorted, and
    with stride 1 neighbouring windows share their sorted columns). Larger
    windows are sorted (`keras.ops.sort`). Under `"same"` a window's padded
    cells read as `-inf` and `+inf`, as many of each as put its median on
    the same middle positions as a full window's.

    Under `"valid"` the output has `floor((n - pool_size) / strides) + 1`
    cells along a spatial dim of size `n`; under `"same"`,
    `ceil(n / strides)`.

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

    >>> x = np.array([5.0, 1.0, 2.0, 4.0, 3.0, 9.0]).reshape(1, 6, 1)
    >>> kpool.ops.median_pool(x, 3)  # [[[2.], [4.]]]
    >>> kpool.ops.median_pool(x, 2)  # [[[3.], [3.], [6.]]]
    """
    inputs = as_tensor(inputs)
    window = Window.of(
        inputs, pool_size, strides, padding, data_format, "median_pool"
    )
    window.check_fits(inputs.shape, "median_pool")
    dtype = inputs.dtype
    x = ops.cast(inputs, float_compute_dtype(dtype))
    inside = inside_cells(window, x.shape)
    counts = inside.sum(axis=-1)
    size = inside.shape[-1]
    middle = (size - 1) // 2
    # A window of an even number of cells needs the next value too.
    even = counts % 2 == 0
    positions = (middle, middle + 1) if even.any() else (middle,)
    fills = None if (counts == size).all() else centring_fills(inside)
    network = selection_network(window.pool_size, positions)

    def select(x):
        padded = window.zero_pad(x)
        if network is None:
            return sorted_values(window, padded, fills, positions)
        return network_values(window, padded, fills, network)

    fast = backend.fast_path("order_statistics", x, window)
    values = select(x) if fast is None else fast(window, x, select)
    low = values[0]
    if len(positions) == 1:
        median = low
    else:
        # Halves first: no overflow, and +-inf stay +-inf.
        median = low * 0.5 + values[1] * 0.5
        if not even.all():
            # An odd window's median is `low`, below `median`. A `where`
            # with an infinite constant stays a select in tf2onnx, which
            # turns other selects into x * mask + y * (1 - mask).
            odd = as_output_constant(window, ~even, "bool")
            median = ops.minimum(median, ops.where(odd, low, float("inf")))
    return ops.cast(median, dtype)


def centring_fills(inside):
    """What to add to each window's zero-padded cells: `-inf` for the first
    `a` of them and `+inf` for the others, `0` inside, so that the median
    of the `c` cells inside lands on the middle positions of all `K`: `a =
    (K - 1) // 2 - (c - 1) // 2`. `inside` is `inside_cells`'s."""
    size = inside.shape[-1]
    below = (size - 1) // 2 - (inside.sum(axis=-1) - 1) // 2
    padded = ~inside
    rank = np.cumsum(padded, axis=-1) - 1
    fills = np.where(rank < below[..., None], -np.inf, np.inf)
    return np.where(padded, fills, 0.0)


def as_output_constant(window, array, dtype):
    """A NumPy array of the output's spatial shape as a tensor that
    broadcasts to the output."""
    shape = window.full_shape(array.shape, 1)
    return ops.convert_to_tensor(array.reshape(shape), dtype)


def sorted_values(window, padded, fills, positions):
    """The values at `positions` of each window's sorted cells, or NaN
    where the window holds NaN (which sorts last)."""
    cells = low_rank_windows(window, padded)
    if fills is not None:
        cells = cells + as_window_constant(window, fills, cells.dtype)
    axis = window.window_axis % len(cells.shape)
    ordered = ops.sort(cells, axis=axis)
    has_nan = ops.any(ops.isnan(cells), axis=axis)
    # Slices, not `ops.take`: torch's ONNX export lacks the `ravel` in it.
    return [
        ops.where(
            has_nan,
            float("nan"),
            ops.squeeze(unit_slice(ordered, axis, p, 1), axis=axis),
        )
        for p in positions
    ]


def network_values(window, padded, fills, network):
    """The values `selection_network` leaves on its output wires."""
    column_stage, merge_stage, outputs = network
    # Row offset r of every window (the cells along dim 0), for all the
    # columns of the input at once.
    rows = window_slots(window, padded, dims=[0])
    later = range(1, window.num_spatial_dims)
    if fills is None:
        # Sorted once for every window that holds the column.
        rows = compare(rows, column_stage)
        slots = [s for row in rows for s in window_slots(window, row, later)]
    else:
        # Padded cells differ between the windows that share a column.
        slots = [s for row in rows for s in window_slots(window, row, later)]
        slots = [
            slot + as_output_constant(window, fills[..., j], slot.dtype)
            if (fills[..., j] != 0).any()
            else slot
            for j, slot in enumerate(slots)
        ]
        columns = len(slots) // len(rows)
        slots = compare(
            slots,
            [
                (r * columns + q, t * columns + q, low, high)
                for r, t, low, high in column_stage
                for q in range(columns)
            ],
        )
    slots = compare(slots, merge_stage)
    return [slots[p] for p in outputs]


def compare(wires, comparators):
    """Runs compare-exchanges `(i, j, low, high)`: wire `i` gets the
    minimum of wires `i` and `j` where `low`, wire `j` the maximum where
    `high` (a side that nothing reads later is not computed)."""
    wires = list(wires)
    for i, j, low, high in comparators:
        a, b = wires[i], wires[j]
        if low:
            wires[i] = ops.minimum(a, b)
        if high:
            wires[j] = ops.maximum(a, b)
    return wires


def odd_even_merge_sort(n):
    """Batcher's odd-even merge sort of `n` wires: comparators `(i, j)`,
    `i < j`, each leaving the smaller value on `i`. Built for the next power
    of 2; a comparator with a wire past `n` is dropped (such wires would
    hold `+inf`, which never moves)."""
    size = 1 << max(n - 1, 0).bit_length()
    comparators = []
    merged = 1
    while merged < size:
        step = merged
        while step >= 1:
            for start in range(step % merged, size - step, 2 * step):
                for i in range(min(step, size - start - step)):
                    a, b = start + i, start + i + step
                    if a // (2 * merged) == b // (2 * merged) and b < n:
                        comparators.append((a, b))
            step //= 2
        merged *= 2
    return comparators


def _as_bits(values):
    """A bool vector as a Python int: bit `p` is `values[p]`."""
    packed = np.packbits(values, bitorder="little").tobytes()
    return int.from_bytes(packed, "little")


@functools.lru_cache(maxsize=None)
def selection_network(pool_size, positions):
    """A comparator network leaving on wires `positions` those positions of
    a window's sorted cells, or `None` for too large a window.

    Wire `r * columns + q` is the cell at offset `r` along dim 0 and `q`
    along the others (row-major). The network sorts each column (the `rows`
    cells that differ along dim 0 only: with stride 1 along the other dims,
    neighbouring windows share their columns and sort them once), then
    each row, then runs Batcher's odd-even merge sort, of which it keeps
    only what the selection needs. By the 0-1 principle it selects right
    for every input if it does for every input of 0s and 1s with sorted
    columns, `(rows + 1)**columns` of them, checked all at once as the
    bits of Python ints. The merge's comparators are dropped greedily, in
    the order that leaves the fewest operations, while the selection stays
    right; then the sides of comparators that no kept one reads.

    Returns `(column_stage, merge_stage, positions)`: comparators `(i, j,
    low, high)` as `compare` takes them, the column stage on row offsets
    (to apply to every column), the merge stage on wires.
    """
    rows, size = pool_size[0], math.prod(pool_size)
    columns = size // rows
    if size > NETWORK_MAX_CELLS or (rows + 1) ** columns > NETWORK_MAX_PATTERNS:
        return None
    # Pattern p has counts[p, q] ones in column q, at its bottom (sorted).
    counts = np.indices((rows + 1,) * columns).reshape(columns, -1).T
    start = [
        _as_bits(r >= rows - counts[:, q])
        for r in range(rows)
        for q in range(columns)
    ]
    ones = counts.sum(axis=1)
    # Sorted, position p holds a 1 where at least size - p cells are 1s.
    wanted = {p: _as_bits(p >= size - ones) for p in positions}

    def selects(comparators):
        wires = list(start)
        for i, j in comparators:
            wires[i], wires[j] = wires[i] & wires[j], wires[i] | wires[j]
        return all(wires[p] == bits for p, bits in wanted.items())

    column_sort = odd_even_merge_sort(rows)
    row_sorts = [
        (r * columns + a, r * columns + b)
        for r in range(rows)
        for a, b in odd_even_merge_sort(columns)
    ]
    best = None
    for merge in (
        row_sorts + odd_even_merge_sort(size),
        odd_even_merge_sort(size),
    ):
        orders = [merge[::-1], merge]
        if size <= 9:
            # Cheap to check, and other orders do better: a 3x3 median
            # takes 14 operations after its columns, 16 in Batcher's.
            rng = random.Random(0)
            orders += [rng.sample(merge, len(merge)) for _ in range(64)]
        for order in orders:
            kept = list(merge)
            for comparator in order:
                trial = [c for c in kept if c is not comparator]
                if selects(trial):
                    kept = trial
            stages = _needed_sides(column_sort, kept, columns, positions)
            cost = sum(low + high for _, _, low, high in stages[1])
            if best is None or cost < best[0]:
                best = (cost, stages)
    return (*best[1], positions)


def _needed_sides(column_sort, merge, columns, positions):
    """Both stages as `(i, j, low, high)`: a side is kept where a later
    comparator or the output reads it, a comparator where a side is."""
    needed = set(positions)
    merge_stage = []
    for i, j in reversed(merge):
        low, high = i in needed, j in needed
        if low or high:
            merge_stage.append((i, j, low, high))
            needed |= {i, j}
    column_stage = []
    for r, t in reversed(column_sort):
        sides = [(r * columns + q, t * columns + q) for q in range(columns)]
        read = [(i, j) for i, j in sides if i in needed or j in needed]
        if read:
            low = any(i in needed for i, _ in read)
            high = any(j in needed for _, j in read)
            column_stage.append((r, t, low, high))
            for i, j in read:
                needed |= {i, j}
    return column_stage[::-1], merge_stage[::-1]
