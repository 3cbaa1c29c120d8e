import math
import numbers

import keras
from keras import ops

from kpool import backend
from kpool.ops.windows import Window, as_tensor, float_compute_dtype


def check_norm_type(norm_type):
    """Returns `norm_type` as a float, or raises unless it is >= 1."""
    if (
        isinstance(norm_type, bool)
        or not isinstance(norm_type, numbers.Real)
        or not math.isfinite(norm_type)
        or norm_type < 1
    ):
        raise ValueError(
            "`norm_type` must be a finite number >= 1. "
            f"Received: norm_type={norm_type!r}"
        )
    return float(norm_type)


def lp_pool(
    inputs,
    norm_type,
    pool_size,
    strides=None,
    padding="valid",
    data_format=None,
):
    """LP pooling (Sermanet et al., 2012): the p-norm of each window.

    For each channel and window, `(sum_i |x_i|**p)**(1 / p)` with
    `p = norm_type >= 1`: `p=1` sums absolute values, `p=2` is L2 pooling,
    and large `p` tends to max pooling of `|x|`.

    Negative inputs count by their magnitude, so the result is a norm,
    defined for every input. `torch.nn.functional.lp_pool2d` sums `x**p`
    instead: the two agree wherever the inputs are non-negative or `p` is an
    even integer; for negative inputs torch gives NaN (fractional `p`, or an
    odd `p` whose window sum is negative) or the signed sum (`p=1`). On
    the torch backend kpool runs torch's own op where the two agree: on `x`
    for an even `p`, on `|x|` otherwise.

    Under `"same"` the input is padded as `keras.ops.max_pool` pads it, with
    zeros, which add nothing to a sum: a border window's norm is that of its
    cells inside the input, not rescaled. The output size follows
    `keras.ops.max_pool`: `floor((n - pool_size) / strides) + 1` cells
    along a spatial dim of size `n` under `"valid"`, `ceil(n / strides)`
    under `"same"`.

    The gradient of a window whose cells are all 0 is 0 (not NaN). `|x|**p`
    must fit the compute dtype; float16 and bfloat16 inputs are computed in
    float32 and cast back.

    Reference: Sermanet, Chintala and LeCun, "Convolutional Neural Networks
    Applied to House Numbers Digit Classification", ICPR 2012.

    Args:
        inputs: tensor of rank 3, 4 or 5, laid out as `data_format` says.
        norm_type: float >= 1, the `p` of the norm.
        pool_size: int or tuple of ints, one per spatial dim.
        strides: int, tuple of ints, or `None` (meaning `pool_size`).
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.

    Returns:
        The pooled tensor, of the dtype of `inputs`.

    Example:

    >>> x = np.array([3.0, -4.0, 1.0, 0.0]).reshape(1, 4, 1)
    >>> kpool.ops.lp_pool(x, 2, 2)  # [[[5.], [1.]]]
    """
    norm_type = check_norm_type(norm_type)
    inputs = as_tensor(inputs)
    window = Window.of(
        inputs, pool_size, strides, padding, data_format, "lp_pool"
    )
    window.check_fits(inputs.shape, "lp_pool")
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    x = ops.cast(inputs, float_compute_dtype(dtype))
    fast = backend.fast_path("lp_pool", inputs, window)
    if fast is not None:
        return ops.cast(fast(window, x, norm_type), dtype)
    # An even p needs no absolute value, a pass over the input and its
    # gradient; a square and a square root are cheaper than powers.
    if norm_type == 2:
        powers = ops.square(x)
    elif norm_type == 1:
        powers = ops.abs(x)
    else:
        powers = ops.power(ops.abs(x), norm_type)
    sums = window.window_means(window.zero_pad(powers)) * math.prod(
        window.pool_size
    )
    positive_root = backend.fast_path("positive_root", inputs)
    if norm_type != 1 and positive_root is not None:
        sums = positive_root(sums, norm_type)
    elif norm_type != 1:
        # The root's gradient is infinite at 0: keep it off the zero sums
        # (and let NaN through, as average pooling does).
        nonzero = ops.not_equal(sums, 0)
        safe = ops.where(nonzero, sums, 1)
        root = (
            ops.sqrt(safe) if norm_type == 2 else ops.power(safe, 1 / norm_type)
        )
        sums = ops.where(nonzero, root, 0)
    return ops.cast(sums, dtype)
