"""JAX's fast paths.

Under `jax.jit` XLA fuses elementwise ops into one loop, but each
reduction over a reshaped view, and each `reduce_window`, is a loop of its
own over memory. Where a pooling's windows are few cells, a window's cells
taken as strided slices of the input (one slice per offset in the window,
each the output's shape) turn the whole pooling into elementwise ops that
XLA fuses into one loop, backward included. Every piece is `jax.numpy` and
`jax.lax`, so nothing of kpool is needed to serve a model.
"""

import functools
import itertools
import math

# Windows of more cells keep the `keras.ops` forms: the fused loop grows
# with the window, and so does compilation.
MAX_SLICED_CELLS = 16


def fast_path(name, window=None):
    if (
        name == "disjoint_soft_pool"
        and math.prod(window.pool_size) <= MAX_SLICED_CELLS
    ):
        return sliced_soft_pool
    return None


def window_slices(window, x, pad_value):
    """Each window's cells of `x`, one strided slice per offset in the
    window: a list of `prod(pool_size)` arrays of the output's shape, in
    row-major order of the offsets. Under `"same"` the input is padded
    with `pad_value` first."""
    import jax.numpy as jnp
    from jax import lax

    spatial = window.spatial_shape(x.shape)
    outs = window.output_spatial_shape(x.shape)
    if window.padding == "same":
        pads = window.same_pads(spatial)
        x = jnp.pad(
            x, window.full_shape(pads, (0, 0)), constant_values=pad_value
        )
    axes = window.spatial_axes()
    cells = []
    for offsets in itertools.product(*(range(k) for k in window.pool_size)):
        start = [0] * x.ndim
        limit = list(x.shape)
        strides = [1] * x.ndim
        for axis, o, s, out in zip(
            axes, offsets, window.strides, outs, strict=True
        ):
            start[axis] = o
            limit[axis] = o + s * (out - 1) + 1
            strides[axis] = s
        cells.append(lax.slice(x, start, limit, strides))
    return cells


def sliced_soft_pool(window, x):
    """SoftPool (`kpool.ops.soft_pool.soft_reduce`'s overflow-safe form)
    over strided slices: the window's maximum, then `m + sum((x - m) e) /
    sum(e)` with `e = exp(x - m)`, all elementwise. Padded cells are
    `-inf` and weigh 0."""
    import jax
    import jax.numpy as jnp

    cells = window_slices(window, x, -jnp.inf)
    # y does not depend on m, so no gradient need flow through it.
    peak = jax.lax.stop_gradient(functools.reduce(jnp.maximum, cells))
    weighted = 0.0
    total = 0.0
    for cell in cells:
        shifted = jnp.maximum(cell - peak, -1e4)
        exponential = jnp.exp(shifted)
        weighted = weighted + shifted * exponential
        total = total + exponential
    # inf - inf is NaN: a window whose maximum is infinite returns it.
    return jnp.where(jnp.isinf(peak), peak, peak + weighted / total)
