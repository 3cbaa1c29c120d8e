import itertools

import keras
import numpy as np
import pytest
import reference

import kpool
from kpool import layers
from kpool.ops.windows import Window

from .cases import WINDOW_CASES, random_input, window_args
from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)
from .gradients import layer_gradients

MIN_POOLINGS = {
    1: layers.MinPooling1D,
    2: layers.MinPooling2D,
    3: layers.MinPooling3D,
}


@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride", WINDOW_CASES
)
def test_matches_reference(rng, rank, padding, data_format, pool, stride):
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    outputs = MIN_POOLINGS[rank](**args)(x)
    expected = reference.pool(x, reference.min_pool, **args)
    np.testing.assert_allclose(outputs, expected, rtol=1e-6)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_padded_cells_never_win(rng, rank):
    # All inputs exceed 1, so a zero-padded cell would show as a 0.
    args = window_args(rank, "same", "channels_last", 3, 2)
    x = 1 + random_input(rng, rank, "channels_last") ** 2
    outputs = np.asarray(MIN_POOLINGS[rank](**args)(x))
    assert outputs.min() >= 1
    expected = reference.pool(x, reference.min_pool, **args)
    np.testing.assert_allclose(outputs, expected, rtol=1e-6)


def test_gradient_reaches_each_windows_minimum(rng):
    args = window_args(2, "same", "channels_last", 3, 2)
    x = random_input(rng, 2, "channels_last")
    layer = layers.MinPooling2D(**args)
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    _, input_gradient, _ = layer_gradients(layer, x, upstream)

    elements = reference.windows(x, **args)
    indices = reference.window_indices(x.shape, **args)
    minimum = np.nanargmin(elements, axis=-2)[..., None, :]
    chosen = np.take_along_axis(indices, minimum, axis=-2)[..., 0, :]
    expected = reference.gradient_of_chosen(x.shape, chosen, upstream)
    np.testing.assert_allclose(input_gradient, expected, rtol=1e-6)


# One `case` parameter: every backend runs every case (the grid sample
# of conftest.py keys on `padding` and `data_format`).
@pytest.mark.parametrize(
    "case",
    list(
        itertools.product(
            ["valid", "same"], ["channels_last", "channels_first"]
        )
    ),
    ids="-".join,
)
@pytest.mark.parametrize("size", [5, 6, 7, 8])
@pytest.mark.parametrize("pool, stride", [(2, 2), (3, 2), (2, 3), (3, 1)])
def test_max_pool_fast_path_matches_keras_ops_form(
    monkeypatch, rng, case, size, pool, stride
):
    """Max pooling as min pooling uses it (torch: its own pooling on a
    permuted view; under "same" its own padding where symmetric, else the
    lowest value as padding)."""
    padding, data_format = case
    args = window_args(2, padding, data_format, pool, stride)
    skip_without_fast_path("max_pool")
    shape = (2, size, size + 1, 3)
    if data_format == "channels_first":
        shape = (2, 3, size, size + 1)
    x = rng.standard_normal(shape).astype("float32")
    outputs = assert_same_outputs_and_gradients(
        monkeypatch, lambda x: kpool.ops.min_pool(x, **args), x, rng
    )
    expected = reference.pool(x, reference.min_pool, **args)
    np.testing.assert_allclose(outputs, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "case",
    list(itertools.product([1, 2, 3], ["valid", "same"], [(2, 2), (3, 2)])),
    ids=lambda case: "-".join(map(str, case)),
)
def test_max_pool_fast_path_ties_and_special_values(monkeypatch, rng, case):
    """Where a window's maximum is tied, infinite or NaN, the fast path
    gives the values and the gradient of `keras.ops.max_pool` (JAX: the
    first maximal cell, and XLA's choice in a window holding NaN)."""
    rank, padding, (pool, stride) = case
    skip_without_fast_path("max_pool")
    x = rng.integers(0, 3, (2, *(6,) * rank, 3)).astype("float32")
    draw = rng.uniform(size=x.shape)
    x[draw < 0.06] = np.nan
    x[(draw >= 0.06) & (draw < 0.12)] = np.inf
    x[(draw >= 0.12) & (draw < 0.18)] = -np.inf
    args = window_args(rank, padding, "channels_last", pool, stride)

    def pool_max(inputs):
        window = Window.of(
            inputs, pool, stride, padding, "channels_last", "max_pool"
        )
        return window.max_pool(inputs)

    outputs = assert_same_outputs_and_gradients(monkeypatch, pool_max, x, rng)
    assert np.isnan(outputs).any() and np.isinf(outputs).any()
    finite = np.where(np.isfinite(x), x, 0.5)
    np.testing.assert_array_equal(
        np.asarray(pool_max(keras.ops.convert_to_tensor(finite))),
        reference.pool(finite, reference.max_pool, **args),
    )
