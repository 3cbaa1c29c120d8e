import itertools

import keras
import numpy as np
import pytest
import reference

from kpool import layers, ops
from kpool.ops.windows import Window

from .cases import TILED_SHAPES, WINDOW_CASES, random_input, window_args
from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)
from .gradients import layer_gradients
from .statistics import assert_seeded_draws_reproducible, count_tolerance

MIXED_POOLINGS = {
    1: layers.MixedPooling1D,
    2: layers.MixedPooling2D,
    3: layers.MixedPooling3D,
}
KERAS_POOLINGS = {
    "max": {
        1: keras.layers.MaxPooling1D,
        2: keras.layers.MaxPooling2D,
        3: keras.layers.MaxPooling3D,
    },
    "average": {
        1: keras.layers.AveragePooling1D,
        2: keras.layers.AveragePooling2D,
        3: keras.layers.AveragePooling3D,
    },
}


def built_layer(rng, x, mode, granularity, **args):
    """A mixed pooling with random weights, and the reference's output."""
    rank = x.ndim - 2
    layer = MIXED_POOLINGS[rank](
        mode=mode, alpha=0.3, granularity=granularity, **args
    )
    layer.build(x.shape)
    elements = reference.windows(x, **args)
    if mode == "random":
        expected = reference.mixed_pool(elements, 0.3)
    elif mode == "learned":
        a = rng.uniform(0, 1, layer.mixing_weight.shape)
        layer.mixing_weight.assign(a)
        expected = reference.mixed_pool(elements, a)
    else:
        kernel = rng.normal(0, 0.5, layer.gate_kernel.shape)
        layer.gate_kernel.assign(kernel)
        expected = reference.gated_pool(elements, kernel)
    return layer, reference.to_data_format(expected, args["data_format"])


@pytest.mark.parametrize(
    "mode, granularity",
    [("random", "region"), ("learned", "channel"), ("gated", "channel")],
)
@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride", WINDOW_CASES
)
def test_matches_reference(
    rng, mode, granularity, rank, padding, data_format, pool, stride
):
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    layer, expected = built_layer(rng, x, mode, granularity, **args)
    # Inference: "random" mode outputs the expectation.
    outputs = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["learned", "gated"])
def test_matches_reference_with_one_weight_per_layer(rng, mode):
    args = window_args(2, "same", "channels_first", 3, 2)
    x = random_input(rng, 2, "channels_first")
    layer, expected = built_layer(rng, x, mode, "layer", **args)
    outputs = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)


# Window and input sizes for which "same" pads evenly: Keras's torch
# backend averages replicated cells into uneven padding (keras#19721).
@pytest.mark.parametrize(
    "rank, padding, pool, size",
    list(itertools.product((1, 2, 3), ("valid", "same"), (2, 3), (6,))),
)
def test_pure_settings_match_keras_max_and_average_pooling(
    rng, rank, padding, pool, size
):
    size = size + pool % 2  # 6 for 2/2, 7 for 3/2: even padding
    x = rng.standard_normal((2, *(size,) * rank, 3)).astype("float32")
    args = {"pool_size": pool, "strides": 2, "padding": padding}
    for alpha, path in ((1.0, "max"), (0.0, "average")):
        expected = KERAS_POOLINGS[path][rank](**args)(x)
        for mode in ("random", "learned"):
            layer = MIXED_POOLINGS[rank](**args, mode=mode, alpha=alpha)
            for training in (False, True):
                outputs = layer(x, training=training)
                np.testing.assert_allclose(
                    keras.ops.convert_to_numpy(outputs), expected, rtol=1e-6
                )


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_infinities_mix_as_the_two_poolings_give_them(alpha):
    # Windows: all +inf, +inf with a finite cell, +inf with -inf (whose
    # average is NaN), all -inf, finite.
    x = np.array(
        [np.inf, np.inf, np.inf, 1.0, np.inf, -np.inf, -np.inf, -np.inf]
        + [2.0, -1.0],
        "float32",
    ).reshape(1, 10, 1)
    max_pooled = np.ravel(keras.layers.MaxPooling1D(2)(x))
    avg_pooled = np.ravel(keras.layers.AveragePooling1D(2)(x))
    with np.errstate(invalid="ignore"):
        expected = (
            max_pooled
            if alpha == 1
            else avg_pooled
            if alpha == 0
            else alpha * max_pooled + (1 - alpha) * avg_pooled
        )
    outputs = np.ravel(ops.mixed_pool(x, 2, alpha=alpha))
    np.testing.assert_allclose(outputs, expected, rtol=1e-6)
    if 0 < alpha < 1:
        np.testing.assert_array_equal(
            outputs[:4], [np.inf, np.inf, np.nan, -np.inf]
        )


