import itertools
import math

import keras
import numpy as np
from keras import ops

from kpool import backend
from kpool.ops.window_cells import low_rank_windows
from kpool.ops.windows import (
    Window,
    as_tensor,
    check_rank,
    standardize_tuple,
)


def max_pool_with_argmax(
    inputs, pool_size, strides=None, padding="valid", data_format=None
):
    """Max pooling that also returns where each maximum came from.

    The values are `keras.ops.max_pool`'s (with its gradient). The indices
    are int32 and have the values' shape; each is the flat index of the
    maximal input cell within its example and channel, row-major over the
    spatial dims: `h * width + w` in 2D, `(d * height + h) * width + w` in
    3D, whatever `data_format` is. That is `torch.nn.functional.max_pool2d(
    ..., return_indices=True)`'s layout. TensorFlow's
    `tf.nn.max_pool_with_argmax` (and TFA's `MaxUnpooling2D`) instead index
    `((b * height + h) * width + w) * channels + c` over channels-last
    inputs: to convert, `torch_index = tf_index // channels %
    (height * width)` for `include_batch_in_index=True`.

    Under `"same"` a padded cell is never the maximum; with ties the first
    maximal cell of the window in row-major order wins, as in torch. The
    index of a window holding NaN is that of one of its cells (on torch,
    of a NaN).

    Args:
        inputs: tensor of rank 3, 4 or 5, laid out as `data_format` says.
        pool_size: int or tuple of ints, one per spatial dim.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.

    Returns:
        `(values, indices)`, both of the pooled shape.

    Example:

    >>> x = np.array([[1.0, 5.0], [7.0, 2.0]]).reshape(1, 2, 2, 1)
    >>> values, indices = kpool.ops.max_pool_with_argmax(x, 2)
    >>> values[0, 0, 0, 0], indices[0, 0, 0, 0]  # 7.0, 2 (h=1, w=0)
    """
    inputs = as_tensor(inputs)
    window = Window.of(
        inputs, pool_size, strides, padding, data_format, "max_pool_with_argmax"
    )
    window.check_fits(inputs.shape, "max_pool_with_argmax")
    fast = backend.fast_path("max_pool_with_argmax", inputs, window)
    if fast is not None:
        return fast(window, inputs)
    values = window.max_pool(inputs)
    spatial = window.spatial_shape(inputs.shape)
    padded = inputs
    if window.padding == "same":
        pads = window.full_shape(window.same_pads(spatial), (0, 0))
        padded = ops.pad(inputs, pads, constant_values=-np.inf)
    offsets = _first_maximum(window, ops.stop_gradient(padded))
    return values, ops.cast(_flat_indices(window, spatial, offsets), "int32")


def _first_maximum(window, padded):
    """The offset in its window of each window's first maximal element.

    A minimum over the offsets that hold the maximum, not `ops.argmax`,
    whose TensorFlow form (it tells -0.0 from 0.0 by the sign bit) has no
    TFLite builtin. A window of NaN gives its last offset.

    Windows that tile the input (stride = size, dividing it) are
    `Window.windows`, reshapes and one transpose. Others are built from
    tensors of rank 5 at most (`low_rank_windows`): there `Window.windows`
    slices a 6-D view, which TFLite's slices refuse when the model runs.
    (`low_rank_windows` transposes once per dim: TensorFlow's graph took
    1.16x as long for 2x2 tiling windows, 1.08x at 3x3/s2, 32x32x32x64;
    JAX and torch 0.97-1.03x.)
    """
    if window.tiles(window.spatial_shape(padded.shape)):
        elements = window.windows(padded)
    else:
        elements = low_rank_windows(window, padded)
    axis = window.window_axis
    size = elements.shape[axis]
    shape = [1] * len(elements.shape)
    shape[axis] = size
    order = ops.reshape(ops.arange(size, dtype="int32"), shape)
    top = ops.max(elements, axis=axis, keepdims=True)
    first = ops.min(ops.where(elements == top, order, size), axis=axis)
    return ops.minimum(first, size - 1)


