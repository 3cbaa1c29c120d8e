"""Backend-specific pieces of kpool's ops, chosen in one place.

Every op in `kpool.ops` is written in `keras.ops`, which is correct on every
backend on its own. Where one backend runs a piece of an op much faster
another way, that way lives in the backend's module here
(`kpool/backend/<name>/`), and `fast_path` is the one place that picks it:
ops ask for a piece by name and fall back to `keras.ops` when they get
`None`. Nothing here imports a backend at module level.

Every fast path is made of the framework's own ops, so a model exported
with `model.export()` serves without kpool.
"""

import keras

# SoftPool with one shift per example and channel (the TensorFlow and torch
# fast paths) is exact for a window whose exponentials, shifted by its
# channel's maximum, average at least this: its largest is at least this,
# so the ones that underflow (below 2**-126) weigh under 2**-26 of it,
# below float32's rounding.
SHARED_PEAK_FLOOR = 2.0**-100


def _module():
    backend = keras.config.backend()
    if backend == "tensorflow":
        from kpool.backend import tensorflow

        return tensorflow
    if backend == "torch":
        from kpool.backend import torch

        return torch
    if backend == "jax":
        from kpool.backend import jax

        return jax
    return None


def fast_path(name, inputs=None, window=None):
    """The current backend's implementation of the piece `name`, or `None`.

    `inputs` is the tensor it would run on: symbolic tensors (a functional
    model being built) always take the `keras.ops` path. `window` is the
    op's `kpool.ops.windows.Window`, where the choice depends on it.
    """
    if isinstance(inputs, keras.KerasTensor):
        return None
    module = _module()
    return None if module is None else module.fast_path(name, window)


def has_float64():
    """Whether float64 tensors are float64 here: JAX makes them float32
    (with a warning) unless `jax_enable_x64` is set."""
    if keras.config.backend() == "jax":
        import jax

        return bool(jax.config.read("jax_enable_x64"))
    return True


def values_known(tensor):
    """Whether `tensor`'s values can be read now: not while a model is
    built or a function traced (`jax.jit`, `tf.function`, `torch.compile`,
    torch's tracing for ONNX export)."""
    if isinstance(tensor, keras.KerasTensor):
        return False
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return not isinstance(tensor, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.is_symbolic_tensor(tensor)
    if backend == "torch":
        from kpool.backend import torch

        return torch.values_known()
    return True


def uniform(shape, dtype, seed):
    """`keras.random.uniform(shape, dtype=dtype, seed=seed)`, the same
    numbers, drawn the fastest way the backend has."""
    fast = fast_path("uniform")
    if fast is not None:
        return fast(shape, dtype, seed)
    return keras.random.uniform(shape, dtype=dtype, seed=seed)


def clamp_min(x, low):
    """`keras.ops.maximum(x, low)` for a number `low`, by the backend's
    cheapest form: torch's `clamp`, whose gradient is one comparison (its
    `maximum` also splits ties); `maximum` elsewhere (TensorFlow's
    `clip_by_value` builds more of a gradient)."""
    fast = fast_path("clamp_min", x)
    if fast is not None:
        return fast(x, low)
    return keras.ops.maximum(x, low)


def running_sums(window, windows):
    """Running sums along the window axis of `Window.windows`'s result."""
    fast = fast_path("running_sums")
    if fast is not None:
        return fast(window, windows)
    return keras.ops.cumsum(windows, axis=window.window_axis)
