"""The fused TensorFlow kernels against the layers' other paths.

With the kernels the layers take `tensorflow_ops`; without them, the
hand-written gradients of `tensorflow_kernels` (themselves checked against
the `keras.ops` path in `test_tensorflow_kernels`). These run each layer
both ways on every window case, with the same random draws, and compare the
outputs and the gradients with respect to the input and every weight. The
other layer tests check the fused path against NumPy references, since it
is what the layers take on TensorFlow wherever the kernels build
(`tests/run_all.sh` then requires them: `KPOOL_TF_OPS=1`).
"""

import os
import platform
import subprocess
import sys

import keras
import numpy as np
import pytest

from kpool import layers

from .cases import TILED_SHAPES, input_shape, window_args
from .test_tensorflow_kernels import ALL_CASES, applies_by_mode

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow-only kernels",
)

CLASSES = {
    "min": {
        1: layers.MinPooling1D,
        2: layers.MinPooling2D,
        3: layers.MinPooling3D,
    },
    "mixed": {
        1: layers.MixedPooling1D,
        2: layers.MixedPooling2D,
        3: layers.MixedPooling3D,
    },
    "stochastic": {
        1: layers.StochasticPooling1D,
        2: layers.StochasticPooling2D,
        3: layers.StochasticPooling3D,
    },
}
# (family, layer arguments, training)
VARIANTS = {
    "min": ("min", {}, False),
    "random-region": ("mixed", dict(mode="random", alpha=0.3), True),
    "random-channel": (
        "mixed",
        dict(mode="random", granularity="channel"),
        True,
    ),
    "random-layer": ("mixed", dict(mode="random", granularity="layer"), True),
    "random-inference": ("mixed", dict(mode="random", alpha=0.3), False),
    "learned-layer": ("mixed", dict(mode="learned", alpha=0.3), True),
    "learned-channel": (
        "mixed",
        dict(mode="learned", granularity="channel"),
        True,
    ),
    "gated-layer": ("mixed", dict(mode="gated"), True),
    "gated-channel": ("mixed", dict(mode="gated", granularity="channel"), True),
    "stochastic-training": ("stochastic", {}, True),
    "stochastic-inference": ("stochastic", {}, False),
}


@pytest.fixture(autouse=True)
def fused_kernels():
    from kpool.layers import tensorflow_ops

    if tensorflow_ops.library() is None:
        pytest.skip("kpool's TensorFlow kernels cannot be built here")


def run_layer(variant, rank, args, x, upstream, fused, monkeypatch):
    """Outputs and gradients (input, then weights) of a fresh seeded layer."""
    import tensorflow as tf

    from kpool.layers import tensorflow_ops

    family, kwargs, training = VARIANTS[variant]
    if family != "min":
        kwargs = {**kwargs, "seed": 3}
    layer = CLASSES[family][rank](**args, **kwargs)
    layer.build(x.shape)
    weights_rng = np.random.default_rng(7)
    for weight in layer.trainable_weights:
        weight.assign(weights_rng.uniform(0.1, 0.9, weight.shape))
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(tensorflow_ops, "applies", lambda layer=None: False)
        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, training=training)
            loss = tf.reduce_sum(tf.cast(outputs, "float32") * upstream)
        gradients = tape.gradient(loss, [x, *layer.trainable_weights])
    return [np.asarray(outputs, "float32")] + [
        np.asarray(g, "float32") for g in gradients
    ]


def compare(variant, rank, args, x, monkeypatch, rtol, atol):
    family = VARIANTS[variant][0]
    layer = CLASSES[family][rank](**args)
    output_shape = layer.compute_output_shape(x.shape)
    upstream = np.random.default_rng(1).uniform(1, 2, output_shape)
    upstream = upstream.astype("float32")
    fused = run_layer(variant, rank, args, x, upstream, True, monkeypatch)
    other = run_layer(variant, rank, args, x, upstream, False, monkeypatch)
    names = ["outputs", "input gradient", "weight gradient"][: len(fused)]
    for name, got, expected in zip(names, fused, other, strict=True):
        np.testing.assert_allclose(
            got, expected, rtol=rtol, atol=atol, err_msg=name
        )
    return fused


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride, tiled", ALL_CASES
)
def test_fused_kernels_match_the_other_path(
    rng, monkeypatch, variant, rank, padding, data_format, pool, stride, tiled
):
    args = window_args(rank, padding, data_format, pool, stride)
    spatial = TILED_SHAPES[rank] if tiled else None
    x = rng.standard_normal(input_shape(rank, data_format, spatial=spatial))
    x = x.astype("float32")
    x[0] = -np.abs(x[0])  # Stochastic pooling: no positive input at all.
    fused = compare(variant, rank, args, x, monkeypatch, 1e-5, 1e-6)
    if variant.startswith("stochastic"):
        np.testing.assert_array_equal(fused[0][0], 0)
        np.testing.assert_array_equal(fused[1][0], 0)


