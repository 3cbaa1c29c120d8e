"""`kpool.ops` on plain backend tensors, eagerly and inside `jit`, against
the NumPy references; and special values (NaN, inf, huge finite inputs)
behaving as in Keras's built-in poolings, in training and inference."""

import keras
import numpy as np
import pytest
import reference

from kpool import layers, ops

from .cases import WINDOW_CASES, random_input, window_args


def jit(function):
    """`function` compiled the way the backend compiles a train step."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=True)
    # torch.compile takes minutes on this CPU for every case; Keras's torch
    # train step runs eagerly by default, which the eager half covers.
    return function


def deterministic_cases():
    """(op, kwargs, NumPy reference of the windows) for each deterministic
    op: min, the mixes, the stochastic expectation."""
    return [
        pytest.param(ops.min_pool, {}, reference.min_pool, id="min"),
        pytest.param(
            ops.mixed_pool,
            {"alpha": 0.3},
            lambda w: reference.mixed_pool(w, 0.3),
            id="mixed",
        ),
        pytest.param(
            ops.stochastic_pool,
            {},
            reference.stochastic_expectation,
            id="stochastic",
        ),
    ]


# The layer tests run every rank through these ops eagerly; here the 2D
# windows suffice, on plain tensors, eagerly and compiled.
OP_CASES = [case for case in WINDOW_CASES if case.values[0] == 2]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("op, kwargs, expected_of", deterministic_cases())
@pytest.mark.parametrize("rank, padding, data_format, pool, stride", OP_CASES)
def test_ops_match_reference_on_backend_tensors(
    rng,
    op,
    kwargs,
    expected_of,
    compiled,
    rank,
    padding,
    data_format,
    pool,
    stride,
):
    if compiled and keras.backend.backend() == "torch":
        pytest.skip("jit() is eager on torch: the eager case covers it")
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)

    def pooled(x):
        return op(x, **args, **kwargs)

    outputs = (jit(pooled) if compiled else pooled)(
        keras.ops.convert_to_tensor(x)
    )
    expected = reference.pool(x, expected_of, **args)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs), expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_gated_op_matches_reference(rng, data_format):
    args = window_args(2, "same", data_format, 3, 2)
    x = random_input(rng, 2, data_format)
    kernel = rng.normal(0, 0.5, (9, 3)).astype("float32")
    outputs = jit(lambda x: ops.mixed_pool(x, **args, gate_kernel=kernel))(
        keras.ops.convert_to_tensor(x)
    )
    expected = reference.to_data_format(
        reference.gated_pool(reference.windows(x, **args), kernel),
        data_format,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs), expected, rtol=1e-5, atol=1e-6
    )


def test_global_min_pool_matches_numpy(rng):
    x = rng.standard_normal((2, 5, 4, 3)).astype("float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(ops.global_min_pool(x, "channels_last")),
        x.min(axis=(1, 2)),
    )
    kept = ops.global_min_pool(x, "channels_first", keepdims=True)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(kept), x.min(axis=(2, 3), keepdims=True)
    )


@pytest.mark.parametrize("op", [ops.mixed_pool, ops.stochastic_pool])
def test_random_ops_in_jit_draw_anew_with_a_seed_generator(rng, op):
    """A `SeedGenerator` advances inside a compiled function (its state is
    passed in and out by Keras's stateless scope on JAX)."""
    x = np.abs(random_input(rng, 2, "channels_last", spatial=(16, 16)))
    generator = keras.random.SeedGenerator(3)
    first = keras.ops.convert_to_numpy(op(x, 2, training=True, seed=generator))
    second = keras.ops.convert_to_numpy(op(x, 2, training=True, seed=generator))
    assert not np.array_equal(first, second)
    # Every output is one of its window's cells (stochastic) or a mix of
    # exactly max or average (mixed): both draw per region.
    elements = reference.windows(x, (2, 2), (2, 2), "valid", "channels_last")
    maxima, means = (
        reference.max_pool(elements),
        reference.average_pool(elements),
    )
    if op is ops.mixed_pool:
        assert np.all(np.isclose(first, maxima) | np.isclose(first, means))
    else:
        assert np.all((elements == first[..., None, :]).any(axis=-2))


def test_mixed_pool_training_needs_a_float_alpha():
    x = np.zeros((1, 4, 4, 2), "float32")
    with pytest.raises(ValueError, match="`training=True` draws random"):
        ops.mixed_pool(x, 2, gate_kernel=np.zeros(4), training=True)
    with pytest.raises(ValueError, match="`training=True` draws random"):
        ops.mixed_pool(x, 2, alpha=np.array([0.5, 0.5]), training=True)


def test_ops_name_bad_arguments():
    x = np.zeros((1, 4, 4, 2), "float32")
    with pytest.raises(ValueError, match="`pool_size` must be a positive"):
        ops.min_pool(x, 0)
    with pytest.raises(ValueError, match="`padding` must be 'valid' or"):
        ops.mixed_pool(x, 2, padding="full")
    with pytest.raises(ValueError, match="`granularity` must be one of"):
        ops.mixed_pool(x, 2, granularity="batch", training=True)
    with pytest.raises(ValueError, match="`gate_kernel` must have shape"):
        ops.mixed_pool(x, 2, gate_kernel=np.zeros(3))
    with pytest.raises(ValueError, match="`inputs` of min_pool must have"):
        ops.min_pool(np.zeros((4, 4), "float32"), 2)
    with pytest.raises(ValueError, match="`pool_size` has 2 entries"):
        ops.stochastic_pool(np.zeros((1, 4, 2), "float32"), (2, 2))


# Special values: what Keras's built-in max and average pooling give is the
# standard. A window holding NaN gives NaN in average pooling; one holding
# +inf (and no NaN or -inf) gives +inf in both.


def special_layers():
    window = {"pool_size": 2, "strides": 2}
    return [
        pytest.param(layers.MinPooling2D, window, id="min"),
        pytest.param(
            layers.MixedPooling2D,
            {**window, "mode": "random", "seed": 1},
            id="mixed-random",
        ),
        pytest.param(
            layers.MixedPooling2D, {**window, "mode": "learned"}, id="learned"
        ),
        pytest.param(
            layers.MixedPooling2D, {**window, "mode": "gated"}, id="gated"
        ),
        pytest.param(
            layers.StochasticPooling2D, {**window, "seed": 1}, id="stochastic"
        ),
    ]


def with_special_values():
    """4x4 positive inputs; the top-left window holds NaN, the top-right
    +inf, the bottom-left a huge finite value, the bottom-right is plain."""
    x = np.array(
        [[1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 5.0, 1.0]] * 2, "float32"
    ).reshape(1, 4, 4, 1)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 0] = np.inf
    x[0, 3, 0, 0] = 3e37
    return x


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("cls, kwargs", special_layers())
def test_special_values_behave_as_in_builtin_poolings(cls, kwargs, training):
    x = with_special_values()
    outputs = keras.ops.convert_to_numpy(cls(**kwargs)(x, training=training))
    outputs = outputs[0, :, :, 0]
    average = keras.ops.convert_to_numpy(keras.layers.AveragePooling2D(2)(x))[
        0, :, :, 0
    ]
    assert np.isnan(average[0, 0]) and average[0, 1] == np.inf
    if cls is layers.MinPooling2D:
        # Min of the +inf window is finite; the NaN window follows the
        # built-in max pooling of -x, whatever it does on this backend.
        expected = -keras.ops.convert_to_numpy(
            keras.layers.MaxPooling2D(2)(-x)
        )[0, :, :, 0]
        np.testing.assert_array_equal(outputs, expected)
        return
    if kwargs.get("mode") == "random" and training:
        # Exactly max or exactly average pooling, as drawn: the built-in
        # max pooling of a window with NaN may or may not give NaN.
        maximum = keras.ops.convert_to_numpy(keras.layers.MaxPooling2D(2)(x))[
            0, 0, 0, 0
        ]
        assert np.isnan(outputs[0, 0]) or outputs[0, 0] == maximum
    else:
        assert np.isnan(outputs[0, 0]), "NaN must propagate"
    assert outputs[0, 1] == np.inf, "+inf must give +inf"
    # The huge finite value neither overflows nor turns into NaN.
    assert np.isfinite(outputs[1, 0]) and outputs[1, 0] > 1e36
    assert np.isfinite(outputs[1, 1])


