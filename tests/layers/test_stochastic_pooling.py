import keras
import numpy as np
import pytest
import reference

from kpool import backend, layers, ops
from kpool.ops.windows import Window

from .cases import (
    TILED_CASES,
    TILED_SHAPES,
    WINDOW_CASES,
    random_input,
    window_args,
)
from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)
from .gradients import layer_gradients
from .statistics import assert_seeded_draws_reproducible, count_tolerance

STOCHASTIC_POOLINGS = {
    1: layers.StochasticPooling1D,
    2: layers.StochasticPooling2D,
    3: layers.StochasticPooling3D,
}

# 3x3 windows with stride 2 over 5x5 under "same": overlapping windows, and
# the border ones hold padded cells.
OVERLAPPING = window_args(2, "same", "channels_last", 3, 2)


def channels_last(outputs, data_format):
    outputs = np.asarray(outputs)
    if data_format == "channels_first":
        return np.moveaxis(outputs, 1, -1)
    return outputs


@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride", WINDOW_CASES
)
def test_inference_matches_reference(
    rng, rank, padding, data_format, pool, stride
):
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    outputs = STOCHASTIC_POOLINGS[rank](**args)(x, training=False)
    expected = reference.pool(x, reference.stochastic_expectation, **args)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)


def test_training_samples_where_a_windows_sum_overflows():
    # Finite activations whose window sums overflow float32: each window
    # still gives one of its cells (the sums are taken rescaled), where
    # NaN and inf give NaN and inf.
    x = np.array([2.5e38, 2.0e38, 3.0e38, 1.0, np.inf, 1.0, np.nan, 1.0])
    x = x.astype("float32").reshape(1, 8, 1)
    for seed in range(5):
        outputs = np.asarray(
            ops.stochastic_pool(x, 2, training=True, seed=seed)
        )
        outputs = outputs.ravel()
        assert outputs[0] in (np.float32(2.5e38), np.float32(2.0e38))
        assert outputs[1] in (np.float32(3.0e38), np.float32(1.0))
        assert outputs[2] == np.inf
        assert np.isnan(outputs[3])


@pytest.mark.parametrize("scale", [1.0, 2.0**126])
@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride", WINDOW_CASES
)
def test_training_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, padding, data_format, pool, stride, scale
):
    # TensorFlow samples without the rescaling where no activation is
    # above 2**30 (every scale 1 then), and rescales where one is: the
    # same seed must sample the same cells, with the same gradients, as
    # the `keras.ops` form. Activations of 1.5 to 3 times 2**126 take the
    # rescaling: unscaled, their window sums would overflow to inf.
    skip_without_fast_path("stochastic_sample")
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    if scale > 1:
        x = rng.uniform(1.5, 3, x.shape) * scale
    x = x.astype("float32")
    outputs = assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: ops.stochastic_pool(x, **args, training=True, seed=7),
        x,
        rng,
        rtol=1e-6,
        atol=0,
    )
    # A sample is one of the window's cells: a draw of zeros everywhere
    # would match too.
    assert np.count_nonzero(np.asarray(outputs)) > 0


def test_training_samples_from_the_windows_cells(monkeypatch, rng):
    # Eagerly (TensorFlow's `tf.cond` runs only the branch taken; torch
    # reads the maximum), windows tiling, overlapping or apart sample by
    # their cells' form unless an activation is above 2**30; large
    # activations by the keras.ops form, which rescales. Each sample is
    # one of its window's cells either way.
    skip_without_fast_path("stochastic_sample")
    import importlib

    module = importlib.import_module("kpool.ops.stochastic_pool")
    calls = []
    original = module.cells_sample

    def recorded(window, activations, uniform):
        calls.append(window.pool_size)
        return original(window, activations, uniform)

    monkeypatch.setattr(module, "cells_sample", recorded)
    x = np.abs(random_input(rng, 2, "channels_last")).astype("float32")
    for pool, stride, scale, taken in (
        (2, 2, 1.0, [(2, 2)]),
        (3, 3, 1.0, [(3, 3)]),
        (3, 2, 1.0, [(3, 3)]),
        (2, 3, 1.0, [(2, 2)]),
        (2, 2, 2.0**40, []),
        (3, 2, 2.0**40, []),
    ):
        calls.clear()
        outputs = ops.stochastic_pool(
            x * scale, pool, stride, "same", training=True, seed=1
        )
        assert calls == taken
        args = window_args(2, "same", "channels_last", pool, stride)
        elements = reference.windows(x * scale, **args)
        outputs = keras.ops.convert_to_numpy(outputs)
        assert np.all((elements == outputs[..., None, :]).any(axis=-2))


