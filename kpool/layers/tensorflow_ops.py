"""Fused TensorFlow CPU kernels for the layers, compiled on first use.

On TensorFlow outside XLA (Keras's default on a CPU) a layer built from
built-in ops pays a pass over memory per op, which keeps min, mixed and
stochastic pooling at 1.6x to 14x `MaxPooling2D` (`tensorflow_kernels`
gets that far with built-in ops). `tensorflow_ops.cc` computes each layer's
forward pass in one pass over its windows and its gradient in one more.

The library is compiled against the installed TensorFlow the first time a
layer needs it (about 25 s on a 2-core CPU; a C++17 compiler, `$CXX` or
`c++`; `-march=native` on x86-64) and cached under `$KPOOL_CACHE_DIR`
(default `~/.cache/kpool`), keyed by the source, TensorFlow's version, the
compiler flags and the CPU's features, so each later process only loads
it. Where it cannot be built or loaded (no compiler, a TensorFlow without
headers), a warning says why and the layers use `tensorflow_kernels`, with
the same values. The kernels run on the CPU: with a GPU visible they are
not used, nor for windows of more than `MAX_WINDOW` cells.

`KPOOL_TF_OPS` chooses: `auto` (default) as above, `0` never use them, `1`
use them and raise if they cannot be built (`tests/run_all.sh` sets it
where they build, so the fused path is what the TensorFlow tests check).
"""

import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings

from kpool.layers import tensorflow_kernels

SOURCE = os.path.join(os.path.dirname(__file__), "tensorflow_ops.cc")
_CHOICES = ("auto", "0", "1")
_library = None
_target = None  # `build_target()`.
_failure = None


def choice():
    """`KPOOL_TF_OPS`, checked."""
    value = os.environ.get("KPOOL_TF_OPS", "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(
            f"`KPOOL_TF_OPS` must be one of {list(_CHOICES)}. "
            f"Received: KPOOL_TF_OPS={value!r}"
        )
    return value


# The kernels store a window position in a byte.
MAX_WINDOW = 255


def applies(layer=None):
    """Whether a layer should call the fused kernels here.

    TensorFlow outside XLA, no GPU visible, a window of at most
    `MAX_WINDOW` cells (`layer`'s, if given), and the library built and
    loaded (building it the first time).
    """
    if not tensorflow_kernels.applies() or choice() == "0":
        return False
    if layer is not None and math.prod(layer.pool_size) > MAX_WINDOW:
        return False
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return False
    return library() is not None


def library():
    """The loaded op library, or `None` where it cannot be built."""
    global _library, _failure
    if _library is not None or _failure is not None:
        return _library
    try:
        _library = _load()
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _failure = error
        if choice() == "1":
            raise RuntimeError(
                f"KPOOL_TF_OPS=1 but kpool's TensorFlow kernels cannot be "
                f"built: {error}"
            ) from error
        warnings.warn(
            f"kpool: the fused TensorFlow CPU kernels cannot be built, so "
            f"the pooling layers use built-in TensorFlow ops (same values, "
            f"slower): {error}",
            RuntimeWarning,
            stacklevel=3,
        )
    return _library


def cache_dir():
    default = os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "kpool",
    )
    return os.environ.get("KPOOL_CACHE_DIR") or default


def _compile_command(output):
    import tensorflow as tf

    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH")
    return [
        compiler,
        "-shared",
        "-fPIC",
        "-O3",
        "-w",
        *_architecture_flags(),
        SOURCE,
        "-o",
        output,
        *tf.sysconfig.get_compile_flags(),
        *tf.sysconfig.get_link_flags(),
    ]


def _architecture_flags():
    """Code for this machine's CPU on x86-64, whose baseline (SSE2) has
    4-float vectors and on which GCC does not vectorize the kernels'
    remaining compare-and-select loops. The cache key holds the CPU's
    feature flags, so a shared cache never hands the library to a CPU
    without them. `KPOOL_TF_OPS_BASELINE=1` builds for the baseline instead
    (slower; the tests use it to check the code paths without AVX2)."""
    return ["-march=native"] if _requested_target() == "native" else []


