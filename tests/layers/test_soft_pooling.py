"""SoftPooling1D/2D/3D (Stergiou, Poppe and Kalliatakis, 2021)."""

import importlib
import itertools

import keras
import numpy as np
import pytest
from absl.testing import parameterized
from keras.src import testing

from kpool import layers, ops
from kpool.backend import SHARED_PEAK_FLOOR
from kpool.ops.window_cells import low_rank_windows
from kpool.ops.windows import Window

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

SOFT = {
    1: layers.SoftPooling1D,
    2: layers.SoftPooling2D,
    3: layers.SoftPooling3D,
}
SPATIAL = {1: (7,), 2: (7, 6), 3: (5, 6, 5)}
FORMATS = ("channels_last", "channels_first")


def softmax_weights(cells):
    """The paper's softmax over each window's cells (axis -2), padded (NaN)
    cells left out, through log-sum-exp in float64."""
    inside = ~np.isnan(cells)
    logits = np.where(inside, cells, -np.inf)
    log_total = np.logaddexp.reduce(logits, axis=-2, keepdims=True)
    return np.where(inside, np.exp(logits - log_total), 0.0)


def soft_pool(x, pool_size, strides, padding, data_format):
    cells = windows(x, pool_size, strides, padding, data_format)
    weights = softmax_weights(cells)
    pooled = (weights * np.nan_to_num(cells)).sum(axis=-2)
    return to_format(pooled, data_format)


def case_args(rank, padding, data_format, pool, stride):
    return {
        "pool_size": (pool,) * rank,
        "strides": (stride,) * rank,
        "padding": padding,
        "data_format": data_format,
    }


CASES = [
    pytest.param(*case, id="{}d-{}-{}-{}s{}".format(*case))
    for case in itertools.product(
        (1, 2, 3), ("valid", "same"), FORMATS, (2, 3), (1, 2)
    )
    if case[3] >= case[4]
]


@pytest.mark.parametrize("rank, padding, data_format, pool, stride", CASES)
def test_matches_the_papers_formula(
    rng, rank, padding, data_format, pool, stride
):
    args = case_args(rank, padding, data_format, pool, stride)
    x = 2 * sample(rng, rank, data_format, SPATIAL[rank])
    layer = SOFT[rank](**args)
    outputs = numeric(layer(x))
    assert outputs.shape == layer.compute_output_shape(x.shape)
    expected = soft_pool(x, **args)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_gradient_is_the_softmax_derivative(rng, rank):
    # dy/dx_i = w_i * (1 + x_i - y) for each window, summed over the
    # windows a cell is in (they overlap: pool 3, stride 2, "same").
    args = case_args(rank, "same", "channels_last", 3, 2)
    x = sample(rng, rank, "channels_last", SPATIAL[rank])
    layer = SOFT[rank](**args)
    upstream = rng.uniform(0.5, 1.5, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    _, input_gradient, _ = gradients(layer, x, upstream)

    cells = windows(x, **args)
    weights = softmax_weights(cells)
    pooled = (weights * np.nan_to_num(cells)).sum(axis=-2, keepdims=True)
    local = (
        weights * (1 + np.nan_to_num(cells) - pooled) * upstream[..., None, :]
    )
    flat = np.arange(x.size, dtype="float64").reshape(x.shape)
    index = windows(flat, **args)
    expected = np.zeros(x.size)
    inside = ~np.isnan(index)
    np.add.at(expected, index[inside].astype(int), local[inside])
    np.testing.assert_allclose(
        input_gradient, expected.reshape(x.shape), rtol=1e-5, atol=1e-6
    )


def test_large_activations_neither_overflow_nor_give_nan():
    # exp(1e4) overflows any float, and 3e38 + 3e38 overflows float32: the
    # window maximum is subtracted and the weights normalised first.
    x = np.array([1e4, 0.0, -1e4, -1e4 + 1, 3e38, 3e38]).reshape(1, 6, 1)
    outputs = numeric(ops.soft_pool(x.astype("float32"), 2))
    np.testing.assert_allclose(
        outputs.ravel(),
        [1e4, -1e4 + 1 / (1 + np.exp(-1)), 3e38],
        rtol=1e-6,
    )


def test_nan_propagates_and_infinities_win():
    x = np.array([np.nan, 1.0, np.inf, 2.0, -np.inf, -np.inf, 1.0, 3.0])
    outputs = numeric(ops.soft_pool(x.reshape(1, 8, 1).astype("float32"), 2))
    softmax = 1.0 * np.exp(1 - 3) / (1 + np.exp(1 - 3)) + 3.0 / (
        1 + np.exp(1 - 3)
    )
    assert np.isnan(outputs[0, 0, 0])
    assert outputs[0, 1, 0] == np.inf
    assert outputs[0, 2, 0] == -np.inf
    np.testing.assert_allclose(outputs[0, 3, 0], softmax, rtol=1e-6)


def test_padded_cells_carry_no_weight():
    # All inputs are below -4: a zero padded cell given weight would pull
    # the edge windows toward 0 (and dominate their softmax).
    x = np.full((1, 5, 5, 1), -5.0, "float32")
    outputs = numeric(layers.SoftPooling2D(3, 2, "same")(x))
    np.testing.assert_allclose(outputs, np.full((1, 3, 3, 1), -5.0), rtol=1e-6)


def test_channels_are_pooled_independently(rng):
    # The official CPU code shares one weight per cell across channels;
    # the paper's (and kpool's) channel 0 ignores channel 1.
    x = sample(rng, 2, "channels_last", (4, 4), channels=2)
    changed = x.copy()
    changed[..., 1] *= 10
    first = numeric(layers.SoftPooling2D(2)(x))[..., 0]
    second = numeric(layers.SoftPooling2D(2)(changed))[..., 0]
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"pool_size": 0}, "pool_size"),
        ({"pool_size": (2, 2, 2)}, "pool_size"),
        ({"strides": -1}, "strides"),
        ({"padding": "full"}, "padding"),
        ({"data_format": "NHWC"}, "data_format"),
    ],
)
def test_errors_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        layers.SoftPooling2D(**kwargs)


