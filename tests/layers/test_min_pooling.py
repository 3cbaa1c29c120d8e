import itertools

import numpy as np
import pytest
import reference

import kpool
from kpool import layers

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