def _requested_target():
    """`build_target()`'s value for a library built now."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "default"
    if os.environ.get("KPOOL_TF_OPS_BASELINE", "") == "1":
        return "x86-64 baseline"
    return "native"


def build_target():
    """What the loaded library was compiled for: `"native"` (this CPU),
    `"x86-64 baseline"` (`KPOOL_TF_OPS_BASELINE=1`) or `"default"` (the
    compiler's default, off x86-64); `None` before a library is loaded."""
    return _target


def _cpu_features():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


def _load():
    import tensorflow as tf

    global _target
    library = tf.load_op_library(build(cache_dir()))
    _target = _requested_target()
    return library


def build(directory):
    """Compiles the library into `directory`, unless it is there; its path.

    The file name holds a key of the source, TensorFlow's version and the
    compiler flags, so a change to any of them builds a new one.
    """
    import tensorflow as tf

    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(source)
    for part in (
        tf.__version__,
        tf.sysconfig.get_include(),
        " ".join(_compile_command("out.so")),
        platform.machine(),
        _cpu_features(),
    ):
        key.update(part.encode())
    directory = os.path.join(directory, "tensorflow_ops")
    path = os.path.join(directory, f"kpool_ops_{key.hexdigest()[:16]}.so")
    if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        print(
            f"kpool: compiling the fused TensorFlow CPU kernels into {path} "
            f"(once per TensorFlow version)",
            file=sys.stderr,
        )
        # Built under a temporary name and renamed: a process that finds
        # the file finds it whole, and concurrent builds only repeat work.
        handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(handle)
        try:
            result = subprocess.run(
                _compile_command(partial), capture_output=True, text=True
            )
            if result.returncode:
                raise RuntimeError(
                    "the compiler failed:\n" + result.stderr[-2000:]
                )
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    return path


def _window_attrs(layer):
    """The ops' window attributes for `layer`, as 3D windows."""
    lead = 3 - layer.num_spatial_dims
    return dict(
        ksize=[1] * lead + list(layer.pool_size),
        strides=[1] * lead + list(layer.strides),
        padding=layer.padding.upper(),
        data_format="NDHWC" if layer._channels_last else "NCDHW",
    )


def _to_5d(layer, tensor):
    """Adds leading spatial dims of size 1 up to three."""
    import tensorflow as tf

    axis = 1 if layer._channels_last else 2
    for _ in range(3 - layer.num_spatial_dims):
        tensor = tf.expand_dims(tensor, axis)
    return tensor


def _from_5d(layer, tensor):
    import tensorflow as tf

    lead = 3 - layer.num_spatial_dims
    if not lead:
        return tensor
    first = 1 if layer._channels_last else 2
    return tf.squeeze(tensor, axis=list(range(first, first + lead)))


def _broadcast_5d(layer, tensor):
    """A tensor that broadcasts against the output, as a 5D one that
    broadcasts against the kernels' 5D output."""
    import tensorflow as tf

    rank = layer.num_spatial_dims + 2
    missing = rank - len(tensor.shape)
    if missing:
        tensor = tf.reshape(tensor, [1] * missing + list(tensor.shape))
    return _to_5d(layer, tensor)


def min_pool(layer, inputs):
    """Min pooling; the gradient goes to each window's minimum."""
    return _indexed_pool(
        layer, inputs, lambda x5, attrs: library().kpool_min_pool(x5, **attrs)
    )


def _indexed_pool(layer, inputs, pool):
    """A pooling whose output is one cell of each window, and its gradient.

    `pool(x5, attrs)` returns the 5D output and each window's `index` (the
    position of the cell it output); the gradient sends the upstream
    gradient there (`KpoolScatterGrad`).
    """
    import tensorflow as tf

    attrs = _window_attrs(layer)

    @tf.custom_gradient
    def forward(x):
        x5 = _to_5d(layer, x)
        y, index = pool(x5, attrs)

        def grad(upstream):
            dx = library().kpool_scatter_grad(
                x5, index, _to_5d(layer, upstream), **attrs
            )
            return _from_5d(layer, dx)

        return _from_5d(layer, y), grad

    return forward(inputs)


def mixed_pool(layer, inputs, mixing=None, gate_kernel=None):
    """Mixed pooling's `avg + a * (max - avg)` in one pass over the windows.

    `a` is `mixing` (broadcast against the output), or, with `gate_kernel`
    (`(window,)` or `(window, channels)`), `sigmoid(gate_kernel . window)`,
    computed by the kernel in the same pass, or, with neither (the random
    mode in training), 1 (exactly `max`) where a uniform draw is below
    `layer.alpha` and 0 (exactly `avg`) elsewhere, one draw per unit of
    `layer.granularity`: the kernel draws the numbers
    `MixedPooling._draw_max_choices` would, from the same seed. The gradient
    takes one more pass: max pooling's of `a * upstream` plus average
    pooling's of `(1 - a) * upstream` (plus, gated, the gate's). `mixing`
    gets `sum(upstream * (max - avg))` over the axes it is broadcast along.
    The forward kernel saves each window's maximum position and `max - avg`
    for that pass, except gated: the gradient reads the input anyway (for
    the gate kernel's gradient), so it computes them and the gate again.
    """
    import tensorflow as tf

    window_attrs = _window_attrs(layer)
    attrs = dict(window_attrs)
    gated = gate_kernel is not None
    random = not gated and mixing is None
    if random:
        key, counter = philox_key_counter(layer.seed_generator)
        attrs.update(
            random=True, alpha=layer.alpha, granularity=layer.granularity
        )
    else:
        key = tf.zeros([1], tf.uint64)
        counter = tf.zeros([2], tf.uint64)
    if gated:
        second = gate_kernel
    else:
        second = tf.convert_to_tensor(0.0 if random else mixing)

    @tf.custom_gradient
    def mix(x, second):
        x5 = _to_5d(layer, x)
        weight = tf.zeros([1] * 5, x.dtype)
        kernel = tf.zeros([0, 1], x.dtype)
        if gated:
            kernel = tf.reshape(second, [math.prod(layer.pool_size), -1])
        elif not random:
            weight = _broadcast_5d(layer, tf.cast(second, x.dtype))
        y, index, difference, choices = library().kpool_mixed_pool(
            x5, weight, kernel, key, counter, gated=gated, **attrs
        )

        def grad(upstream):
            weight_grad = not (gated or random)
            dx, product, kernel_grad = library().kpool_mixed_pool_grad(
                x5,
                index,
                _to_5d(layer, upstream),
                difference,
                weight,
                choices,
                kernel,
                gated=gated,
                weight_grad=weight_grad,
                Tgrad=tf.float64 if x.dtype == tf.float64 else tf.float32,
                **window_attrs,
            )
            dx = _from_5d(layer, dx)
            if gated:
                kernel_grad = tf.reduce_sum(kernel_grad, axis=0)
                return dx, tf.cast(
                    tf.reshape(kernel_grad, tf.shape(second)), second.dtype
                )
            if random:
                return dx, tf.zeros_like(second)
            return dx, tensorflow_kernels.sum_to_shape(
                _from_5d(layer, product), second
            )

        return _from_5d(layer, y), grad

    return mix(inputs, second)


def philox_key_counter(seed_generator):
    """The Philox key and counter of `tensorflow_kernels.uniform`'s next
    draw from `seed_generator` (advancing it, as a draw does)."""
    from tensorflow.python.ops import random_ops_util

    seed = tensorflow_kernels._int32_seed(seed_generator.next())
    key, counter, _ = random_ops_util.get_key_counter_alg(seed, "philox")
    return key, counter


def stochastic_sample(layer, inputs, uniform):
    """Stochastic pooling's training output; the gradient goes to the
    sampled element (none from a window with no positive input).

    `uniform` is `StochasticPooling._draw_uniform`'s: one draw per output
    cell, with a window axis of length 1.
    """
    import tensorflow as tf

    uniform = tf.squeeze(uniform, layer._window_axis % len(uniform.shape))
    return _indexed_pool(
        layer,
        inputs,
        lambda x5, attrs: library().kpool_stochastic_pool(
            x5, _to_5d(layer, uniform), **attrs
        ),
    )


def stochastic_expectation(layer, inputs):
    """Stochastic pooling's inference output, `sum a**2 / sum a` over each
    window of `a = relu(inputs)` (0 where the sum is 0).

    `d out / d a_i = (2 a_i - out) / sum a`, masked by ReLU's gradient.
    """
    import tensorflow as tf

    attrs = _window_attrs(layer)

    @tf.custom_gradient
    def expectation(x):
        x5 = _to_5d(layer, x)

        def grad(upstream):
            dx = library().kpool_stochastic_expectation_grad(
                x5, _to_5d(layer, upstream), **attrs
            )
            return _from_5d(layer, dx)

        y = library().kpool_stochastic_expectation(x5, **attrs)
        return _from_5d(layer, y), grad

    return expectation(inputs)
