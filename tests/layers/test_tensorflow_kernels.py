"""The TensorFlow kernels against the layers' `keras.ops` paths.

The other layer tests check both paths against NumPy references (on
TensorFlow the kernels run in eager and graph mode where they apply, the
`keras.ops` path under XLA and elsewhere); these check that the two compute
the same outputs from the same random draws, with the same gradients, on
every window case, including those where the layers pick only one of them.
"""

import keras
import numpy as np
import pytest

from kpool import layers

from .cases import (
    TILED_CASES,
    TILED_SHAPES,
    WINDOW_CASES,
    input_shape,
    random_input,
    window_args,
)

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow-only kernels",
)

STOCHASTIC_POOLINGS = {
    1: layers.StochasticPooling1D,
    2: layers.StochasticPooling2D,
    3: layers.StochasticPooling3D,
}
MIN_POOLINGS = {
    1: layers.MinPooling1D,
    2: layers.MinPooling2D,
    3: layers.MinPooling3D,
}
# Stride 1 makes every cell but the borders part of several windows.
CASES = [
    *WINDOW_CASES,
    pytest.param(2, "same", "channels_first", 3, 1, id="2d-same-first-3s1"),
]
# The same with a `tiled` flag, and the cases whose windows tile the input
# (on `TILED_SHAPES`), where the kernels take another gradient.
ALL_CASES = [
    *(pytest.param(*case.values, False, id=case.id) for case in CASES),
    *(pytest.param(*case.values, True, id=case.id) for case in TILED_CASES),
]


def kernel_input_shape(rank, data_format, tiled):
    spatial = TILED_SHAPES[rank] if tiled else None
    return input_shape(rank, data_format, spatial=spatial)


def stochastic_case(rng, rank, padding, data_format, pool, stride, tiled):
    """A seeded, built stochastic pooling with its input and draws.

    The first example has no positive input: output 0, no gradient.
    """
    import tensorflow as tf

    args = window_args(rank, padding, data_format, pool, stride)
    shape = kernel_input_shape(rank, data_format, tiled)
    x = rng.standard_normal(shape).astype("float32")
    x[0] = -np.abs(x[0])
    layer = STOCHASTIC_POOLINGS[rank](**args, seed=0)
    layer.build(x.shape)
    uniform = np.asarray(layer._draw_uniform(tf.constant(x)))
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    return layer, x, uniform, upstream.astype("float32")


def value_and_gradient(function, x, upstream):
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = function(x)
        loss = tf.reduce_sum(upstream * outputs)
    return np.asarray(outputs), np.asarray(tape.gradient(loss, x))


@pytest.mark.parametrize("rank, padding, data_format, pool, stride", CASES)
def test_stochastic_sample_kernel_matches_keras_ops_path(
    rng, rank, padding, data_format, pool, stride
):
    import tensorflow as tf

    from kpool.layers import tensorflow_kernels

    layer, x, uniform, upstream = stochastic_case(
        rng, rank, padding, data_format, pool, stride, tiled=False
    )
    kernel = value_and_gradient(
        lambda x: tensorflow_kernels.stochastic_sample(layer, x, uniform),
        x,
        upstream,
    )
    keras_ops = value_and_gradient(
        lambda x: layer._sample(layer._zero_pad(tf.nn.relu(x)), uniform),
        x,
        upstream,
    )
    np.testing.assert_array_equal(kernel[0], keras_ops[0])
    np.testing.assert_array_equal(kernel[0][0], 0)
    np.testing.assert_allclose(kernel[1], keras_ops[1], rtol=1e-6)
    np.testing.assert_array_equal(kernel[1][0], 0)


@pytest.mark.parametrize("rank, padding, data_format, pool, stride", CASES)
def test_min_pool_kernel_matches_keras_ops_path(
    rng, rank, padding, data_format, pool, stride
):
    from keras import ops

    from kpool.layers import tensorflow_kernels

    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    layer = MIN_POOLINGS[rank](**args)
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    kernel = value_and_gradient(
        lambda x: tensorflow_kernels.min_pool(x, layer._max_pool), x, upstream
    )
    keras_ops = value_and_gradient(
        lambda x: -layer._max_pool(ops.negative(x)), x, upstream
    )
    np.testing.assert_array_equal(kernel[0], keras_ops[0])
    np.testing.assert_array_equal(kernel[1], keras_ops[1])