def _flat_indices(window, spatial, offsets):
    """The flat input index of the `offsets`-th element of each window."""
    pads = window.same_pads(spatial) if window.padding == "same" else None
    out_spatial = window.output_spatial_shape(window.full_shape(spatial, 1))
    # Each offset's position in its window, per dim, looked up rather than
    # computed with `//` and `%` (TFLite has no builtin for what TensorFlow
    # makes of those).
    cells = np.array(
        list(itertools.product(*(range(k) for k in window.pool_size))),
        "int32",
    ).reshape(-1, window.num_spatial_dims)
    flat = 0
    for d, (n, s, out) in enumerate(
        zip(spatial, window.strides, out_spatial, strict=True)
    ):
        before = pads[d][0] if pads else 0
        starts = np.arange(out, dtype="int32") * s - before
        shape = [1] * window.num_spatial_dims
        shape[d] = out
        starts = ops.convert_to_tensor(
            starts.reshape(window.full_shape(shape, 1)), "int32"
        )
        position = starts + ops.take(
            ops.convert_to_tensor(cells[:, d], "int32"), offsets
        )
        flat = flat * n + position
    return flat


def max_unpool(
    inputs,
    indices,
    pool_size,
    strides=None,
    padding="valid",
    output_size=None,
    data_format=None,
):
    """Max unpooling (SegNet): scatters pooled values back to their cells.

    The inverse of `max_pool_with_argmax`: an output of the pooled input's
    spatial shape, zero except at `indices` (laid out as that op returns
    them: flat over the spatial dims, per example and channel), which get
    the values of `inputs`. Where several values go to one cell (windows
    that overlap and share a maximum) they add up, as in TFA's
    `MaxUnpooling2D`; `torch.nn.functional.max_unpool2d` keeps one of them.
    The gradient with respect to `inputs` reads the upstream gradient at
    `indices`, as torch's does.

    The window arguments give the output's default spatial size, the
    largest input that pools to `inputs`'s size: `(n - 1) * strides +
    pool_size` under `"valid"` (torch's default) and `n * strides` under
    `"same"`. `output_size` picks another size that pools to it (an odd one,
    say, as SegNet needs for an odd encoder map).

    `indices` must be integers in `[0, prod(output spatial shape))`. Where
    their values are known (eagerly, as torch runs Keras models by default)
    one outside that range raises a `ValueError`, as
    `torch.nn.functional.max_unpool2d` does. Inside a traced function
    (`jax.jit`, `tf.function`, a Keras `fit` or `predict` on JAX or
    TensorFlow, `torch.compile`, an export) they are not known when the
    check would run: there such an index is dropped, its value reaching no
    cell and getting a zero gradient. Indices of a non-integer dtype
    always raise.

    Reference: Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep
    Convolutional Encoder-Decoder Architecture for Image Segmentation",
    TPAMI 2017.

    Args:
        inputs: tensor of rank 3, 4 or 5, the pooled values.
        indices: integer tensor of the shape of `inputs`.
        pool_size: int or tuple of ints: the pooling's window.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"`: the pooling's padding.
        output_size: `None`, or an int or tuple of ints, one per spatial
            dim: the spatial shape of the result.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.

    Returns:
        The unpooled tensor, of the dtype of `inputs`.

    Example:

    >>> x = np.random.rand(2, 8, 8, 3).astype("float32")
    >>> values, indices = kpool.ops.max_pool_with_argmax(x, 2)
    >>> kpool.ops.max_unpool(values, indices, 2).shape  # (2, 8, 8, 3)
    """
    inputs = as_tensor(inputs)
    indices = as_tensor(indices)
    window = Window.of(
        inputs, pool_size, strides, padding, data_format, "max_unpool"
    )
    size = unpooled_spatial_shape(window, inputs.shape, output_size)
    if tuple(indices.shape[1:]) != tuple(inputs.shape[1:]):
        raise ValueError(
            "`indices` must have the shape of `inputs`. Received: "
            f"indices.shape={tuple(indices.shape)}, "
            f"inputs.shape={tuple(inputs.shape)}"
        )
    checked = check_indices(indices, size)
    # The backend's form needs indices in range.
    fast = backend.fast_path("max_unpool", inputs, window) if checked else None
    if fast is not None:
        return fast(window, inputs, indices, size)

    def scatter():
        return _scatter(window, inputs, indices, size, checked)

    tiled = backend.fast_path("tiled_unpool", inputs, window)
    # `size` pools to `inputs`: tiled by the windows, it is their cells.
    if tiled is not None and window.tiles(size):
        return tiled(window, inputs, indices, size, scatter)
    return scatter()