@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride", WINDOW_CASES
)
def test_inference_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, padding, data_format, pool, stride
):
    # Two average poolings, without the rescaling that cannot change them.
    skip_without_fast_path("stochastic_expectation")
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    # Some windows of zeros and negatives only: outputs 0.
    first = (slice(None),) * (1 if data_format == "channels_last" else 2)
    x[(*first, *(slice(0, 3),) * rank)] = -np.abs(
        x[(*first, *(slice(0, 3),) * rank)]
    )
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: ops.stochastic_pool(x, **args, training=False),
        x,
        rng,
    )


@pytest.mark.parametrize("special", [1e20, np.inf, np.nan])
def test_inference_fast_path_leaves_large_and_special_values(rng, special):
    # Squares that overflow float32 (1e40), inf and NaN. TensorFlow's and
    # torch's fast paths hand over to the keras.ops form, which rescales
    # (and fixes up NaN and inf); JAX's scales each window by its maximum,
    # and must give the formula's values in float64 (the channel's other
    # windows too, which a channel's rescaling by 1e20 flushes to 0).
    skip_without_fast_path("stochastic_expectation")
    window = Window(2, 2, 2, "valid", "channels_last")
    x = np.abs(random_input(rng, 2, "channels_last"))
    x[0, 0, 0, 0] = special
    fast = backend.fast_path("stochastic_expectation", x, window)
    activations = keras.ops.convert_to_tensor(x)
    outputs = fast(window, activations, 2.0**30, lambda: "rescaled")
    if keras.backend.backend() != "jax":
        assert outputs == "rescaled"
        ones = keras.ops.ones_like(activations)
        outputs = fast(window, ones, 2.0**30, lambda: "rescaled")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs), 1.0)
        return
    b, h, w, c = x.shape
    cells = x.astype("float64")[:, : h // 2 * 2, : w // 2 * 2]
    cells = cells.reshape(b, h // 2, 2, w // 2, 2, c)
    with np.errstate(invalid="ignore"):
        expected = (cells**2).sum(axis=(2, 4)) / cells.sum(axis=(2, 4))
    # A window holding +inf (and no NaN) gives +inf.
    infinite = np.isposinf(cells).any(axis=(2, 4))
    expected = np.where(
        infinite & ~np.isnan(cells).any(axis=(2, 4)), np.inf, expected
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(outputs), expected, rtol=1e-5
    )


def test_traced_inference_keeps_the_rescaling():
    # A traced graph (torch's ONNX export traces) cannot branch on values:
    # it must rescale large activations, as the keras.ops form does.
    if keras.backend.backend() != "torch":
        pytest.skip("the eager branch is torch's fast path")
    import torch

    def pool(x):
        return ops.stochastic_pool(x, 2, data_format="channels_last")

    small = torch.ones((1, 4, 4, 1))
    graph = torch.jit.trace(pool, small, check_trace=False)
    large = small * 2.0**100
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(graph(large)),
        keras.ops.convert_to_numpy(pool(large)),
        rtol=1e-6,
    )
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(graph(large))))


@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride", WINDOW_CASES
)
def test_training_output_is_a_positive_element_of_its_window(
    rng, rank, padding, data_format, pool, stride
):
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    layer = STOCHASTIC_POOLINGS[rank](**args, seed=0)
    outputs = channels_last(layer(x, training=True), data_format)
    elements = reference.windows(x, **args)
    has_mass = reference.stochastic_probabilities(elements).sum(axis=-2) > 0
    sampled_positive = (elements == outputs[..., None, :]) & (elements > 0)
    assert np.array_equal(sampled_positive.any(axis=-2), has_mass)
    np.testing.assert_array_equal(outputs[~has_mass], 0)


