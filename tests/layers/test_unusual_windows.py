"""Windows the main grid does not cover: strides larger than the window,
stride 1, wide windows and different sizes per axis.

The window-extracting layers (gated and stochastic pooling) split each axis
into stride phases, so these shapes exercise cropping, padding and phase
offsets that square 2/2 and 3/2 windows do not.
"""

import itertools

import keras
import numpy as np
import pytest
import reference

from kpool import layers, ops

from .cases import random_input
from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)
from .test_mixed_pooling import built_layer

CASES = [
    pytest.param(
        rank,
        pool,
        stride,
        padding,
        data_format,
        id=f"{rank}d-{pool}s{stride}-{padding}-{data_format}",
    )
    for (rank, pool, stride), padding, data_format in itertools.product(
        [
            (2, (2, 2), (3, 3)),
            (2, (3, 3), (1, 1)),
            (2, (5, 5), (2, 2)),
            (3, (3, 2, 4), (1, 3, 2)),
        ],
        ("valid", "same"),
        ("channels_last", "channels_first"),
    )
]
STOCHASTIC_POOLINGS = {
    2: layers.StochasticPooling2D,
    3: layers.StochasticPooling3D,
}
MIN_POOLINGS = {2: layers.MinPooling2D, 3: layers.MinPooling3D}


def window_args(pool, stride, padding, data_format):
    return {
        "pool_size": pool,
        "strides": stride,
        "padding": padding,
        "data_format": data_format,
    }


@pytest.mark.parametrize("rank, pool, stride, padding, data_format", CASES)
@pytest.mark.parametrize(
    "mode, granularity", [("gated", "channel"), ("gated", "layer")]
)
def test_gated_matches_reference(
    rng, mode, granularity, rank, pool, stride, padding, data_format
):
    args = window_args(pool, stride, padding, data_format)
    x = random_input(rng, rank, data_format)
    layer, expected = built_layer(rng, x, mode, granularity, **args)
    outputs = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rank, pool, stride, padding, data_format", CASES)
def test_stochastic_matches_reference(
    rng, rank, pool, stride, padding, data_format
):
    args = window_args(pool, stride, padding, data_format)
    x = random_input(rng, rank, data_format)
    layer = STOCHASTIC_POOLINGS[rank](**args, seed=0)
    expected = reference.pool(x, reference.stochastic_expectation, **args)
    inference = keras.ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_allclose(inference, expected, rtol=1e-5, atol=1e-6)

    # Training: each output is a positive element of its own window, or 0
    # where the window has no positive element.
    sampled = keras.ops.convert_to_numpy(layer(x, training=True))
    if data_format == "channels_first":
        sampled = np.moveaxis(sampled, 1, -1)
    elements = reference.windows(x, **args)
    has_mass = (elements > 0).any(axis=-2)
    chosen = (elements == sampled[..., None, :]) & (elements > 0)
    assert np.array_equal(chosen.any(axis=-2), has_mass)
    np.testing.assert_array_equal(sampled[~has_mass], 0)


@pytest.mark.parametrize("rank, pool, stride, padding, data_format", CASES)
def test_min_matches_reference(rng, rank, pool, stride, padding, data_format):
    args = window_args(pool, stride, padding, data_format)
    x = random_input(rng, rank, data_format)
    outputs = keras.ops.convert_to_numpy(MIN_POOLINGS[rank](**args)(x))
    expected = reference.pool(x, reference.min_pool, **args)
    np.testing.assert_allclose(outputs, expected, rtol=1e-6)


@pytest.mark.parametrize("rank, pool, stride, padding, data_format", CASES)
def test_stochastic_training_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, pool, stride, padding, data_format
):
    # Without rescaling, TensorFlow and torch sample each window's cells
    # as separate tensors (`Window.cells`: stride phases, offsets, crops
    # and pads): the same seed must sample the same cells, with the same
    # gradients, as the keras.ops form over the stacked windows.
    skip_without_fast_path("stochastic_sample")
    args = window_args(pool, stride, padding, data_format)
    x = random_input(rng, rank, data_format)
    outputs = assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: ops.stochastic_pool(x, **args, training=True, seed=3),
        x,
        rng,
        rtol=1e-6,
        atol=0,
    )
    assert np.count_nonzero(np.asarray(outputs)) > 0
