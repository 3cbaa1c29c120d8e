"""Which cells of `Window.windows`'s result lie inside the input.

`Window.windows` reads padded cells as zeros; soft pooling and median
pooling must instead leave them out. `inside_mask` says where they are, a
constant of the shapes computed in NumPy, so it costs nothing at run time
and is the same eagerly, in `jit` and in an exported graph.
"""

import math

import numpy as np
from keras import ops


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