@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride", TILED_CASES
)
def test_tiled_windows_match_reference_with_gradients(
    rng, rank, padding, data_format, pool, stride
):
    # Windows that tile the input take their own TensorFlow kernels.
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format, spatial=TILED_SHAPES[rank])
    x[0] = -np.abs(x[0])  # no positive input: output 0, no gradient
    layer = STOCHASTIC_POOLINGS[rank](**args, seed=0)
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    elements = reference.windows(x, **args)
    indices = reference.window_indices(x.shape, **args)
    activations = np.maximum(elements, 0)
    sums = activations.sum(axis=-2, keepdims=True)
    upstream_last = channels_last(upstream, data_format)[..., None, :]

    outputs, input_gradient, _ = layer_gradients(layer, x, upstream)
    expectation = reference.pool(x, reference.stochastic_expectation, **args)
    np.testing.assert_allclose(outputs, expectation, rtol=1e-5, atol=1e-6)
    # d/da_k (sum a_i**2 / sum a_i) = (2 a_k - E) / sum a_i, and 0 where
    # the input is not positive.
    expectation = channels_last(expectation, data_format)[..., None, :]
    per_element = np.where(
        activations > 0,
        (2 * activations - expectation) / np.where(sums > 0, sums, 1),
        0,
    )
    expected = reference.gradient_of_chosen(
        x.shape, indices, upstream_last * per_element
    )
    np.testing.assert_allclose(input_gradient, expected, rtol=1e-5, atol=1e-6)

    outputs, input_gradient, _ = layer_gradients(
        layer, x, upstream, training=True
    )
    outputs = channels_last(outputs, data_format)[..., None, :]
    sampled = (elements == outputs) & (elements > 0)
    np.testing.assert_array_equal(sampled.sum(axis=-2), sums[..., 0, :] > 0)
    upstream_per_element = np.broadcast_to(upstream_last, sampled.shape)
    expected = reference.gradient_of_chosen(
        x.shape, indices[sampled], upstream_per_element[sampled]
    )
    np.testing.assert_allclose(input_gradient, expected, rtol=1e-6)
    np.testing.assert_array_equal(input_gradient[0], 0)


def test_sampling_frequencies_match_probabilities(rng):
    draws = 40_000
    example = rng.uniform(0.5, 1.5, (1, 5, 5, 1)).astype("float32")
    # A zero and a negative cell: both must never be sampled.
    example[0, 0, 1, 0] = 0.0
    example[0, 2, 2, 0] = -1.0
    layer = layers.StochasticPooling2D(**OVERLAPPING, seed=1234)
    outputs = np.asarray(layer(np.repeat(example, draws, 0), training=True))

    elements = reference.windows(example, **OVERLAPPING)[0]
    probabilities = reference.stochastic_probabilities(elements)
    # The values are distinct, so an output names the element sampled.
    counts = (outputs[..., None, :] == elements).sum(axis=0)
    tested = (probabilities > 0) & (probabilities < 1)
    tolerance = np.vectorize(count_tolerance)(
        draws, probabilities, tested.sum()
    )
    expected = draws * probabilities
    assert np.all(np.abs(counts - expected)[tested] < tolerance[tested])
    # Every draw is one of the window's elements with positive probability.
    np.testing.assert_array_equal(
        np.where(probabilities > 0, counts, 0).sum(axis=-2), draws
    )


def test_windows_without_positive_inputs_give_zero_and_finite_gradients():
    x = np.zeros((2, 4, 4, 3), "float32")
    x[:, ::2] = -1.0
    layer = layers.StochasticPooling2D(**OVERLAPPING, seed=0)
    for training in (False, True):
        outputs, input_gradient, _ = layer_gradients(
            layer, x, np.ones((2, 2, 2, 3), "float32"), training=training
        )
        np.testing.assert_array_equal(outputs, 0)
        np.testing.assert_array_equal(input_gradient, 0)


def test_gradient_reaches_only_the_sampled_element(rng):
    x = rng.uniform(0.5, 1.5, (2, 5, 5, 3)).astype("float32")
    layer = layers.StochasticPooling2D(**OVERLAPPING, seed=0)
    upstream = rng.uniform(1, 2, (2, 3, 3, 3)).astype("float32")
    outputs, input_gradient, _ = layer_gradients(
        layer, x, upstream, training=True
    )
    elements = reference.windows(x, **OVERLAPPING)
    indices = reference.window_indices(x.shape, **OVERLAPPING)
    sampled = np.argmax(elements == outputs[..., None, :], axis=-2)
    chosen = np.take_along_axis(indices, sampled[..., None, :], axis=-2)
    expected = reference.gradient_of_chosen(x.shape, chosen, upstream)
    np.testing.assert_allclose(input_gradient, expected, rtol=1e-6)


