import math
import numbers

from keras import ops

from kpool import backend
from kpool.ops.window_cells import window_responses
from kpool.ops.windows import Window, as_tensor, integers_as_floats

GRANULARITIES = ("region", "channel", "layer")


def mixed_pool(
    inputs,
    pool_size,
    strides=None,
    padding="valid",
    data_format=None,
    alpha=0.5,
    gate_kernel=None,
    granularity="region",
    training=False,
    seed=None,
):
    """Mixed pooling: `a * max + (1 - a) * avg` of each window.

    `max` and `avg` are the maximum and the mean of the window's cells
    inside the input, as `keras.ops.max_pool` and `keras.ops.average_pool`
    compute them on TensorFlow and JAX: under `"same"` padded cells never
    count. `a` is one of:

    - `alpha`, a float in [0, 1] or a tensor broadcastable per channel
      (shape `()` or `(channels,)`): the learned mixing of Lee, Gallagher
      and Tu (2016) when `alpha` is a trainable weight;
    - `sigmoid(w . region)` when `gate_kernel` `w` is given (the gated
      pooling of Lee et al.): `w` has shape `(prod(pool_size),)` or
      `(prod(pool_size), channels)`, the window's cells are flattened in
      row-major order, and under `"same"` the gate sees padded cells as
      zeros;
    - with `training=True` (the random mixed pooling of Yu et al., 2014),
      1 with probability `alpha` (a float) and 0 otherwise, drawn for each
      unit of `granularity`, all per example: `"region"` for each output
      cell and channel, `"channel"` for each channel, `"layer"` once for
      the whole example. The output is then exactly `max` or exactly
      `avg`, and `a` gets no gradient. With `training=False` the same
      arguments give the expectation, `alpha * max + (1 - alpha) * avg`.

    Where `max` equals `avg` (a constant window, or `+inf` in both) the
    output is `max`: a window holding `+inf` gives `+inf`, as both built-in
    poolings do, and not `inf - inf`. NaN propagates.

    References:
        Yu, Wang, Chen and Wei, "Mixed Pooling for Convolutional Neural
        Networks", RSKT 2014.
        Lee, Gallagher and Tu, "Generalizing Pooling Functions in
        Convolutional Neural Networks: Mixed, Gated, and Tree", AISTATS 2016.

    Args:
        inputs: tensor of rank 3, 4 or 5, laid out as `data_format` says.
        pool_size: int or tuple of ints, one per spatial dim.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        alpha: float in [0, 1], or a tensor of shape `()` or `(channels,)`.
            The mixing proportion of max pooling (with `training=True`, its
            probability). Unused with a `gate_kernel`.
        gate_kernel: `None`, or the gate's weights (see above).
        granularity: `"region"`, `"channel"` or `"layer"`. The unit of a
            random draw (`training=True` only).
        training: bool. Draw random choices (needs a float `alpha` and no
            `gate_kernel`).
        seed: int, `keras.random.SeedGenerator` or `None`, for the draws.
            Inside a compiled function, pass a `SeedGenerator`: an int seed
            is frozen at trace time.

    Returns:
        The pooled tensor, of the dtype of `inputs`.

    Example:

    >>> x = np.array([1.0, 3.0, 2.0, 2.0]).reshape(1, 4, 1)
    >>> kpool.ops.mixed_pool(x, 2, alpha=0.25)  # [[[2.25], [2.]]]
    """
    inputs = as_tensor(inputs)
    window = Window.of(
        inputs, pool_size, strides, padding, data_format, "mixed_pool"
    )
    window.check_fits(inputs.shape, "mixed_pool")
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"`granularity` must be one of {list(GRANULARITIES)}. "
            f"Received: granularity={granularity!r}"
        )
    number = isinstance(alpha, numbers.Real)
    if number and not 0 <= alpha <= 1:
        raise ValueError(
            f"`alpha` must be a float in [0, 1]. Received: alpha={alpha!r}"
        )
    choose = bool(training)
    if choose and (gate_kernel is not None or not number):
        raise ValueError(
            "`training=True` draws random choices of max or average "
            "pooling, with probability `alpha`: it needs a float `alpha` "
            "and no `gate_kernel`. Received: "
            f"alpha={alpha!r}, gate_kernel={gate_kernel!r}"
        )
    dtype = inputs.dtype
    x = integers_as_floats(inputs)
    padded = window.zero_pad(x)
    if gate_kernel is not None:
        mixing = ops.sigmoid(gate_logits(window, padded, gate_kernel))
    elif choose:
        mixing = draw_max_choices(window, x, alpha, granularity, seed)
    elif number:
        return ops.cast(_mix_constant(window, x, padded, float(alpha)), dtype)
    else:
        mixing = window.broadcast_channels(ops.cast(alpha, x.dtype))
    max_pooled = window.max_pool(x)
    avg_pooled = window.average_pool(x, padded)
    if choose:
        return ops.cast(ops.where(mixing, max_pooled, avg_pooled), dtype)
    return ops.cast(mix(max_pooled, avg_pooled, mixing), dtype)


def _mix_constant(window, inputs, padded, alpha):
    """`alpha * max + (1 - alpha) * avg` for a number `alpha`: the one
    pooling alone at 0 and 1, else three elementwise ops, the formula's
    own (where the two poolings are equal infinities, so is the sum)."""
    if alpha == 1:
        return window.max_pool(inputs)
    if alpha == 0:
        return window.average_pool(inputs, padded)
    max_pooled = window.max_pool(inputs)
    avg_pooled = window.average_pool(inputs, padded)
    return alpha * max_pooled + (1 - alpha) * avg_pooled


def mix(max_pooled, avg_pooled, mixing):
    """`avg + mixing * (max - avg)`, and `max` where the two are equal."""
    mixed = avg_pooled + mixing * (max_pooled - avg_pooled)
    return ops.where(max_pooled == avg_pooled, max_pooled, mixed)


def draw_max_choices(window, inputs, alpha, granularity, seed):
    """True where a unit takes max pooling, broadcastable to the output."""
    output_shape = window.output_shape(ops.shape(inputs))
    rank = len(output_shape)
    kept_axes = {0}
    if granularity == "region":
        kept_axes = set(range(rank))
    elif granularity == "channel":
        kept_axes.add(window.channel_axis % rank)
    shape = [
        n if axis in kept_axes else 1 for axis, n in enumerate(output_shape)
    ]
    # Drawn in float32 whatever the compute dtype: a bfloat16 uniform has 8
    # bits, too coarse to compare with an arbitrary `alpha`.
    return backend.uniform(shape, "float32", seed) < alpha


def gate_logits(window, padded, gate_kernel):
    """`w . region` for each window of the zero-padded input and channel."""
    kernel = ops.cast(gate_kernel, padded.dtype)
    size = math.prod(window.pool_size)
    channels = padded.shape[window.channel_axis]
    if kernel.shape[0] != size or len(kernel.shape) not in (1, 2):
        raise ValueError(
            "`gate_kernel` must have shape (prod(pool_size),) or "
            f"(prod(pool_size), channels) = ({size},) or ({size}, "
            f"{channels}). Received: gate_kernel.shape={kernel.shape}"
        )
    # One filter: (K, 1), or (K, 1, channels).
    return window_responses(window, padded, ops.expand_dims(kernel, 1))[0]
