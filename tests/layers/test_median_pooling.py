"""MedianPooling1D/2D/3D: numpy.median of each window."""

import importlib
import itertools
import math

import keras
import numpy as np
import pytest
from absl.testing import parameterized
from keras.src import testing

from kpool import layers, ops

from .assertions import (
    assert_jit_matches_eager,
    assert_keras_file_round_trip,
    gradients,
    numeric,
    sample,
    to_format,
    windows,
)
from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)

median_module = importlib.import_module("kpool.ops.median_pool")

MEDIANS = {
    1: layers.MedianPooling1D,
    2: layers.MedianPooling2D,
    3: layers.MedianPooling3D,
}
SPATIAL = {1: (7,), 2: (7, 6), 3: (5, 6, 5)}
FORMATS = ("channels_last", "channels_first")


def median_pool(x, pool_size, strides, padding, data_format):
    """`numpy.nanmedian` of each window padded with NaN: `numpy.median` of
    its cells inside the input."""
    cells = windows(x, pool_size, strides, padding, data_format)
    return to_format(np.nanmedian(cells, axis=-2), data_format)


CASES = [
    pytest.param(*case, id="{}d-{}-{}-{}s{}".format(*case))
    for case in itertools.product(
        (1, 2, 3), ("valid", "same"), FORMATS, (2, 3), (1, 2)
    )
    if case[3] >= case[4]
]


@pytest.mark.parametrize("rank, padding, data_format, pool, stride", CASES)
def test_matches_numpy_median(rng, rank, padding, data_format, pool, stride):
    args = {
        "pool_size": (pool,) * rank,
        "strides": (stride,) * rank,
        "padding": padding,
        "data_format": data_format,
    }
    x = sample(rng, rank, data_format, SPATIAL[rank])
    layer = MEDIANS[rank](**args)
    outputs = numeric(layer(x))
    assert outputs.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(
        outputs, median_pool(x, **args), rtol=1e-6, atol=1e-6
    )


def test_even_windows_average_the_two_middle_values():
    # numpy.median's convention; timm's MedianPool2d (torch.median) would
    # give the lower middle value, 2.
    x = np.array([[1.0, 9.0], [2.0, 4.0]], "float32").reshape(1, 2, 2, 1)
    outputs = numeric(layers.MedianPooling2D(2)(x))
    np.testing.assert_array_equal(outputs.ravel(), [3.0])
    assert np.median(x) == 3.0


def test_same_leaves_padded_cells_out():
    # A zero padded cell counted would be the median of [5, 5, pad] edges.
    x = np.full((1, 5, 1), 5.0, "float32")
    outputs = numeric(layers.MedianPooling1D(3, 1, "same")(x))
    np.testing.assert_array_equal(outputs.ravel(), [5.0] * 5)
    x = np.array([1.0, 2.0, 3.0, 4.0], "float32").reshape(1, 4, 1)
    outputs = numeric(layers.MedianPooling1D(3, 1, "same")(x))
    # Edge windows hold two cells: the mean of them.
    np.testing.assert_array_equal(outputs.ravel(), [1.5, 2.0, 3.0, 3.5])


