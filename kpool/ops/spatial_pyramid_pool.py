import numbers

from keras import ops

from kpool import backend
from kpool.ops.windows import (
    Window,
    as_tensor,
    integers_as_floats,
    unit_slice,
)

MODES = ("max", "average")


def standardize_bins(bins):
    """Returns `bins` as a tuple of `(rows, columns)` pairs, or raises."""
    try:
        levels = list(bins)
    except TypeError:
        levels = []
    standardized = []
    for level in levels:
        pair = (level, level) if isinstance(level, numbers.Integral) else level
        try:
            pair = tuple(pair)
        except TypeError:
            pair = ()
        if len(pair) != 2 or not all(
            isinstance(n, numbers.Integral)
            and not isinstance(n, bool)
            and n > 0
            for n in pair
        ):
            standardized = []
            break
        standardized.append(tuple(int(n) for n in pair))
    if not standardized:
        raise ValueError(
            "`bins` must be a non-empty sequence of positive ints or of "
            f"(rows, columns) pairs of positive ints. Received: bins={bins!r}"
        )
    return tuple(standardized)


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(
            f"`mode` must be one of {list(MODES)}. Received: mode={mode!r}"
        )


def spatial_pyramid_pool(inputs, bins=(1, 2, 4), mode="max", data_format=None):
    """Spatial pyramid pooling (He et al., 2014): a fixed-length vector.

    For each level `b` of `bins`, adaptive max (or average) pooling to a
    `b x b` grid (or `rows x columns` for a pair), flattened as
    `keras.layers.Flatten` flattens it in `data_format`'s layout; the levels
    are concatenated in order. The output has
    `channels * sum(rows * columns)` features whatever the input's spatial
    size, so a model can take images of any size and still end in dense
    layers.

    Bin `i` of `b` along a dim of size `n` covers cells
    `floor(i * n / b)` to `ceil((i + 1) * n / b) - 1`, as in
    `keras.ops.adaptive_max_pool` and `torch.nn.AdaptiveMaxPool2d`, which
    pools every level on torch where the spatial size is known. Elsewhere,
    and for sizes known only at run time (a TensorFlow graph traced for
    images of any size), the bins are masked reductions: faster on JAX,
    and on TensorFlow free of Keras 3.15's NaN gradients of adaptive max
    pooling for small grids; the 1x1 level is a global max or mean. Where
    a bin's maximum is tied, torch's kernel passes the gradient to one of
    the tied cells and the reductions share it among them.

    Reference: He, Zhang, Ren and Sun, "Spatial Pyramid Pooling in Deep
    Convolutional Networks for Visual Recognition", ECCV 2014.

    Args:
        inputs: tensor of rank 4, laid out as `data_format` says.
        bins: sequence of ints or of `(rows, columns)` pairs.
        mode: `"max"` or `"average"`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.

    Returns:
        `(batch, channels * sum(rows * columns))`, of the dtype of `inputs`.

    Example:

    >>> x = np.random.rand(2, 13, 17, 8)
    >>> kpool.ops.spatial_pyramid_pool(x, bins=[1, 2, 4]).shape  # (2, 168)
    """
    bins = standardize_bins(bins)
    check_mode(mode)
    inputs = as_tensor(inputs)
    window = Window(2, 1, 1, "valid", data_format)
    if len(inputs.shape) != 4:
        raise ValueError(
            "`inputs` of spatial_pyramid_pool must have rank 4 (batch, 2 "
            "spatial dims and channels). Received: inputs.shape="
            f"{tuple(inputs.shape)}"
        )
    channels = inputs.shape[window.channel_axis]
    static = all(n is not None for n in window.spatial_shape(inputs.shape))
    dtype = inputs.dtype
    inputs = integers_as_floats(inputs)
    # torch's adaptive pooling, where the backend has it. Keras 3.15's
    # `adaptive_max_pool` is about 15 times slower than these masked
    # reductions on JAX (forward and backward, CPU), and on TensorFlow its
    # max pooling has NaN gradients for small grids (1x2, say).
    fast = backend.fast_path("adaptive_pool", inputs) if static else None
    levels = []
    for level in bins:
        # The fast path may decline (None) a level it cannot export.
        pooled = fast and fast(inputs, level, mode, window.data_format)
        if pooled is None:
            pooled = _adaptive_pool(inputs, level, mode, window, static)
        levels.append(ops.reshape(pooled, (-1, channels * level[0] * level[1])))
    pooled = levels[0] if len(levels) == 1 else ops.concatenate(levels, axis=-1)
    return ops.cast(pooled, dtype)


