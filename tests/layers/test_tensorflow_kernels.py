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

from .cases import WINDOW_CASES, random_input, window_args

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
CASES = [*WINDOW_CASES, (2, "same", "channels_first", 3, 1)]


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

    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    # An example without positive inputs: output 0, no gradient.
    x[0] = -np.abs(x[0])
    layer = STOCHASTIC_POOLINGS[rank](**args, seed=0)
    layer.build(x.shape)
    uniform = np.asarray(layer._draw_uniform(tf.constant(x)))
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")

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

    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    layer = MIN_POOLINGS[rank](**args)
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    kernel = value_and_gradient(layer, x, upstream)
    keras_ops = value_and_gradient(
        lambda x: -layer._max_pool(ops.negative(x)), x, upstream
    )
    np.testing.assert_array_equal(kernel[0], keras_ops[0])
    np.testing.assert_array_equal(kernel[1], keras_ops[1])


def test_kernels_apply_outside_xla_only():
    import tensorflow as tf

    from kpool.layers import tensorflow_kernels

    seen = {}

    def probe(name):
        seen[name] = tensorflow_kernels.applies()
        return tf.constant(0.0)

    probe("eager")
    tf.function(lambda: probe("graph"))()
    tf.function(lambda: probe("xla"), jit_compile=True)()
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