def test_stochastic_expectation_of_huge_activations_is_exact():
    """sum a^2 / sum a for activations whose squares overflow float32."""
    x = np.array([1e30, 3e30, 2e30, 0.0], "float32").reshape(1, 2, 2, 1)
    outputs = keras.ops.convert_to_numpy(ops.stochastic_pool(x, 2))
    a = x.astype("float64").ravel()
    np.testing.assert_allclose(
        outputs.ravel(), [(a**2).sum() / a.sum()], rtol=1e-6
    )


INTEGER_OPS = {
    "min": lambda x: ops.min_pool(x, 2),
    "mixed": lambda x: ops.mixed_pool(x, 2, alpha=0.3),
    "gated": lambda x: ops.mixed_pool(
        x, 2, gate_kernel=np.linspace(-0.01, 0.01, 4, dtype="float32")
    ),
    "stochastic": lambda x: ops.stochastic_pool(x, 2),
    "lp": lambda x: ops.lp_pool(x, 2, 3, 2),
    "gem": lambda x: ops.global_gem_pool(x, 3.0),
    "soft": lambda x: ops.soft_pool(x, 2),
    "blur": lambda x: ops.blur_pool(x, 3, 2),
    "max_blur": lambda x: ops.max_blur_pool(x, 2, 2, 3),
    "median": lambda x: ops.median_pool(x, 3, 1, "same"),
    "fractional": lambda x: ops.fractional_max_pool(
        x, output_ratio=0.7, samples=np.full((2, 3, 2), 0.4, "float32")
    ),
    "pyramid": lambda x: ops.spatial_pyramid_pool(x, [1, 2]),
    "pyramid_average": lambda x: ops.spatial_pyramid_pool(
        x, [1, 3], mode="average"
    ),
    "tree": lambda x: ops.tree_pool(
        x,
        2,
        leaf_kernels=np.array([[1, 0.25], [0, 0.25], [0, 0.25], [0, 0.25]]),
        gate_kernels=np.full((4, 1), 0.01),
    ),
}


@pytest.mark.parametrize("dtype", ["uint8", "int16"])
@pytest.mark.parametrize("name", list(INTEGER_OPS))
def test_integer_inputs_pool_as_floats_cast_back(rng, name, dtype):
    # An 8-bit image, say: every op computes in float32 and returns the
    # input's dtype, truncating as a cast does, on every backend
    # (TensorFlow's own poolings and negation reject uint8; torch's
    # average and adaptive poolings reject it; an unsigned negation wraps).
    op = INTEGER_OPS[name]
    # Below 81, every output fits in uint8 (LP's 3x3 norm: 3 * 80): a
    # float cast out of range saturates or wraps by backend.
    x = rng.integers(0, 81, (2, 9, 9, 3)).astype(dtype)
    outputs = op(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == dtype
    expected = keras.ops.convert_to_numpy(op(x.astype("float32")))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(outputs),
        np.trunc(expected).astype(dtype),
    )
    if name == "min":
        cells = x[:, :8, :8].reshape(2, 4, 2, 4, 2, 3)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(outputs), cells.min(axis=(2, 4))
        )