def applies_by_mode(applies):
    """`applies()` called in eager mode, in a graph and under XLA."""
    import tensorflow as tf

    seen = {}

    def probe(name):
        seen[name] = applies()
        return tf.constant(0.0)

    probe("eager")
    tf.function(lambda: probe("graph"))()
    tf.function(lambda: probe("xla"), jit_compile=True)()
    return seen


def test_kernels_apply_outside_xla_only():
    from kpool.layers import tensorflow_kernels

    seen = applies_by_mode(tensorflow_kernels.applies)
    assert seen == {"eager": True, "graph": True, "xla": False}


@pytest.mark.parametrize("jit_compile", [False, True])
def test_training_in_graph_and_xla_samples_window_elements(rng, jit_compile):
    import tensorflow as tf

    args = window_args(2, "same", "channels_last", 3, 2)
    x = rng.uniform(0.5, 1.5, (2, 5, 5, 3)).astype("float32")
    layer = layers.StochasticPooling2D(**args, seed=0)
    outputs = tf.function(
        lambda x: layer(x, training=True), jit_compile=jit_compile
    )(tf.constant(x))
    # Every output is one of the inputs (all positive, all distinct).
    assert np.isin(np.asarray(outputs), x).all()


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_gate_under_xla_matches_graph_mode(rng, granularity, data_format):
    import tensorflow as tf

    # Graph mode computes the gate as a depthwise convolution, XLA from the
    # extracted windows.
    args = window_args(2, "same", data_format, 3, 2)
    x = random_input(rng, 2, data_format)
    layer = layers.MixedPooling2D(**args, mode="gated", granularity=granularity)
    layer.build(x.shape)
    layer.gate_kernel.assign(rng.normal(size=layer.gate_kernel.shape))
    outputs = {
        jit_compile: np.asarray(
            tf.function(layer, jit_compile=jit_compile)(tf.constant(x))
        )
        for jit_compile in (False, True)
    }
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=1e-5)


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_uniform_draws_keras_numbers(mode, dtype):
    import tensorflow as tf

    from kpool.layers import tensorflow_kernels

    def draws(uniform):
        # Three draws: the seed generator must advance as Keras's does.
        generator = keras.random.SeedGenerator(1234)
        shape = (3, 5, 7)
        draw = lambda: uniform(shape, dtype, generator)  # noqa: E731
        if mode != "eager":
            draw = tf.function(draw, jit_compile=mode == "xla")
        return np.stack([np.asarray(draw(), "float32") for _ in range(3)])

    expected = draws(
        lambda shape, dtype, seed: keras.random.uniform(
            shape, dtype=dtype, seed=seed
        )
    )
    drawn = draws(tensorflow_kernels.uniform)
    np.testing.assert_array_equal(drawn, expected)
    assert not np.array_equal(drawn[0], drawn[1])