def _scatter(window, inputs, indices, size, checked):
    """`max_unpool`'s sum of each value into its cell of the flat output
    (`checked`: whether the indices are known to be in range)."""
    cells = math.prod(size)
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    # Each value's cell in the flat output, in the layout of `inputs`, so
    # that neither needs a transpose: `(b * channels + c) * cells + index`
    # channels first, `(b * cells + index) * channels + c` channels last.
    shape = ops.shape(inputs)
    batch = shape[0]
    channels = shape[window.channel_axis]
    index = ops.cast(indices, "int32")
    values = inputs
    if not checked:
        # Traced: an index out of range would land in another example's or
        # channel's cells, or be an error on some backends. It is dropped.
        inside = ops.logical_and(index >= 0, index < cells)
        values = ops.where(inside, values, ops.zeros_like(values))
        index = ops.where(inside, index, ops.zeros_like(index))
    n = window.num_spatial_dims
    examples = ops.reshape(
        ops.arange(batch, dtype="int32"), (-1,) + (1,) * (n + 1)
    )
    channel = ops.arange(channels, dtype="int32")
    if window.channels_last:
        segment_ids = (examples * cells + index) * channels + channel
        unpooled_shape = (batch, *size, channels)
    else:
        channel = ops.reshape(channel, (-1,) + (1,) * n)
        segment_ids = (examples * channels + channel) * cells + index
        unpooled_shape = (batch, channels, *size)
    unpooled = ops.segment_sum(
        ops.reshape(values, (-1,)),
        ops.reshape(segment_ids, (-1,)),
        num_segments=batch * channels * cells,
    )
    return ops.reshape(ops.cast(unpooled, dtype), unpooled_shape)


def check_indices(indices, size):
    """Raises unless `indices` are integers in `[0, prod(size))`.

    The dtype is checked always, the values where they are known (see
    `kpool.backend.values_known`). Returns whether the values were.
    """
    dtype = keras.backend.standardize_dtype(indices.dtype)
    if not dtype.startswith(("int", "uint")):
        raise ValueError(
            "`indices` must be an integer tensor, the flat indices that "
            f"max_pool_with_argmax returns. Received: indices.dtype={dtype}"
        )
    if not backend.values_known(indices):
        return False
    if 0 in tuple(indices.shape):
        return True
    cells = math.prod(size)
    value_range = backend.fast_path("value_range", indices)
    if value_range is not None:
        lowest, highest = value_range(indices)
    elif keras.config.backend() == "jax":
        import jax

        # Known indices inside a traced function (a constant the function
        # closes over): reduced now, not traced.
        with jax.ensure_compile_time_eval():
            lowest, highest = int(ops.min(indices)), int(ops.max(indices))
    else:
        # On the host: an eager tensor a `tf.function` closes over is read
        # here, where `ops.min` would add a graph op.
        values = ops.convert_to_numpy(indices)
        lowest, highest = int(values.min()), int(values.max())
    if lowest < 0 or highest >= cells:
        raise ValueError(
            f"`indices` must be in [0, {cells}): flat indices into the "
            f"output's {'x'.join(map(str, size))} spatial cells. Received: "
            f"indices from {lowest} to {highest}"
        )
    return True


def unpooled_spatial_shape(window, pooled_shape, output_size, caller=None):
    """The spatial shape `max_unpool` returns, checked to pool back."""
    caller = caller or "max_unpool"
    check_rank(
        pooled_shape, window.num_spatial_dims, window.data_format, caller
    )
    pooled = window.spatial_shape(pooled_shape)
    if output_size is None:
        if any(n is None for n in pooled):
            return (None,) * window.num_spatial_dims
        if window.padding == "valid":
            return tuple(
                (n - 1) * s + k
                for n, k, s in zip(
                    pooled, window.pool_size, window.strides, strict=True
                )
            )
        return tuple(n * s for n, s in zip(pooled, window.strides, strict=True))
    size = standardize_tuple(
        output_size, window.num_spatial_dims, "output_size"
    )
    pools_to = window.output_spatial_shape(window.full_shape(size, 1))
    if any(
        n is not None and n != m for n, m in zip(pooled, pools_to, strict=True)
    ):
        raise ValueError(
            f"`output_size` must be a size that the pooling's window takes to "
            f"the input's spatial shape {tuple(pooled)}, but it pools to "
            f"{pools_to}. Received: output_size={output_size!r}"
        )
    return size