def test_op_checks_inputs():
    with pytest.raises(ValueError, match="`inputs` of soft_pool"):
        ops.soft_pool(np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="padding='valid' leaves no window"):
        ops.soft_pool(np.zeros((1, 1, 4, 2)), 2)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_keras_file_round_trip_and_jit(rng, tmp_path, rank):
    kwargs = {"pool_size": 3, "strides": 2, "padding": "same"}
    x = sample(rng, rank, "channels_last", SPATIAL[rank])
    assert_keras_file_round_trip(SOFT[rank](**kwargs), x, tmp_path)
    assert_jit_matches_eager(SOFT[rank](**kwargs), x)


def test_mixed_precision_matches_float32(rng):
    x = sample(rng, 2, "channels_last", (7, 6))
    mixed = layers.SoftPooling2D(3, 2, "same", dtype="mixed_float16")(x)
    assert keras.backend.standardize_dtype(mixed.dtype) == "float16"
    expected = numeric(layers.SoftPooling2D(3, 2, "same")(x))
    np.testing.assert_allclose(
        numeric(mixed).astype("float32"), expected, rtol=2e-3, atol=2e-3
    )


class SoftPoolingContractTest(testing.TestCase):
    @parameterized.parameters(
        (1, "valid", "channels_last", (2, 7, 3), (2, 3, 3)),
        (2, "same", "channels_first", (2, 3, 7, 6), (2, 3, 4, 3)),
        (3, "same", "channels_last", (2, 5, 6, 5, 3), (2, 3, 3, 3, 3)),
    )
    def test_soft_pooling(
        self, rank, padding, data_format, shape, output_shape
    ):
        self.run_layer_test(
            SOFT[rank],
            init_kwargs={
                "pool_size": 2,
                "strides": 2,
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


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_low_rank_windows_are_window_windows(rng, rank, data_format, padding):
    # Soft, tree and median pooling extract windows from tensors of rank
    # 5 at most (TFLite's limit), the same tensor as Window.windows.
    for pool, stride in ((2, 2), (3, 2), (3, 1), (2, 3)):
        window = Window(rank, pool, stride, padding, data_format)
        padded = window.zero_pad(sample(rng, rank, data_format, SPATIAL[rank]))
        np.testing.assert_array_equal(
            numeric(low_rank_windows(window, padded)),
            numeric(window.windows(padded)),
        )


# One parameter, not a grid: every backend runs every case. Disjoint
# windows (strides >= pool_size) take the reshaped form, overlapping ones
# the windows.
SOFT_PATH_CASES = [
    pytest.param(case, id="{}d-{}-{}-{}s{}".format(*case))
    for case in (
        (2, "valid", "channels_last", 2, 2),
        (2, "same", "channels_first", 2, 2),
        (2, "same", "channels_last", 2, 3),
        (1, "valid", "channels_first", 3, 4),
        (1, "same", "channels_last", 2, 3),
        (3, "same", "channels_first", 2, 2),
        (2, "same", "channels_last", 3, 2),
        (2, "valid", "channels_first", 3, 2),
        (1, "valid", "channels_last", 3, 1),
    )
]


@pytest.mark.parametrize("offset", [0.0, 100.0])
@pytest.mark.parametrize("case", SOFT_PATH_CASES)
def test_fast_path_matches_keras_ops_form(monkeypatch, rng, case, offset):
    # An offset of 100 overflows the unshifted form: TensorFlow and torch
    # then shift by each channel's maximum, where the `keras.ops` form
    # shifts by each window's. The gradient's `1 + x - y` then differs
    # by a few of float32's steps at 100 (7.6e-6 each).
    rank, padding, data_format, pool, stride = case
    window = Window(rank, pool, stride, padding, data_format)
    skip_without_fast_path("disjoint_soft_pool", window)
    x = 2 * sample(rng, rank, data_format, SPATIAL[rank]) + offset
    x = x.astype("float32")
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: ops.soft_pool(x, pool, stride, padding, data_format),
        x,
        rng,
        rtol=1e-5,
        atol=1e-4 if offset else 1e-6,
    )


@pytest.mark.parametrize("case", SOFT_PATH_CASES)
def test_every_path_matches_the_papers_formula(rng, case):
    # Strides above the pool size too: cells between windows are in none.
    rank, padding, data_format, pool, stride = case
    args = case_args(rank, padding, data_format, pool, stride)
    x = 2 * sample(rng, rank, data_format, SPATIAL[rank])
    np.testing.assert_allclose(
        numeric(ops.soft_pool(x, **args)),
        soft_pool(x, **args),
        rtol=1e-5,
        atol=1e-6,
    )


# The backends whose disjoint SoftPool chooses among the unshifted, the
# shared-shift and the per-window forms, and their modules.
FORM_CHOICE_MODULES = {
    "tensorflow": "kpool.backend.tensorflow.soft_pool",
    "torch": "kpool.backend.torch",
}


def form_choice_module():
    """`(module, data_format)` of this backend's choice of SoftPool forms
    (TensorFlow's CPU poolings take channels last; torch's, first), or a
    skip where it has none."""
    name = keras.backend.backend()
    if name not in FORM_CHOICE_MODULES:
        pytest.skip(f"{name} pools SoftPool in one form")
    module = importlib.import_module(FORM_CHOICE_MODULES[name])
    return module, "channels_last" if name == "tensorflow" else "channels_first"


@pytest.mark.parametrize("case", SOFT_PATH_CASES)
def test_per_window_form_matches_the_papers_formula(monkeypatch, rng, case):
    # TensorFlow and torch take the per-window form only where the shared
    # shift is not exact; a floor above every weight sends every input
    # there, at sizes the windows tile, crop and pad.
    name = keras.backend.backend()
    if name in FORM_CHOICE_MODULES:
        module = importlib.import_module(FORM_CHOICE_MODULES[name])
        monkeypatch.setattr(module, "SHARED_PEAK_FLOOR", 2.0)
    rank, padding, data_format, pool, stride = case
    args = case_args(rank, padding, data_format, pool, stride)
    for spatial in (SPATIAL[rank], (7,) * rank, (9,) * rank):
        x = 2 * sample(rng, rank, data_format, spatial)
        np.testing.assert_allclose(
            numeric(ops.soft_pool(x, **args)),
            soft_pool(x, **args),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize("strides", [1, 2])
def test_large_activations_in_overlapping_and_disjoint_windows(strides):
    # Activations 2e4 apart in one channel: a shift shared by the channel
    # would leave some windows' exponentials all 0.
    x = np.array([1e4, 0.0, -1e4, -1e4 + 1, 30.0, 31.0, -np.inf, 2.0])
    x = x.reshape(1, 8, 1).astype("float32")
    outputs = numeric(ops.soft_pool(x, 2, strides))
    expected = soft_pool(x, (2,), (strides,), "valid", "channels_last")
    np.testing.assert_allclose(outputs, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "padding, pool, stride", [("valid", 2, 2), ("same", 2, 3), ("same", 3, 2)]
)
def test_shared_shift_is_taken_for_ordinary_inputs_and_left_for_far_ones(
    rng, padding, pool, stride
):
    # TensorFlow and torch pool with one shift per channel where that is
    # exact: it must hold for activations of an ordinary range (else the
    # tests of the fast path would only see the per-window form) and not
    # for a window 200 below its channel's maximum, which the op then
    # pools with its own maximum.
    module, data_format = form_choice_module()
    window = Window(2, pool, stride, padding, data_format)
    args = ((pool,) * 2, (stride,) * 2, padding, data_format)
    x = 3 * sample(rng, 2, data_format, (7, 6))
    pooled, weights = module.shared_peak_soft_pool(
        window, keras.ops.convert_to_tensor(x)
    )
    assert np.min(numeric(weights)) >= SHARED_PEAK_FLOOR
    np.testing.assert_allclose(
        numeric(pooled), soft_pool(x, *args), rtol=1e-5, atol=1e-6
    )
    far = x.copy()
    far[0, 0, 0, 0] = 200.0
    _, weights = module.shared_peak_soft_pool(
        window, keras.ops.convert_to_tensor(far)
    )
    assert np.min(numeric(weights)) < SHARED_PEAK_FLOOR
    outputs = ops.soft_pool(far, pool, stride, padding, data_format)
    np.testing.assert_allclose(
        numeric(outputs), soft_pool(far, *args), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "padding, pool, stride", [("valid", 2, 2), ("same", 2, 3), ("same", 3, 2)]
)
def test_unshifted_form_is_taken_for_ordinary_inputs_and_left_for_large_ones(
    monkeypatch, rng, padding, pool, stride
):
    # TensorFlow and torch first pool with `e = exp(x)`, unshifted, as the
    # unsafe formula does: it must be exact for activations of an ordinary
    # range (the form most inputs take) and not for activations above
    # about 85, where `x e` overflows; those take the shared shift, exact
    # for them, and the op's outputs stay the paper's.
    module, data_format = form_choice_module()
    window = Window(2, pool, stride, padding, data_format)
    args = ((pool,) * 2, (stride,) * 2, padding, data_format)
    x = 3 * sample(rng, 2, data_format, (7, 6))
    pooled, weights = module.shared_peak_soft_pool(
        window, keras.ops.convert_to_tensor(x), shifted=False
    )
    assert np.min(numeric(weights)) >= SHARED_PEAK_FLOOR
    np.testing.assert_allclose(
        numeric(pooled), soft_pool(x, *args), rtol=1e-5, atol=1e-6
    )
    # Eagerly, each branch of the choice runs only when taken.
    forms = []
    original = module.shared_peak_soft_pool

    def recorded(window, x, shifted=True):
        forms.append(shifted)
        return original(window, x, shifted)

    monkeypatch.setattr(module, "shared_peak_soft_pool", recorded)
    ops.soft_pool(x, pool, stride, padding, data_format)
    assert forms == [False]
    large = (x + 100).astype("float32")
    forms.clear()
    ops.soft_pool(large, pool, stride, padding, data_format)
    assert forms == [False, True]
    monkeypatch.setattr(module, "shared_peak_soft_pool", original)
    pooled, _ = module.shared_peak_soft_pool(
        window, keras.ops.convert_to_tensor(large), shifted=False
    )
    assert not np.all(np.isfinite(numeric(pooled)))
    pooled, weights = module.shared_peak_soft_pool(
        window, keras.ops.convert_to_tensor(large)
    )
    assert np.min(numeric(weights)) >= SHARED_PEAK_FLOOR
    outputs = ops.soft_pool(large, pool, stride, padding, data_format)
    np.testing.assert_allclose(
        numeric(outputs), soft_pool(large, *args), rtol=1e-5
    )
