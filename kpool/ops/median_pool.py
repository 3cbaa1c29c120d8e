import numpy as np
from keras import ops

from kpool.ops.window_cells import (
    as_window_constant,
    inside_cells,
    low_rank_windows,
)
from kpool.ops.windows import Window, as_tensor, float_compute_dtype


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
    `numpy.median`. float16 and bfloat16 are computed in float32.

    Each window is sorted (`keras.ops.sort`), padded cells as `+inf` so
    that they sort last, and the middle cells are picked by a constant of
    the shapes.

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
    cells = low_rank_windows(window, window.zero_pad(x))
    axis = window.window_axis
    inside = inside_cells(window, x.shape)
    counts = inside.sum(axis=-1)
    size = inside.shape[-1]
    if (counts == size).all():
        ordered = ops.sort(cells, axis=axis)
        low, high = (
            ops.take(ordered, i, axis=axis % len(cells.shape))
            for i in ((size - 1) // 2, size // 2)
        )
    else:
        mask = as_window_constant(window, inside, "bool")
        ordered = ops.sort(ops.where(mask, cells, float("inf")), axis=axis)
        # One-hot picks of the two middle cells of each window: the
        # padded cells (+inf) are after them, so never picked.
        positions = np.arange(size)
        picks = []
        for middle in ((counts - 1) // 2, counts // 2):
            pick = positions == middle[..., None]
            pick = as_window_constant(window, pick, "bool")
            picks.append(ops.sum(ops.where(pick, ordered, 0.0), axis=axis))
        low, high = picks
    median = low + (high - low) / 2
    median = ops.where(low == high, low, median)  # keeps +-inf
    has_nan = ops.any(ops.isnan(cells), axis=axis)
    median = ops.where(has_nan, float("nan"), median)
    return ops.cast(median, dtype)
