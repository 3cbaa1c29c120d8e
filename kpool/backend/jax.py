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
    forms = {
        "max_pool": max_pool,
        "window_means": window_means,
        "disjoint_soft_pool": sliced_soft_pool,
        "stochastic_expectation": sliced_stochastic_expectation,
    }
    if name not in forms:
        return None
    # Without a window: whether this backend has the piece at all.
    if window is None or math.prod(window.pool_size) <= MAX_SLICED_CELLS:
        return forms[name]
    return None


def window_slices(window, x, pad_value, padded=False):
    """Each window's cells of `x`, one strided slice per offset in the
    window: a list of `prod(pool_size)` arrays of the output's shape, in
    row-major order of the offsets. Under `"same"` the input is padded
    with `pad_value` first, unless `padded` says it already is (its
    windows are then the valid ones)."""
    import jax.numpy as jnp
    from jax import lax

    spatial = window.spatial_shape(x.shape)
    if padded:
        outs = tuple(
            (n - k) // s + 1
            for n, k, s in zip(
                spatial, window.pool_size, window.strides, strict=True
            )
        )
    else:
        outs = window.output_spatial_shape(x.shape)
    if window.padding == "same" and not padded:
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


def max_pool(window, x):
    """`keras.ops.max_pool` as the window's strided slices, value and
    gradient.

    On XLA's CPU backend `lax.reduce_window` is the slow form both ways:
    its gradient (`select_and_scatter_add`) ran 3-10x slower than the
    slices selected elementwise, and its value (min pooling's) 1.1-4.2x
    slower than their elementwise maximum, which also fuses with what
    follows: mixed pooling reads the input once for its max, its mean and
    its gate, forward 1.4-3.4x faster than with two `reduce_window`s.
    The value is `reduce_window`'s: NaN where the window holds NaN, `-inf`
    padding under `"same"`. Its derivative (a JVP, transposed for the reverse
    pass) follows the cell that XLA's rule selects: scanning the window in
    row-major order, a cell replaces the one kept so far unless the kept
    one is `>=` it. So a tie goes to the first maximal cell, and a window
    holding NaN to the cell that the scan ends on, as XLA's own gradient
    does. (JAX's own forward-mode derivative of `reduce_window` disagrees
    with its gradient in a window of NaN or of only -inf; this one is the
    gradient's.) Integer inputs keep `keras.ops.max_pool`.
    """
    import jax
    import jax.numpy as jnp
    import keras

    if not jnp.issubdtype(x.dtype, jnp.floating):
        return keras.ops.max_pool(
            x,
            pool_size=window.pool_size,
            strides=window.strides,
            padding=window.padding,
            data_format=window.data_format,
        )

    def kept(cells):
        """The scan's value, and per later cell whether the kept one
        stays."""
        value = cells[0]
        holds_nan = jnp.isnan(value)
        stays = []
        for cell in cells[1:]:
            stay = value >= cell
            value = jnp.where(stay, value, cell)
            holds_nan = holds_nan | jnp.isnan(cell)
            stays.append(stay)
        return jnp.where(holds_nan, jnp.nan, value), stays

    @jax.custom_jvp
    def pool(x):
        return kept(window_slices(window, x, -jnp.inf))[0]

    @pool.defjvp
    def tangent(primals, tangents):
        (x,), (dx,) = primals, tangents
        outputs, stays = kept(window_slices(window, x, -jnp.inf))
        changes = window_slices(window, dx, 0.0)
        change = changes[0]
        for stay, other in zip(stays, changes[1:], strict=True):
            change = jnp.where(stay, change, other)
        return outputs, change

    return pool(x)