def expected_input_gradient(x, args, a, upstream):
    """a * (gradient of max pooling) + (1 - a) * (that of average pooling),
    for channels_last `x` and a constant `a`."""
    elements = reference.windows(x, **args)
    indices = reference.window_indices(x.shape, **args)
    argmax = np.nanargmax(elements, axis=-2)[..., None, :]
    chosen = np.take_along_axis(indices, argmax, axis=-2)
    gradient = reference.gradient_of_chosen(x.shape, chosen, a * upstream)
    inside = ~np.isnan(indices)
    share = (1 - a) * upstream / inside.sum(axis=-2)
    share = np.broadcast_to(share[..., None, :], indices.shape)
    return gradient + reference.gradient_of_chosen(
        x.shape, indices[inside], share[inside]
    )


# Overlapping windows with padded cells, and windows that tile the input
# (which take their own gradient on TensorFlow).
GRADIENT_WINDOWS = [
    pytest.param(("same", 3, 2), None, id="3s2-same"),
    pytest.param(("valid", 2, 2), TILED_SHAPES[2], id="2s2-tiled"),
]


@pytest.mark.parametrize("window, spatial", GRADIENT_WINDOWS)
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_learned_gradients_reach_both_paths_and_the_mixing_weight(
    rng, granularity, window, spatial
):
    args = window_args(2, window[0], "channels_last", *window[1:])
    x = random_input(rng, 2, "channels_last", spatial=spatial)
    layer, _ = built_layer(rng, x, "learned", granularity, **args)
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    _, input_gradient, (alpha_gradient,) = layer_gradients(layer, x, upstream)

    a = layer.mixing_weight.numpy()
    np.testing.assert_allclose(
        input_gradient,
        expected_input_gradient(x, args, a, upstream),
        rtol=1e-5,
        atol=1e-6,
    )
    elements = reference.windows(x, **args)
    difference = reference.max_pool(elements) - reference.average_pool(elements)
    expected = (upstream * difference).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(
        alpha_gradient,
        expected if granularity == "channel" else expected.sum(),
        rtol=1e-5,
    )