@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride, tiled", ALL_CASES
)
def test_stochastic_expectation_kernel_matches_keras_ops_path(
    rng, rank, padding, data_format, pool, stride, tiled
):
    import tensorflow as tf

    from kpool.layers import tensorflow_kernels

    layer, x, _, upstream = stochastic_case(
        rng, rank, padding, data_format, pool, stride, tiled
    )
    assert tiled == bool(tensorflow_kernels.window_blocks(layer, x.shape))
    kernel = value_and_gradient(
        lambda x: tensorflow_kernels.stochastic_expectation(layer, x),
        x,
        upstream,
    )
    keras_ops = value_and_gradient(
        lambda x: layer._expectation(layer._zero_pad(tf.nn.relu(x))),
        x,
        upstream,
    )
    np.testing.assert_array_equal(kernel[0], keras_ops[0])
    np.testing.assert_allclose(kernel[1], keras_ops[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kernel[1][0], 0)


MIXED_POOLINGS = {
    1: layers.MixedPooling1D,
    2: layers.MixedPooling2D,
    3: layers.MixedPooling3D,
}


def mixing_shape(output_shape, unit, data_format):
    """The shape of a mixing tensor that varies per `unit`."""
    channel_axis = 1 if data_format == "channels_first" else -1
    if unit == "region":
        return output_shape
    if unit == "example-channel":
        shape = [1] * len(output_shape)
        shape[0] = output_shape[0]
        shape[channel_axis] = output_shape[channel_axis]
        return tuple(shape)
    if unit == "channel":  # as `MixedPooling._broadcast_channels` shapes it
        channels = output_shape[channel_axis]
        if data_format == "channels_last":
            return (channels,)
        return (channels, *(1,) * (len(output_shape) - 2))
    return ()


@pytest.mark.parametrize("choose", [False, True])
@pytest.mark.parametrize("unit", ["region", "example-channel", "channel", ""])
@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride, tiled", ALL_CASES
)
def test_mixed_pool_kernel_matches_keras_ops_path(
    rng, rank, padding, data_format, pool, stride, tiled, unit, choose
):
    import tensorflow as tf

    from kpool.layers import tensorflow_kernels

    args = window_args(rank, padding, data_format, pool, stride)
    layer = MIXED_POOLINGS[rank](**args)
    shape = kernel_input_shape(rank, data_format, tiled)
    assert tiled == (tensorflow_kernels.window_blocks(layer, shape) is not None)
    x = tf.constant(rng.standard_normal(shape).astype("float32"))
    output_shape = layer.compute_output_shape(shape)
    m_shape = mixing_shape(output_shape, unit, data_format)
    if choose:
        mixing = tf.constant(rng.uniform(size=m_shape) < 0.5)
    else:
        mixing = tf.constant(rng.uniform(size=m_shape).astype("float32"))
    upstream = rng.uniform(1, 2, output_shape).astype("float32")

    def keras_ops_path(x, mixing):
        max_pooled = layer._max_pool(x)
        avg_pooled = layer._average_pool(x, layer._zero_pad(x))
        if choose:
            return tf.where(mixing, max_pooled, avg_pooled)
        return avg_pooled + mixing * (max_pooled - avg_pooled)

    results = []
    for function in (
        lambda x, m: tensorflow_kernels.mixed_pool(layer, x, m, choose),
        keras_ops_path,
    ):
        with tf.GradientTape() as tape:
            tape.watch([x, mixing])
            outputs = function(x, mixing)
            loss = tf.reduce_sum(upstream * outputs)
        gradients = tape.gradient(loss, [x, mixing])
        results.append((outputs, *gradients))
    (outputs, dx, dm), (expected, expected_dx, expected_dm) = results
    np.testing.assert_array_equal(outputs, expected)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-5, atol=1e-6)
    if choose:
        assert dm is None and expected_dm is None
    else:
        np.testing.assert_allclose(dm, expected_dm, rtol=1e-5, atol=1e-5)


def test_window_blocks_only_where_windows_tile_the_input():
    from kpool.layers import tensorflow_kernels

    def blocks(shape, **kwargs):
        layer = layers.MixedPooling2D(**kwargs)
        return tensorflow_kernels.window_blocks(layer, shape)

    tiled = blocks((None, 8, 6, 3), pool_size=2)
    assert tiled == ([-1, 4, 2, 3, 2, 3], [-1, 4, 1, 3, 1, 3])
    first = blocks((None, 3, 8, 6), pool_size=2, data_format="channels_first")
    assert first == ([-1, 3, 4, 2, 3, 2], [-1, 3, 4, 1, 3, 1])
    assert blocks((None, 7, 6, 3), pool_size=2) is None
    assert blocks((None, 8, 6, 3), pool_size=2, strides=1) is None
    assert blocks((None, 9, 6, 3), pool_size=3, strides=2) is None
    assert blocks((None, None, 6, 3), pool_size=2) is None


@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride", TILED_CASES
)
def test_tiled_stochastic_sample_kernel_matches_keras_ops_path(
    rng, rank, padding, data_format, pool, stride
):
    import tensorflow as tf

    from kpool.layers import tensorflow_kernels

    layer, x, uniform, upstream = stochastic_case(
        rng, rank, padding, data_format, pool, stride, tiled=True
    )
    assert tensorflow_kernels.window_blocks(layer, x.shape)
    kernel = value_and_gradient(
        lambda x: tensorflow_kernels.tiled_stochastic_sample(layer, x, uniform),
        x,
        upstream,
    )
    keras_ops = value_and_gradient(
        lambda x: layer._sample(tf.nn.relu(x), uniform), x, upstream
    )
    np.testing.assert_array_equal(kernel[0], keras_ops[0])
    np.testing.assert_allclose(kernel[1], keras_ops[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kernel[1][0], 0)
