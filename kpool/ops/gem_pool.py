import numbers

import keras
from keras import ops

from kpool import backend
from kpool.ops.windows import Window, as_tensor, float_compute_dtype


def check_gem_arguments(p, eps):
    """Raises unless `p` is a positive number and `eps` a positive one."""
    for name, value in (("p", p), ("eps", eps)):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not value > 0
            or value == float("inf")
        ):
            raise ValueError(
                f"`{name}` must be a finite number > 0. "
                f"Received: {name}={value!r}"
            )


def global_gem_pool(inputs, p=3.0, eps=1e-6, data_format=None, keepdims=False):
    """Generalized-mean (GeM) pooling over all spatial positions.

    For each channel, `(mean_i max(x_i, eps)**p)**(1 / p)` over every
    spatial position (Radenovic, Tolias and Chum, 2018). `p=1` is average
    pooling of the clamped input and `p -> inf` tends to max pooling.

    The clamp at `eps > 0` keeps the powers and the root defined, and is
    what the paper's code does: GeM follows a ReLU, so an input below `eps`
    (zero or negative) counts as `eps`, and its gradient is 0. The gradient
    reaches `p` as well as the inputs. float16 and bfloat16 inputs are
    computed in float32 and cast back.

    Reference: Radenovic, Tolias and Chum, "Fine-tuning CNN Image Retrieval
    with No Human Annotation", TPAMI 2018.

    Args:
        inputs: tensor of rank 3, 4 or 5, laid out as `data_format` says.
        p: float > 0, or a tensor of shape `()` or `(channels,)`: the
            exponent (a trainable weight in `GlobalGeMPooling2D`).
        eps: float > 0. The clamp.
        data_format: `"channels_last"`, `"channels_first"`, or `None` for
            `keras.config.image_data_format()`.
        keepdims: bool. Keep the spatial dims, with length 1.

    Returns:
        `(batch, channels)`, or with `keepdims` the spatial dims as 1s, of
        the dtype of `inputs`.

    Example:

    >>> x = np.array([1.0, 2.0, -5.0, 3.0]).reshape(1, 4, 1)
    >>> kpool.ops.global_gem_pool(x, p=1.0)  # [[1.5]]: -5 counts as 1e-6
    """
    given_p = p
    if isinstance(p, numbers.Number):
        check_gem_arguments(p, eps)
    else:
        check_gem_arguments(1.0, eps)
    inputs = as_tensor(inputs)
    window = Window.of(inputs, 1, 1, "valid", data_format, "global_gem_pool")
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    compute_dtype = float_compute_dtype(dtype)
    p = ops.cast(p, compute_dtype)
    inner_p = outer_p = p
    if len(p.shape):
        inner_p = window.broadcast_channels(p)
        if keepdims:
            outer_p = inner_p
    x = backend.clamp_min(ops.cast(inputs, compute_dtype), eps)
    if isinstance(given_p, numbers.Number):
        # A fixed exponent: the backend's scalar power, where it has one.
        fast = backend.fast_path("power_mean", inputs)
        if fast is not None:
            means = fast(x, float(given_p), window.spatial_axes(), keepdims)
            return ops.cast(means, dtype)
    # No squeeze: torch's ONNX export squeezes one axis at a time only.
    means = ops.mean(
        ops.power(x, inner_p), axis=window.spatial_axes(), keepdims=keepdims
    )
    return ops.cast(ops.power(means, 1 / outer_p), dtype)