@pytest.mark.parametrize("pool, padding", [(3, "valid"), (2, "same")])
def test_gradient_goes_to_the_middle_cells(rng, pool, padding):
    # Odd windows: all of it to the median cell; even ones: half to each
    # middle cell (the same-padded edge windows of two cells included).
    args = {
        "pool_size": (pool, pool),
        "strides": (2, 2),
        "padding": padding,
        "data_format": "channels_last",
    }
    x = sample(rng, 2, "channels_last", (7, 7))
    layer = layers.MedianPooling2D(**args)
    upstream = rng.uniform(0.5, 1.5, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    _, input_gradient, _ = gradients(layer, x, upstream)
    np.testing.assert_allclose(
        input_gradient,
        median_gradient(x, upstream, args),
        rtol=1e-6,
        atol=1e-6,
    )


def median_gradient(x, upstream, args):
    """The input gradient of `sum(upstream * median pooling of x)` (2D,
    channels last): each window's middle value(s) take(s) the upstream
    gradient, half each, at the first cell of the window, in row-major
    order, equal to it (the only such cell where no values tie)."""
    cells = windows(x, **args)
    flat = np.arange(x.size, dtype="float64").reshape(x.shape)
    index = windows(flat, **args)
    expected = np.zeros(x.size)
    for position in np.ndindex(*cells.shape[:-2]):
        for channel in range(x.shape[-1]):
            values = cells[(*position, slice(None), channel)]
            where = index[(*position, slice(None), channel)]
            inside = ~np.isnan(values)
            ordered = np.sort(values[inside])
            m = inside.sum()
            # An odd window's middle value twice, each with half.
            for value in (ordered[(m - 1) // 2], ordered[m // 2]):
                first = np.flatnonzero(values[inside] == value)[0]
                expected[int(where[inside][first])] += (
                    upstream[(*position, channel)] / 2
                )
    return expected.reshape(x.shape)


def test_nan_and_infinities():
    x = np.array([np.nan, 1.0, 2.0, np.inf, np.inf, 5.0, -np.inf, np.inf])
    x = x.reshape(1, 8, 1).astype("float32")
    outputs = numeric(ops.median_pool(x, 2))
    expected = np.median(x.reshape(4, 2), axis=1)  # nan, inf, inf, nan
    np.testing.assert_array_equal(outputs.ravel(), expected)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32"])
def test_integer_inputs_keep_their_dtype(rng, dtype):
    # An 8-bit image's median filter, say: odd windows give a cell; "same"
    # edge windows of an even count the mean of two middle values,
    # truncated toward zero as a cast truncates.
    low = 0 if dtype == "uint8" else -100
    x = rng.integers(low, 120, (2, 7, 7, 3)).astype(dtype)
    args = {"pool_size": 3, "strides": 2, "padding": "same"}
    outputs = ops.median_pool(x, data_format="channels_last", **args)
    assert keras.backend.standardize_dtype(outputs.dtype) == dtype
    expected = median_pool(
        x.astype("float64"),
        (3, 3),
        (2, 2),
        "same",
        "channels_last",
    )
    np.testing.assert_array_equal(
        numeric(outputs), np.trunc(expected).astype(dtype)
    )


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"pool_size": 0}, "pool_size"),
        ({"pool_size": (3, 3, 3)}, "pool_size"),
        ({"strides": 0}, "strides"),
        ({"padding": "full"}, "padding"),
        ({"data_format": "NCHW"}, "data_format"),
    ],
)
def test_errors_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        layers.MedianPooling2D(**kwargs)


def test_op_checks_inputs():
    with pytest.raises(ValueError, match="`inputs` of median_pool"):
        ops.median_pool(np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="padding='valid' leaves no window"):
        ops.median_pool(np.zeros((1, 2, 4, 2)), 3)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_keras_file_round_trip_and_jit(rng, tmp_path, rank):
    kwargs = {"pool_size": 3, "strides": 2, "padding": "same"}
    x = sample(rng, rank, "channels_last", SPATIAL[rank])
    assert_keras_file_round_trip(MEDIANS[rank](**kwargs), x, tmp_path)
    assert_jit_matches_eager(MEDIANS[rank](**kwargs), x)


def test_mixed_precision_matches_float32(rng):
    x = sample(rng, 2, "channels_last", (7, 6))
    mixed = layers.MedianPooling2D(3, 2, "same", dtype="mixed_float16")(x)
    assert keras.backend.standardize_dtype(mixed.dtype) == "float16"
    expected = numeric(layers.MedianPooling2D(3, 2, "same")(x))
    np.testing.assert_allclose(
        numeric(mixed).astype("float32"), expected, rtol=2e-3, atol=2e-3
    )


class MedianPoolingContractTest(testing.TestCase):
    @parameterized.parameters(
        (1, 3, "valid", "channels_last", (2, 7, 3), (2, 2, 3)),
        (2, 2, "same", "channels_first", (2, 3, 7, 6), (2, 3, 4, 3)),
        (3, 2, "valid", "channels_last", (2, 5, 6, 5, 3), (2, 2, 3, 2, 3)),
    )
    def test_median_pooling(
        self, rank, pool, padding, data_format, shape, output_shape
    ):
        self.run_layer_test(
            MEDIANS[rank],
            init_kwargs={
                "pool_size": pool,
                "strides": None,
                "padding": padding,
                "data_format": data_format,
            },
            input_shape=shape,
            expected_output_shape=output_shape,
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=False,
            assert_built_after_instantiation=True,
        )


