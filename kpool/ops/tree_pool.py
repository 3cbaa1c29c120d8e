import math

from keras import ops

from kpool.ops.window_cells import window_responses
from kpool.ops.windows import Window, as_tensor, float_compute_dtype


def tree_pool(
    inputs,
    pool_size,
    strides=None,
    padding="valid",
    data_format=None,
    leaf_kernels=None,
    gate_kernels=None,
):
    """Tree pooling (Lee, Gallagher and Tu, 2016): gated learned filters.

    For each window, flattened in row-major order to a vector `x` of
    `K = prod(pool_size)` cells (under `"same"` padded cells read as zeros),
    and each channel, the output is `f_1(x)` of a complete binary tree with
    `L` leaves, its nodes numbered as a heap (root 1, the children of node
    `m` are `2m` and `2m + 1`, the leaves are `L, ..., 2L - 1`):

        f_m(x) = v_{m - L} . x                                if m >= L
        f_m(x) = g_m f_{2m}(x) + (1 - g_m) f_{2m+1}(x),
                 g_m = sigmoid(w_{m - 1} . x)                 otherwise,

    with `v_i = leaf_kernels[:, i]` the learned pooling filters at the
    leaves and `w_j = gate_kernels[:, j]` the gate of internal node `j + 1`.
    A tree of depth 2 (the paper's) has `L = 2` leaves and one gate:
    `f = s v_0 . x + (1 - s) v_1 . x`, `s = sigmoid(w_0 . x)`. Gradients
    reach `x`, the leaves and the gates. float16 and bfloat16 are computed
    in float32.

    Under `"valid"` the output has `floor((n - pool_size) / strides) + 1`
    cells along a spatial dim of size `n`; under `"same"`,
    `ceil(n / strides)`.

    Reference:
        Lee, Gallagher and Tu, "Generalizing Pooling Functions in
        Convolutional Neural Networks: Mixed, Gated, and Tree",
        AISTATS 2016.

    Args:
        inputs: tensor of rank 3, 4 or 5, laid out as `data_format` says.
            The spatial dims must be known.
        pool_size: int or tuple of ints, one per spatial dim.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        leaf_kernels: tensor `(K, L)` (shared by the channels) or
            `(K, L, channels)` (one tree per channel), `L` a power of 2.
        gate_kernels: tensor `(K, L - 1)` or `(K, L - 1, channels)`, shared
            or per channel as `leaf_kernels`; `None` when `L = 1`.

    Returns:
        The pooled tensor, of the dtype of `inputs`.

    Example:

    >>> x = np.array([1.0, 3.0, 2.0, 2.0]).reshape(1, 4, 1)
    >>> leaves = np.array([[1.0, 0.5], [0.0, 0.5]])  # first cell; the mean
    >>> gates = np.zeros((2, 1))  # sigmoid(0) = 1/2
    >>> kpool.ops.tree_pool(x, 2, leaf_kernels=leaves, gate_kernels=gates)
    >>> # [[[1.5], [2.]]]
    """
    inputs = as_tensor(inputs)
    window = Window.of(
        inputs, pool_size, strides, padding, data_format, "tree_pool"
    )
    window.check_fits(inputs.shape, "tree_pool")
    dtype = inputs.dtype
    x = ops.cast(inputs, float_compute_dtype(dtype))
    channels = x.shape[window.channel_axis]
    leaves, gates = _check_kernels(
        window, leaf_kernels, gate_kernels, channels, x.dtype
    )
    # A Python int: torch's tracer (ONNX export) gives sizes as tensors.
    num_leaves = int(leaves.shape[1])
    if num_leaves == 1:
        return ops.cast(
            window_responses(window, window.zero_pad(x), leaves)[0], dtype
        )
    # A node above two leaves is `v_r . x + g (v_l - v_r) . x`: its
    # leaves' difference is one more filter, not one more pass over the
    # output. Filters: the pairs' differences, their right leaves, then
    # the gates.
    pairs = num_leaves // 2
    kernel = ops.concatenate(
        [leaves[:, 0::2] - leaves[:, 1::2], leaves[:, 1::2], gates], 1
    )
    responses = window_responses(window, window.zero_pad(x), kernel)
    # Heap order: values[m] is f_m, the nodes above the leaves first, then
    # the rest bottom-up.
    values = {}
    for m in range(num_leaves - 1, 0, -1):
        gate = ops.sigmoid(responses[num_leaves + m - 1])
        if m >= pairs:
            # Node m's right leaf is filter m; its pair's difference,
            # filter m - pairs.
            values[m] = responses[m] + gate * responses[m - pairs]
        else:
            left, right = values.pop(2 * m), values.pop(2 * m + 1)
            values[m] = right + gate * (left - right)
    return ops.cast(values[1], dtype)


def _check_kernels(window, leaf_kernels, gate_kernels, channels, dtype):
    cells = math.prod(window.pool_size)
    if leaf_kernels is None:
        raise ValueError(
            "`leaf_kernels` is required: shape (prod(pool_size), leaves) or "
            "(prod(pool_size), leaves, channels). Received: leaf_kernels=None"
        )
    leaves = ops.cast(leaf_kernels, dtype)
    shape = tuple(int(n) for n in leaves.shape)
    num_leaves = shape[1] if len(shape) in (2, 3) else 0
    if (
        len(shape) not in (2, 3)
        or shape[0] != cells
        or num_leaves < 1
        or num_leaves & (num_leaves - 1)
        or (len(shape) == 3 and shape[2] != channels)
    ):
        raise ValueError(
            "`leaf_kernels` must have shape (prod(pool_size), L) or "
            f"(prod(pool_size), L, channels) = ({cells}, L) or ({cells}, L, "
            f"{channels}), with L a power of 2. Received: "
            f"leaf_kernels.shape={shape}"
        )
    if num_leaves == 1 and gate_kernels is None:
        return leaves, None
    expected = (cells, num_leaves - 1, *shape[2:])
    gates = None if gate_kernels is None else ops.cast(gate_kernels, dtype)
    if gates is None or tuple(int(n) for n in gates.shape) != expected:
        raise ValueError(
            f"`gate_kernels` must have shape {expected}: one gate per "
            f"internal node of a tree with {num_leaves} leaves, shared or "
            "per channel as `leaf_kernels`. Received: gate_kernels.shape="
            f"{None if gates is None else tuple(gates.shape)}"
        )
    return leaves, gates