def _adaptive_pool(inputs, level, mode, window, static):
    if level == (1, 1):
        reduce = ops.max if mode == "max" else ops.mean
        return reduce(inputs, axis=window.spatial_axes(), keepdims=True)
    if static:
        return static_adaptive_pool(inputs, level, mode, window)
    return dynamic_adaptive_pool(inputs, level, mode, window)


def static_adaptive_pool(inputs, output_size, mode, window):
    """Adaptive pooling to `output_size` for known spatial dims, the bins
    of `keras.ops.adaptive_max_pool`: the dims whose bins divide them by
    one reshape into equal bins and one reduction over every bin's cells
    at once (a pass per dim took 1.1-1.3x JAX's `reduce_window`, forward,
    at the sizes SPP sees); each other dim by one reduction of a slice per
    bin. One pass over the input per dim at most, where
    `dynamic_adaptive_pool`'s masks take one per bin (20x the time of a
    reduce_window on JAX, forward)."""
    reduce = ops.max if mode == "max" else ops.mean
    # Python ints: torch's tracer (ONNX export) gives a size whose
    # arithmetic it records, and exports `//` as a truncating Div.
    sizes = [int(inputs.shape[axis]) for axis in window.spatial_axes()]
    whole = [n % bins == 0 for n, bins in zip(sizes, output_size, strict=True)]
    pooled = inputs
    if any(whole):
        shape, cells = [-1], []
        for axis in range(1, len(inputs.shape)):
            if axis not in window.spatial_axes():
                shape.append(inputs.shape[axis])
                continue
            d = window.spatial_axes().index(axis)
            if whole[d]:
                shape += [output_size[d], sizes[d] // output_size[d]]
                cells.append(len(shape) - 1)
            else:
                shape.append(sizes[d])
        pooled = reduce(ops.reshape(pooled, shape), axis=tuple(cells))
    for axis, n, bins, done in zip(
        window.spatial_axes(), sizes, output_size, whole, strict=True
    ):
        if done:
            continue
        parts = []
        for i in range(bins):
            start, end = (i * n) // bins, -(-(i + 1) * n // bins)
            part = unit_slice(pooled, axis, start, end - start)
            parts.append(reduce(part, axis=axis, keepdims=True))
        pooled = ops.concatenate(parts, axis=axis)
    return pooled


def dynamic_adaptive_pool(inputs, output_size, mode, window):
    """Adaptive pooling to `output_size` for spatial dims known only at run
    time: each dim is reduced over one mask per bin, the bins of
    `keras.ops.adaptive_max_pool`."""
    pooled = inputs
    for axis, bins in zip(window.spatial_axes(), output_size, strict=True):
        pooled = _reduce_bins(pooled, axis, bins, mode)
    return pooled


def _reduce_bins(x, axis, bins, mode):
    n = ops.shape(x)[axis]
    positions = ops.arange(n, dtype="int32")
    index = ops.arange(bins, dtype="int32")[:, None]
    starts = (index * n) // bins
    ends = -((-(index + 1) * n) // bins)
    masks = (positions[None, :] >= starts) & (positions[None, :] < ends)
    # x gets a bins axis before `axis`: (..., bins, n, ...).
    expanded = ops.expand_dims(x, axis)
    rank = len(expanded.shape)
    shape = [1] * rank
    shape[axis], shape[axis + 1] = bins, -1
    masks = ops.reshape(masks, shape)
    if mode == "max":
        lowest = ops.convert_to_tensor(float("-inf"), x.dtype)
        return ops.max(ops.where(masks, expanded, lowest), axis=axis + 1)
    masks = ops.cast(masks, x.dtype)
    sums = ops.sum(expanded * masks, axis=axis + 1)
    return sums / ops.sum(masks, axis=axis + 1)


def spatial_pyramid_size(bins, channels):
    """The length of `spatial_pyramid_pool`'s output."""
    if channels is None:
        return None
    return channels * sum(rows * columns for rows, columns in bins)