def window_means(window, padded):
    """`Window.window_means` as the mean of the window's strided slices.

    `keras.ops.average_pool` (`lax.reduce_window`) on XLA's CPU backend:
    its value fuses with nothing around it, where the slices fuse with
    those of a max pooling or a power beside them (see `max_pool`; LP
    pooling's forward 1.2-7x faster), and its gradient where windows
    overlap (3x3, stride 2) took 10x as long as the slices'. Under
    differentiation the value is still `reduce_window`'s: LP pooling
    trained 1.12-1.15x slower at 128x64x64x32 with the slices' value
    there (mixed pooling alike either way). The derivative, linear, is
    the mean of the tangent's slices, which JAX transposes for the
    reverse pass. The two values differ by rounding (the sum's order).
    """
    import jax
    import jax.numpy as jnp
    import keras

    def pooled(x):
        return keras.ops.average_pool(
            x,
            pool_size=window.pool_size,
            strides=window.strides,
            padding="valid",
            data_format=window.data_format,
        )

    if not jnp.issubdtype(padded.dtype, jnp.floating):
        return pooled(padded)

    def sliced(x):
        cells = window_slices(window, x, 0.0, padded=True)
        return functools.reduce(jnp.add, cells) / len(cells)

    @jax.custom_jvp
    def means(x):
        return sliced(x)

    @means.defjvp
    def tangent(primals, tangents):
        (x,), (dx,) = primals, tangents
        return pooled(x), sliced(dx)

    return means(padded)


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


def sliced_stochastic_expectation(window, activations, rescale_above, safe):
    """`sum a**2 / sum a` over each window of `activations` (`a >= 0`),
    over strided slices, each window scaled by its own maximum `m`:
    `m * sum r**2 / sum r` with `r = a / m` in [0, 1] (large `m`: `2**-8
    m`, `r` up to 2**8), so no square
    overflows and no pass over the whole input finds a channel's maximum
    first (the `keras.ops` form's rescaling, `safe`, is not needed). A
    window of zeros gives 0, one holding `+inf` gives `+inf`, NaN
    propagates.

    The derivative is written out, `dE/da_i = (2 a_i - E) / sum a` per
    window (0 for a window of zeros), as a JVP that JAX transposes for
    the gradient; autodiff's, through the scaled ratios, took 1.5x as
    long in training."""
    import jax
    import jax.numpy as jnp

    del rescale_above, safe

    def parts(x):
        cells = window_slices(window, x, 0.0)
        peak = functools.reduce(jnp.maximum, cells)
        # One reciprocal per window, then products: XLA's CPU code divides
        # far slower than it multiplies (forward 1.2-1.5x the unsafe
        # formula with a division per cell, 0.3-0.7x with this). A
        # subnormal maximum would have an infinite reciprocal: such a
        # window is not scaled, and its squares underflow to the 0 the
        # `keras.ops` form gives it. A maximum above 2**126 would have a
        # subnormal one, which XLA flushes to 0: large maxima scale by
        # 2**-8 of themselves (ratios up to 2**8, squares 2**16).
        scale = jnp.where(peak >= jnp.finfo(x.dtype).tiny, peak, 1.0)
        scale = jnp.where(peak > 2.0**64, scale * 2.0**-8, scale)
        inverse = 1.0 / scale
        ratios = [cell * inverse for cell in cells]
        total = functools.reduce(jnp.add, ratios)
        squares = functools.reduce(jnp.add, [r * r for r in ratios])
        safe_total = jnp.where(total > 0, total, 1.0)
        # The ratio first: `scale * squares` can overflow.
        outputs = scale * (squares / safe_total)
        outputs = jnp.where(peak == jnp.inf, jnp.inf, outputs)
        return outputs, (ratios, inverse, safe_total)

    @jax.custom_jvp
    def expectation(x):
        return parts(x)[0]

    @expectation.defjvp
    def tangent(primals, tangents):
        (x,), (dx,) = primals, tangents
        outputs, (ratios, inverse, safe_total) = parts(x)
        # dE/da_i = (2 r_i - E / m) / sum r, with r = a / m: linear in
        # `dx`, so JAX transposes it for the reverse pass.
        mean = outputs * inverse
        changes = window_slices(window, dx, 0.0)
        change = functools.reduce(
            jnp.add,
            [(2 * r - mean) * d for r, d in zip(ratios, changes, strict=True)],
        )
        return outputs, change / safe_total

    return expectation(activations)