def test_inference_gradient_is_that_of_the_expectation(rng):
    # d/da_k (sum a_i**2 / sum a_i) = (2 a_k - E) / sum a_i, E the output.
    args = window_args(1, "valid", "channels_last", 3, 3)
    x = rng.uniform(0.5, 1.5, (1, 3, 1)).astype("float32")
    _, input_gradient, _ = layer_gradients(
        layers.StochasticPooling1D(**args), x, np.ones((1, 1, 1), "float32")
    )
    a = x[0, :, 0]
    expectation = (a**2).sum() / a.sum()
    expected = (2 * a - expectation) / a.sum()
    np.testing.assert_allclose(input_gradient[0, :, 0], expected, rtol=1e-5)


@pytest.mark.parametrize("size", [1.0, 2.0**40, 1e30, 1e38])
def test_inference_gradient_of_huge_activations_is_the_expectations(size):
    # Above 2**30 the activations are rescaled by their channel's largest;
    # the gradient is still (2 a_k - E) / sum a_i, which depends on the
    # ratios of the activations only (1e30**2 overflows float32). Near
    # float32's largest (1e38) a reciprocal of the activations would be
    # subnormal, which XLA's CPU code flushes to 0.
    args = window_args(1, "valid", "channels_last", 3, 3)
    a = np.array([0.5, 1.25, 0.75])
    x = (size * a).reshape(1, 3, 1).astype("float32")
    _, input_gradient, _ = layer_gradients(
        layers.StochasticPooling1D(**args), x, np.ones((1, 1, 1), "float32")
    )
    expected = (2 * a - (a**2).sum() / a.sum()) / a.sum()
    np.testing.assert_allclose(input_gradient[0, :, 0], expected, rtol=1e-5)
    outputs = layers.StochasticPooling1D(**args)(x)
    expectation = size * (a**2).sum() / a.sum()
    np.testing.assert_allclose(
        np.asarray(outputs).ravel(), [expectation], rtol=1e-5
    )


def test_same_seed_same_samples_and_different_seed_different_samples(rng):
    # 108 cells, each drawing among several elements.
    x = rng.uniform(0.5, 1.5, (4, 5, 5, 3)).astype("float32")
    assert_seeded_draws_reproducible(
        lambda seed: layers.StochasticPooling2D(**OVERLAPPING, seed=seed), x
    )


@pytest.mark.parametrize("jit_compile", [True, False])
def test_seeded_generator_advances_inside_jit_compiled_training(
    rng, jit_compile
):
    # With a zero learning rate the weights never move, so the loss changes
    # from step to step only if the compiled step draws new samples.
    # Without XLA, TensorFlow draws inside a `tf.cond` branch.
    model = keras.Sequential(
        [
            keras.Input((5, 5, 3)),
            layers.StochasticPooling2D(**OVERLAPPING, seed=3),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.SGD(0.0), "mse", jit_compile=jit_compile)
    x = rng.uniform(0.5, 1.5, (8, 5, 5, 3)).astype("float32")
    y = np.zeros((8, 1), "float32")
    losses = [model.train_on_batch(x, y) for _ in range(3)]
    assert len(set(losses)) == 3, losses


@pytest.mark.parametrize("dtype", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_large_activations_do_not_overflow(rng, dtype):
    # a**2 is about 9e4 here, above float16's largest finite value 65504.
    x = rng.uniform(250, 350, (2, 5, 5, 3)).astype("float32")
    layer = layers.StochasticPooling2D(**OVERLAPPING, dtype=dtype, seed=0)
    outputs = layer(x, training=False)
    assert keras.backend.standardize_dtype(outputs.dtype) == layer.compute_dtype
    expected = reference.pool(
        x, reference.stochastic_expectation, **OVERLAPPING
    )
    outputs = keras.ops.convert_to_numpy(keras.ops.cast(outputs, "float32"))
    np.testing.assert_allclose(outputs, expected, rtol=1e-2)


def test_jax_inference_takes_forward_mode_derivatives(monkeypatch, rng):
    # JAX's fast path defines its derivative as a JVP: `jax.jvp` (forward
    # mode) must give what it gives for the keras.ops form.
    if keras.backend.backend() != "jax":
        pytest.skip("JAX's fast path")
    import jax

    x = random_input(rng, 2, "channels_last")
    direction = rng.standard_normal(x.shape).astype("float32")

    def pool(x):
        return ops.stochastic_pool(x, 3, 2, "same", "channels_last")

    outputs, change = jax.jvp(pool, (x,), (direction,))
    with monkeypatch.context() as patch:
        patch.setattr(backend, "fast_path", lambda *args, **kwargs: None)
        expected, expected_change = jax.jvp(pool, (x,), (direction,))
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(change, expected_change, rtol=1e-4, atol=1e-5)