# One parameter, not a grid: every backend runs every case.
MEDIAN_PATH_CASES = [
    pytest.param(case, id="{}d-{}-{}-{}s{}".format(*case))
    for case in (
        (2, "same", "channels_last", 3, 1),
        (2, "same", "channels_first", 2, 2),
        (2, "valid", "channels_last", 4, 3),
        (1, "same", "channels_first", 5, 2),
        (3, "same", "channels_last", 2, 1),
    )
]


@pytest.mark.parametrize("case", MEDIAN_PATH_CASES)
def test_selection_network_matches_the_sort(monkeypatch, rng, case):
    rank, padding, data_format, pool, stride = case
    # Windows of up to 27 cells take the selection network; without it
    # every window is sorted. Values and gradients must agree.
    args = {
        "pool_size": pool,
        "strides": stride,
        "padding": padding,
        "data_format": data_format,
    }
    x = sample(rng, rank, data_format, SPATIAL[rank])
    layer = MEDIANS[rank](**args)
    upstream = rng.uniform(0.5, 1.5, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    outputs, gradient, _ = gradients(layer, x, upstream)
    with monkeypatch.context() as patch:
        patch.setattr(median_module, "selection_network", lambda *args: None)
        expected, expected_gradient, _ = gradients(layer, x, upstream)
    np.testing.assert_array_equal(outputs, expected)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-6)


@pytest.mark.parametrize("case", MEDIAN_PATH_CASES)
def test_fast_path_matches_keras_ops_form(monkeypatch, rng, case):
    rank, padding, data_format, pool, stride = case
    skip_without_fast_path("order_statistics")
    x = sample(rng, rank, data_format, SPATIAL[rank])
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: ops.median_pool(x, pool, stride, padding, data_format),
        x,
        rng,
    )


@pytest.mark.parametrize(
    "pool_size, positions",
    [((3,), (1, 2)), ((2, 2), (1, 2)), ((3, 3), (4,)), ((5, 5), (12, 13))],
)
def test_selection_network_selects(rng, pool_size, positions):
    # Run on NumPy arrays: the wires of `positions` hold those positions
    # of the sorted cells, for random cells and for cells with ties.
    network = median_module.selection_network(pool_size, positions)
    assert network is not None
    column_stage, merge_stage, outputs = network
    assert outputs == positions
    rows, size = pool_size[0], math.prod(pool_size)
    columns = size // rows
    for cells in (
        rng.standard_normal((size, 200)),
        rng.integers(0, 3, (size, 200)).astype("float64"),
    ):
        wires = list(cells)
        expanded = [
            (r * columns + q, t * columns + q, low, high)
            for r, t, low, high in column_stage
            for q in range(columns)
        ]
        for i, j, low, high in expanded + list(merge_stage):
            wires[i], wires[j] = (
                np.minimum(wires[i], wires[j]) if low else wires[i],
                np.maximum(wires[i], wires[j]) if high else wires[j],
            )
        ordered = np.sort(cells, axis=0)
        for p in positions:
            np.testing.assert_array_equal(wires[p], ordered[p])


@pytest.mark.parametrize("pool, padding", [(3, "valid"), (2, "same")])
def test_fast_path_sends_a_tie_to_the_first_equal_cell(rng, pool, padding):
    # After a ReLU most windows tie at zero. The fast paths (TensorFlow
    # outside XLA, torch) give all of each median's gradient to the first
    # cell, in row-major order, that equals it; of an even window, both
    # middle values' halves.
    skip_without_fast_path("order_statistics")
    x = np.maximum(rng.normal(size=(2, 7, 7, 3)), 0.0).astype("float32")
    x[0] = 0.0
    args = {
        "pool_size": (pool, pool),
        "strides": (2, 2),
        "padding": padding,
        "data_format": "channels_last",
    }
    layer = layers.MedianPooling2D(**args)
    upstream = rng.uniform(0.5, 1.5, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    outputs, input_gradient, _ = gradients(layer, x, upstream)
    assert (outputs[0] == 0).all()
    np.testing.assert_allclose(
        input_gradient,
        median_gradient(x, upstream, args),
        rtol=1e-6,
        atol=1e-6,
    )