@pytest.mark.parametrize("variant", ["min", "learned-channel", "gated-layer"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_fused_kernels_in_other_dtypes(rng, monkeypatch, variant, dtype):
    args = window_args(2, "same", "channels_last", 3, 2)
    x = rng.standard_normal(input_shape(2, "channels_last")).astype(dtype)
    tolerance = {"float16": 1e-2, "bfloat16": 5e-2, "float64": 1e-10}[dtype]
    with _policy(dtype):
        compare(variant, 2, args, x, monkeypatch, tolerance, tolerance)


class _policy:
    """Sets the global dtype policy for a block."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)


def test_ties_send_the_gradient_to_one_element(monkeypatch):
    # Every window holds equal values: as max pooling does, one element of
    # each window (the first) gets the whole gradient.
    args = window_args(2, "valid", "channels_last", 2, 2)
    x = np.ones((2, 4, 4, 3), "float32")
    fused = compare("min", 2, args, x, monkeypatch, 0, 0)
    assert (fused[1] != 0).sum() == fused[0].size


def test_graph_mode_matches_eager(rng):
    import tensorflow as tf

    layer = layers.MixedPooling2D(3, 2, padding="same", mode="gated")
    x = tf.constant(rng.standard_normal((2, 9, 7, 4)).astype("float32"))
    layer.build(x.shape)
    layer.gate_kernel.assign(rng.normal(size=layer.gate_kernel.shape))
    eager = layer(x)
    graph = tf.function(layer)(x)
    np.testing.assert_array_equal(np.asarray(graph), np.asarray(eager))


def test_fused_kernels_apply_outside_xla_only(monkeypatch):
    from kpool.layers import tensorflow_ops

    seen = applies_by_mode(tensorflow_ops.applies)
    assert seen == {"eager": True, "graph": True, "xla": False}
    monkeypatch.setenv("KPOOL_TF_OPS", "0")
    assert not tensorflow_ops.applies()


def test_a_bad_kpool_tf_ops_value_is_named(monkeypatch):
    from kpool.layers import tensorflow_ops

    monkeypatch.setenv("KPOOL_TF_OPS", "yes")
    with pytest.raises(ValueError, match="`KPOOL_TF_OPS` must be one of"):
        tensorflow_ops.applies()


@pytest.mark.parametrize("choice", ["auto", "1"])
def test_without_a_compiler(monkeypatch, tmp_path, choice):
    from kpool.layers import tensorflow_ops

    monkeypatch.setattr(tensorflow_ops, "_library", None)
    monkeypatch.setattr(tensorflow_ops, "_failure", None)
    monkeypatch.setenv("KPOOL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("KPOOL_TF_OPS", choice)
    if choice == "1":
        with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
            tensorflow_ops.library()
        return
    with pytest.warns(RuntimeWarning, match="cannot be built"):
        assert tensorflow_ops.library() is None
    assert not tensorflow_ops.applies()  # Once: no second warning.
    # The layers fall back to built-in ops.
    x = np.arange(16.0, dtype="float32").reshape(1, 4, 4, 1)
    outputs = layers.MinPooling2D(2)(x)
    np.testing.assert_array_equal(
        np.asarray(outputs)[0, :, :, 0], [[0, 2], [8, 10]]
    )


def test_the_library_is_built_once_and_cached(tmp_path):
    from kpool.layers import tensorflow_ops

    path = tensorflow_ops.build(str(tmp_path))
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
    mtime = os.stat(path).st_mtime_ns
    assert tensorflow_ops.build(str(tmp_path)) == path
    assert os.stat(path).st_mtime_ns == mtime


def test_a_window_larger_than_the_input_is_an_error():
    import tensorflow as tf

    from kpool.layers import tensorflow_ops

    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than"):
        tensorflow_ops.library().kpool_min_pool(
            tf.zeros((1, 1, 1, 2, 1)),
            ksize=[1, 1, 3],
            strides=[1, 1, 1],
            padding="VALID",
            data_format="NDHWC",
        )


def test_benchmarks_record_which_kernels_ran(monkeypatch):
    from kpool import bench
    from kpool.layers import tensorflow_ops

    assert bench.tensorflow_kernels() == "fused"
    assert tensorflow_ops.build_target() in ("native", "default")
    monkeypatch.setattr(tensorflow_ops, "_target", "x86-64 baseline")
    assert bench.tensorflow_kernels() == "fused, x86-64 baseline build"
    monkeypatch.setenv("KPOOL_TF_OPS", "0")
    assert bench.tensorflow_kernels() == "built-in ops"


# Shapes the window cases leave out: many channels (the kernels work on
# blocks of channels, and draw the random mode's numbers 64 at a time),
# strides longer than the window (cells in no window), uneven windows.
OTHER_SHAPES = {
    "70-channels-last": (
        2,
        dict(pool_size=3, strides=2, padding="valid"),
        "channels_last",
        70,
    ),
    "70-channels-first": (
        2,
        dict(pool_size=2, strides=2, padding="same"),
        "channels_first",
        70,
    ),
    "gaps": (2, dict(pool_size=2, strides=3, padding="valid"), None, 5),
    "uneven-3d": (
        3,
        dict(pool_size=(3, 1, 2), strides=(1, 2, 2), padding="same"),
        None,
        4,
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", list(OTHER_SHAPES))
def test_fused_kernels_on_other_shapes(rng, monkeypatch, variant, shape):
    rank, args, data_format, channels = OTHER_SHAPES[shape]
    data_format = data_format or "channels_last"
    args = {**args, "data_format": data_format}
    x = rng.standard_normal(
        input_shape(rank, data_format, batch=3, channels=channels)
    ).astype("float32")
    # The gate kernel's gradient sums ~100 products of either sign, in
    # another order than autodiff's: absolute errors of a few 1e-6.
    compare(variant, rank, args, x, monkeypatch, 1e-5, 1e-5)


@pytest.mark.parametrize("variant", ["gated-channel", "stochastic-training"])
def test_fused_kernels_are_deterministic(rng, monkeypatch, variant):
    # Enough examples and channels that the work is split over threads.
    args = dict(pool_size=3, strides=2, padding="same")
    x = rng.standard_normal((16, 17, 15, 32)).astype("float32")
    first, second = (
        compare(variant, 2, args, x, monkeypatch, 1e-5, 1e-5) for _ in range(2)
    )
    for got, expected in zip(first, second, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_windows_over_255_cells_take_the_other_path(rng):
    import tensorflow as tf

    from kpool.layers import tensorflow_ops

    # The kernels keep window positions in a byte.
    layer = layers.MinPooling3D(pool_size=(8, 8, 4))  # 256 cells
    assert not tensorflow_ops.applies(layer)
    assert tensorflow_ops.applies(layers.MinPooling3D(pool_size=(5, 17, 3)))
    x = rng.standard_normal((2, 8, 8, 4, 3)).astype("float32")
    np.testing.assert_array_equal(
        np.asarray(layer(x)), x.min(axis=(1, 2, 3), keepdims=True)
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 255"):
        tensorflow_ops.library().kpool_min_pool(
            tf.constant(x), ksize=[8, 8, 4], strides=[1, 1, 1], padding="VALID"
        )


BASELINE_CHECK = """
import numpy as np, tensorflow as tf
from kpool import layers
from kpool.layers import tensorflow_ops

rng = np.random.default_rng(0)
# 70 channels: SSE packets of 4 and two channels in the plain loops.
x = tf.constant(rng.standard_normal((3, 9, 7, 70)).astype("float32"))
cases = [
    (lambda: layers.MixedPooling2D(3, 2, seed=5, mode="random"), True),
    (lambda: layers.MixedPooling2D(3, 2, seed=5, mode="random",
                                   granularity="channel"), True),
    (lambda: layers.MixedPooling2D(3, 2, mode="learned"), True),
    (lambda: layers.MixedPooling2D(3, 2, mode="gated"), True),
    (lambda: layers.MinPooling2D(3, 2), True),
    (lambda: layers.StochasticPooling2D(3, 2, seed=5), True),
    (lambda: layers.StochasticPooling2D(3, 2, seed=5), False),
]
for make, training in cases:
    results = []
    for fused in (True, False):
        tensorflow_ops.applies = (lambda f: lambda layer=None: f)(fused)
        layer = make()
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
        results.append((y, tape.gradient(y, x)))
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
print("baseline build agrees:", tensorflow_ops.build_target())
"""


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="the baseline build differs from the native one on x86-64 only",
)
def test_the_build_without_avx2_computes_the_same(tmp_path):
    # Built for the x86-64 baseline, the kernels take their SSE paths
    # (packets of 4 floats; Philox one block at a time), in a fresh process:
    # a second library cannot register the same ops in this one.
    env = {
        **os.environ,
        "KPOOL_CACHE_DIR": str(tmp_path),
        "KPOOL_TF_OPS": "1",
        "KPOOL_TF_OPS_BASELINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", BASELINE_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "baseline build agrees: x86-64 baseline" in result.stdout
    built = os.listdir(tmp_path / "tensorflow_ops")
    assert len(built) == 1