@pytest.mark.parametrize("window, spatial", GRADIENT_WINDOWS)
@pytest.mark.parametrize("granularity", ["region", "channel", "layer"])
def test_random_training_gradient_follows_the_drawn_paths(
    rng, granularity, window, spatial
):
    args = window_args(2, window[0], "channels_last", *window[1:])
    x = random_input(rng, 2, "channels_last", spatial=spatial)
    layer = layers.MixedPooling2D(
        **args, mode="random", granularity=granularity, seed=3
    )
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    outputs, input_gradient, _ = layer_gradients(
        layer, x, upstream, training=True
    )
    # Distinct inputs: a window's max and mean differ, so each output names
    # its path.
    elements = reference.windows(x, **args)
    took_max = outputs == reference.max_pool(elements)
    took_mean = np.isclose(
        outputs, reference.average_pool(elements), rtol=1e-5, atol=1e-6
    )
    assert np.all(took_max ^ took_mean)
    if granularity == "region":
        assert took_max.any() and took_mean.any()
    np.testing.assert_allclose(
        input_gradient,
        expected_input_gradient(x, args, took_max, upstream),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_gated_gradient_reaches_the_gate_kernel(rng, granularity):
    args = window_args(2, "same", "channels_last", 3, 2)
    x = random_input(rng, 2, "channels_last")
    layer, _ = built_layer(rng, x, "gated", granularity, **args)
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    _, input_gradient, (kernel_gradient,) = layer_gradients(layer, x, upstream)

    # d output / d w_j = (max - avg) * s * (1 - s) * x_j, s the gate.
    elements = reference.windows(x, **args)
    region = np.nan_to_num(elements, nan=0.0)
    kernel = layer.gate_kernel.numpy()
    kernel = kernel if kernel.ndim == 2 else kernel[:, None]
    gate = 1 / (1 + np.exp(-(region * kernel).sum(axis=-2)))
    difference = reference.max_pool(elements) - reference.average_pool(elements)
    scale = upstream * difference * gate * (1 - gate)
    expected = (scale[..., None, :] * region).sum(axis=(0, 1, 2))
    if granularity == "layer":
        expected = expected.sum(axis=-1)
    np.testing.assert_allclose(kernel_gradient, expected, rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(input_gradient))


@pytest.mark.parametrize("granularity", ["region", "channel", "layer"])
def test_random_training_draws_max_with_probability_alpha(rng, granularity):
    alpha = 0.3
    examples, channels = 4000, 3
    x = rng.standard_normal((examples, 4, channels)).astype("float32")
    layer = layers.MixedPooling1D(
        2, mode="random", alpha=alpha, granularity=granularity, seed=5
    )
    outputs = np.asarray(layer(x, training=True))
    maxima = x.reshape(examples, 2, 2, channels).max(axis=2)
    means = x.reshape(examples, 2, 2, channels).mean(axis=2)
    took_max = outputs == maxima
    # Every output cell is its window's max or its mean, never a mix.
    assert np.all(took_max | (outputs == means))
    # All the cells of a unit share one draw.
    unit_axes = {"region": (), "channel": (1,), "layer": (1, 2)}[granularity]
    if unit_axes:
        assert np.all(took_max.all(unit_axes) | ~took_max.any(unit_axes))
        took_max = took_max.any(unit_axes)
    draws = took_max.size
    tolerance = count_tolerance(draws, alpha, 1)
    assert abs(took_max.sum() - draws * alpha) < tolerance


def test_random_training_same_seed_same_draws(rng):
    # 54 units, each taking max pooling with probability 1/2.
    x = random_input(rng, 2, "channels_last")
    assert_seeded_draws_reproducible(
        lambda seed: layers.MixedPooling2D(2, seed=seed), x
    )


def test_learned_alpha_stays_in_the_unit_interval(rng):
    model = keras.Sequential(
        [
            keras.Input((4, 1)),
            layers.MixedPooling1D(2, mode="learned", granularity="channel"),
            keras.layers.Flatten(),
        ]
    )
    # A large step pushes `a` far out of [0, 1]; the constraint clips it.
    model.compile(keras.optimizers.SGD(1e3), "mse")
    x = rng.standard_normal((8, 4, 1)).astype("float32")
    model.fit(x, 10 * np.abs(x[:, ::2, 0]), epochs=1, verbose=0)
    a = model.layers[0].mixing_weight.numpy()
    assert np.all((a == 0) | (a == 1)), a


def test_unit_interval_clips_and_round_trips_its_config():
    constraint = keras.constraints.deserialize(
        keras.constraints.serialize(layers.UnitInterval())
    )
    assert isinstance(constraint, layers.UnitInterval)
    clipped = constraint(keras.ops.convert_to_tensor([-0.5, 0.25, 1.5]))
    np.testing.assert_array_equal(clipped, [0.0, 0.25, 1.0])


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, id="{}d-{}-{}-{}".format(*case))
        for case in (
            (1, "same", "channels_first", "layer"),
            (2, "same", "channels_last", "channel"),
            (2, "valid", "channels_first", "channel"),
            (3, "same", "channels_last", "channel"),
        )
    ],
)
def test_gate_fast_path_matches_keras_ops_form(monkeypatch, rng, case):
    # torch's: one depthwise convolution per filter, for every rank.
    rank, padding, data_format, granularity = case
    window = Window(rank, 3, 2, padding, data_format)
    skip_without_fast_path("window_responses", window)
    x = random_input(rng, rank, data_format)
    channels = x.shape[window.channel_axis]
    shape = (3**rank,)
    if granularity == "channel":
        shape += (channels,)
    kernel = rng.normal(0, 0.5, shape).astype("float32")
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: ops.mixed_pool(
            x, 3, 2, padding, data_format, gate_kernel=kernel
        ),
        x,
        rng,
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "case",
    list(
        itertools.product(
            [1, 2, 3], ["valid", "same"], ["channels_last", "channels_first"]
        )
    ),
    ids=lambda case: "{}d-{}-{}".format(*case),
)
def test_pooling_fast_paths_match_keras_ops_form(monkeypatch, rng, case):
    """Max and average pooling as mixed pooling uses them (torch: its own
    poolings on a permuted view), with ties and zeros in the input. Every
    case on every backend: one `case` parameter escapes conftest.py's grid
    sample."""
    rank, padding, data_format = case
    skip_without_fast_path("window_means")
    x = random_input(rng, rank, data_format)
    x = np.round(x * 4) / 4
    outputs = assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: ops.mixed_pool(x, 3, 2, padding, data_format, alpha=0.3),
        x,
        rng,
    )
    args = window_args(rank, padding, data_format, 3, 2)
    expected = 0.3 * reference.pool(x, reference.max_pool, **args)
    expected += 0.7 * reference.pool(x, reference.average_pool, **args)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
