"""Window cells for soft, tree and median pooling.

`Window.windows` reads padded cells as zeros; soft pooling and median
pooling must instead leave them out. `inside_cells` says where they are, a
constant of the shapes computed in NumPy, so it costs nothing at run time
and is the same eagerly, in `jit` and in an exported graph.
`low_rank_windows` builds `Window.windows`'s tensor from tensors of rank 5
at most, so that exported models run on TFLite too; `window_slots` gives
the same cells as one tensor per window offset, for ops that combine them
elementwise. `window_responses` gives learned filters' responses to each
window, for tree pooling and gated mixed pooling.
"""

import math

import numpy as np
from keras import ops

from kpool import backend
from kpool.ops.windows import unit_slice

# Windows of at most this many cells take `window_responses` as sums of
# the window's slots: elementwise, one fused loop under XLA (JAX,
# TensorFlow's `jit_compile=True`) and 2.5x faster than the contraction in
# TensorFlow's graph mode. Larger windows keep the contraction, whose cost
# does not grow with the number of ops.
MAX_SLOTTED_CELLS = 16


def inside_cells(window, input_shape):
    """True where a cell of `window.windows(window.zero_pad(x))` is in `x`.

    A NumPy bool array of shape `(*out, K)`, `K = prod(pool_size)` in the
    windows' row-major order. Needs the spatial dims of `input_shape`.
    """
    spatial = window.spatial_shape(input_shape)
    per_dim = []
    for n, k, s in zip(spatial, window.pool_size, window.strides, strict=True):
        if window.padding == "valid":
            starts = np.arange((n - k) // s + 1) * s
        else:
            before = max((math.ceil(n / s) - 1) * s + k - n, 0) // 2
            starts = np.arange(math.ceil(n / s)) * s - before
        cells = starts[:, None] + np.arange(k)[None, :]
        per_dim.append((cells >= 0) & (cells < n))
    cells = per_dim[0]
    for inside in per_dim[1:]:
        # Interleaved (o1, k1, o2, k2, ...), reordered below.
        cells = np.logical_and.outer(cells, inside)
    rank = len(per_dim)
    order = [2 * d for d in range(rank)] + [2 * d + 1 for d in range(rank)]
    cells = np.transpose(cells, order)
    return cells.reshape(*cells.shape[:rank], -1)


def as_window_constant(window, array, dtype):
    """A `(*out, K)` NumPy array as a tensor broadcastable to the windows:
    `(1, *out, K, 1)` under channels_last, `(1, 1, *out, K)` otherwise."""
    if window.channels_last:
        shape = (1, *array.shape, 1)
    else:
        shape = (1, 1, *array.shape)
    return ops.convert_to_tensor(array.reshape(shape), dtype)


def inside_mask(window, input_shape):
    """`inside_cells` as a bool tensor broadcastable to the windows."""
    return as_window_constant(window, inside_cells(window, input_shape), "bool")


def low_rank_windows(window, padded):
    """`window.windows(padded)`, the same tensor, built from tensors of
    rank 5 at most.

    TFLite's builtin slices take at most 5 dims, and `Window.windows`
    slices a 6-D view of 2D inputs (7-D for 3D), so a model holding it
    converts but does not run there. Here each spatial dim in turn is cut
    out of a 3-D view `(outer, n, inner)` (everything before it folded
    into `outer`, after it into `inner`) the same way, split into
    `(out + q, s)` so that each window offset is a unit-stride slice; the
    new window axis then joins those of the earlier dims, kept together
    just before the channels, by one 5-D transpose.
    """
    channels_first = not window.channels_last
    shape = list(ops.shape(padded))
    spatial = list(window.spatial_shape(shape))
    suffix = 1 if channels_first else shape[-1]
    # (P, o_1..o_{d-1}, n_d..n_r, K_{<d}, S) flattened as needed.
    tensor = padded
    outs, window_size = [], 1
    for dim, (k, s) in enumerate(
        zip(window.pool_size, window.strides, strict=True)
    ):
        n = spatial[dim]
        rest = math.prod(spatial[dim + 1 :])
        out = (n - k) // s + 1
        view = ops.reshape(tensor, (-1, n, rest * window_size * suffix))
        length = s * (out + (k - 1) // s)
        if length > n:
            view = ops.pad(view, [(0, 0), (0, length - n), (0, 0)])
        elif length < n:
            view = unit_slice(view, 1, 0, length)
        view = ops.reshape(view, (-1, length // s, s, view.shape[-1]))
        pieces = [
            unit_slice(unit_slice(view, 1, j, out), 2, 0, min(s, k - j * s))
            for j in range((k - 1) // s + 1)
        ]
        view = pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, 2)
        # (A * out, k, rest, K_{<d}, S) -> (A * out, rest, K_{<d}, k, S).
        view = ops.reshape(view, (-1, k, rest, window_size, suffix))
        tensor = ops.transpose(view, (0, 2, 3, 1, 4))
        outs.append(out)
        window_size *= k
    if channels_first:
        return ops.reshape(tensor, (-1, shape[1], *outs, window_size))
    return ops.reshape(tensor, (-1, *outs, window_size, suffix))


def offset_slices(window, tensor, dim):
    """The cells `t * s + o` along spatial dim `dim` of `tensor`, for each
    output `t` and each window offset `o < k` (`k`, `s` that dim's window
    size and stride): `k` tensors shaped like `tensor` but for that dim, of
    the output's length.

    `tensor` is zero-padded as `Window.windows` takes it. As in
    `low_rank_windows`, the dim is cut out of a view `(outer, n, inner)`
    split into `(out + q, s)`, so that each offset is a unit-stride slice of
    a tensor of rank 4.
    """
    k, s = window.pool_size[dim], window.strides[dim]
    axis = window.spatial_axes()[dim]
    shape = list(ops.shape(tensor))
    n = int(tensor.shape[axis])
    inner = math.prod(shape[axis + 1 :])
    out = (n - k) // s + 1
    length = s * (out + (k - 1) // s)
    view = ops.reshape(tensor, (-1, n, inner))
    if length > n:
        view = ops.pad(view, [(0, 0), (0, length - n), (0, 0)])
    elif length < n:
        view = unit_slice(view, 1, 0, length)
    view = ops.reshape(view, (-1, length // s, s, inner))
    shape[0] = -1
    shape[axis] = out
    return [
        ops.reshape(
            unit_slice(unit_slice(view, 1, o // s, out), 2, o % s, 1), shape
        )
        for o in range(k)
    ]


def window_slots(window, tensor, dims=None):
    """`offset_slices` along each of `dims` (all spatial dims by default)
    in turn: one tensor per window offset, in the windows' row-major order,
    each of the output's shape along `dims`.

    With all dims, slot `j` holds cell `j` of every window: the same values
    as `Window.windows(tensor)` along its window axis.
    """
    dims = range(window.num_spatial_dims) if dims is None else dims
    slots = [tensor]
    for dim in dims:
        slots = [
            piece
            for slot in slots
            for piece in offset_slices(window, slot, dim)
        ]
    return slots


def window_responses(window, padded, kernel):
    """Each filter's response `w_j . x` to each window `x` of `padded`.

    `padded` is zero-padded as `Window.windows` takes it. `kernel` is
    `(K, n)`, `n` filters over a window's `K = prod(pool_size)` cells in
    row-major order shared by the channels, or `(K, n, channels)`, one set
    per channel. Returns a list of `n` tensors of the output's shape.

    Where each op is its own kernel (TensorFlow's graph mode, torch) the
    backend's fast path is one convolution: over a unit channel for
    shared filters, depthwise (grouped) for per-channel ones. Otherwise
    small windows sum their slots and larger ones contract the windows.
    """
    fast = backend.fast_path("window_responses", padded, window)
    if fast is not None:
        return fast(window, padded, kernel)
    size, count = int(kernel.shape[0]), int(kernel.shape[1])
    per_channel = len(kernel.shape) == 3
    if size <= MAX_SLOTTED_CELLS:
        slots = window_slots(window, padded)
        if per_channel and not window.channels_last:
            kernel = ops.reshape(
                kernel, (size, count, -1, *(1,) * window.num_spatial_dims)
            )
        responses = []
        for j in range(count):
            total = slots[0] * kernel[0, j]
            for i in range(1, size):
                total = total + slots[i] * kernel[i, j]
            responses.append(total)
        return responses
    cells = low_rank_windows(window, padded)
    spatial = "xyz"[: window.num_spatial_dims]
    channel = "c" if per_channel else ""
    if window.channels_last:
        equation = f"b{spatial}kc,kn{channel}->b{spatial}nc"
        node_axis = -2
    else:
        equation = f"bc{spatial}k,kn{channel}->bc{spatial}n"
        node_axis = -1
    return ops.unstack(ops.einsum(equation, cells, kernel), axis=node_axis)
