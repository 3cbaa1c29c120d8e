import keras
import numpy as np
import pytest
import reference
import torch
import torch.nn.functional as F
from keras.src import testing

import kpool
from kpool import layers

from .cases import WINDOW_CASES, input_shape, random_input, window_args
from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)
from .gradients import layer_gradients
from .saving import assert_reloads_from_keras_file
from .torch_reference import value_and_gradient

LP_POOLINGS = {
    1: layers.LPPooling1D,
    2: layers.LPPooling2D,
    3: layers.LPPooling3D,
}
TORCH_LP_POOLS = {1: F.lp_pool1d, 2: F.lp_pool2d, 3: F.lp_pool3d}


def reference_lp(norm_type):
    def reduction(window_elements):
        powers = np.abs(window_elements) ** norm_type
        return np.nansum(powers, axis=-2) ** (1 / norm_type)

    return reduction


@pytest.mark.parametrize("norm_type", [1, 2, 3.5])
@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride", WINDOW_CASES
)
def test_matches_reference(
    rng, rank, padding, data_format, pool, stride, norm_type
):
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    outputs = LP_POOLINGS[rank](norm_type, **args)(x)
    expected = reference.pool(
        x.astype("float64"), reference_lp(norm_type), **args
    )
    np.testing.assert_allclose(outputs, expected, rtol=1e-5)


def torch_lp_pool(rank, norm_type, args, spatial):
    """torch's lp_pool on the input zero-padded as Keras's "same" pads."""
    pads = []
    if args["padding"] == "same":
        for n, k, s in zip(
            spatial, args["pool_size"], args["strides"], strict=True
        ):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
    # F.pad takes the last dim's pads first.
    flat_pads = [p for pair in reversed(pads) for p in pair]

    def function(x):
        if flat_pads:
            x = F.pad(x, flat_pads)
        # lp_pool1d's window and stride are ints.
        pool, stride = args["pool_size"], args["strides"]
        if rank == 1:
            pool, stride = pool[0], stride[0]
        return TORCH_LP_POOLS[rank](x, norm_type, pool, stride)

    return function


@pytest.mark.parametrize(
    "norm_type, signs", [(1, "positive"), (2.5, "positive"), (2, "any")]
)
@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride",
    [c for c in WINDOW_CASES if c.values[3] == 3],
)
def test_values_and_gradients_match_torch(
    rng, rank, padding, data_format, pool, stride, norm_type, signs
):
    # torch agrees where it is defined: non-negative inputs, or an even p.
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    if signs == "positive":
        x = np.abs(x)
    layer = LP_POOLINGS[rank](norm_type, **args)
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    outputs, input_gradient, _ = layer_gradients(layer, x, upstream)

    spatial = input_shape(rank, "channels_last")[1:-1]
    expected, expected_gradient = value_and_gradient(
        torch_lp_pool(rank, norm_type, args, spatial), x, upstream, data_format
    )
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        input_gradient, expected_gradient, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("norm_type", [1, 1.5, 2, 3, 4])
@pytest.mark.parametrize(
    "rank, padding, data_format, pool, stride", WINDOW_CASES
)
def test_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, padding, data_format, pool, stride, norm_type
):
    # torch's own lp_pool: on x for an even p, on |x| for any other.
    # TensorFlow's root with its guard in the gradient.
    if kpool.backend.fast_path("positive_root") is None:
        skip_without_fast_path("lp_pool")
    args = window_args(rank, padding, data_format, pool, stride)
    x = random_input(rng, rank, data_format)
    # Zeros at the start of each spatial dim: windows of zeros too.
    first = (slice(None),) * (1 if data_format == "channels_last" else 2)
    x[(*first, *(slice(0, 3),) * rank)] = 0.0
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: kpool.ops.lp_pool(x, norm_type, **args),
        x,
        rng,
        rtol=1e-5,
    )


@pytest.mark.parametrize("size", [5, 6, 7, 8])
@pytest.mark.parametrize("pool, stride", [(2, 2), (3, 2), (2, 3), (4, 3)])
def test_fast_path_pads_same_as_keras(monkeypatch, rng, size, pool, stride):
    skip_without_fast_path("lp_pool")
    x = rng.standard_normal((2, 3, size, size + 1)).astype("float32")
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: kpool.ops.lp_pool(
            x, 2, pool, stride, "same", "channels_first"
        ),
        x,
        rng,
        rtol=1e-5,
    )


def test_negative_inputs_count_by_magnitude():
    x = np.array([3.0, -4.0, -1.0, 0.0], "float32").reshape(1, 4, 1)
    outputs = kpool.ops.lp_pool(x, 2, 2)
    np.testing.assert_allclose(np.ravel(outputs), [5.0, 1.0], rtol=1e-6)
    outputs = kpool.ops.lp_pool(x, 1, 2)
    np.testing.assert_allclose(np.ravel(outputs), [7.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("norm_type", [1, 2, 3.5])
def test_nan_and_inf_propagate_as_in_average_pooling(norm_type):
    # Each window's p-norm in float64 NumPy: NaN where a cell is NaN, inf
    # where one is infinite and none is NaN, as Keras's average pooling of
    # |x| (its max pooling drops NaN on TensorFlow's CPU).
    x = np.array(
        [[np.nan, 1.0, 2.0, -np.inf, np.inf, np.nan, 0.0, 0.0, -3.0, 4.0]],
        "float32",
    ).reshape(1, 10, 1)
    outputs = np.ravel(kpool.ops.lp_pool(x, norm_type, 2))
    windows = np.abs(x.reshape(5, 2).astype("float64"))
    expected = np.sum(windows**norm_type, axis=1) ** (1 / norm_type)
    means = np.ravel(keras.layers.AveragePooling1D(2)(np.abs(x)))
    np.testing.assert_array_equal(np.isnan(outputs), np.isnan(means))
    np.testing.assert_allclose(outputs, expected, rtol=1e-6)


@pytest.mark.parametrize("norm_type", [1, 2, 3.5])
def test_gradient_of_an_all_zero_window_is_finite(norm_type):
    x = np.zeros((1, 4, 2), "float32")
    x[0, 2:] = 1.0
    layer = layers.LPPooling1D(norm_type, pool_size=2)
    _, gradient, _ = layer_gradients(layer, x, np.ones((1, 2, 2), "float32"))
    assert np.all(np.isfinite(gradient))
    if norm_type > 1:  # At p=1 it is a subgradient of |x| at 0.
        np.testing.assert_array_equal(gradient[0, :2], 0)


@pytest.mark.parametrize("norm_type", [0.5, 0, -1, float("inf"), "2", True])
def test_bad_norm_type_is_named(norm_type):
    with pytest.raises(ValueError, match="`norm_type` must be a finite"):
        layers.LPPooling2D(norm_type)
    with pytest.raises(ValueError, match="`norm_type`"):
        kpool.ops.lp_pool(np.ones((1, 4, 4, 1)), norm_type, 2)


def test_bad_window_arguments_are_named():
    with pytest.raises(ValueError, match="`padding`"):
        layers.LPPooling2D(2, padding="full")
    with pytest.raises(ValueError, match="`pool_size`"):
        layers.LPPooling2D(2, pool_size=0)
    with pytest.raises(ValueError, match="`strides`"):
        layers.LPPooling2D(2, strides=(1, 2, 3))
    with pytest.raises(ValueError, match="`data_format`"):
        layers.LPPooling2D(2, data_format="nhwc")
    with pytest.raises(ValueError, match="`pool_size`"):
        kpool.ops.lp_pool(np.ones((1, 2, 2, 1)), 2, 3)


def test_reloads_from_keras_file(rng, tmp_path):
    x = random_input(rng, 2, "channels_first")
    inputs = keras.Input(x.shape[1:])
    outputs = layers.LPPooling2D(
        3, pool_size=3, strides=2, padding="same", data_format="channels_first"
    )(inputs)
    model = keras.Model(inputs, outputs)
    restored = assert_reloads_from_keras_file(model, x, tmp_path)
    assert restored.layers[-1].get_config() == model.layers[-1].get_config()


def test_jit_matches_eager(rng):
    x = random_input(rng, 2, "channels_last")
    layer = layers.LPPooling2D(2, pool_size=3, strides=2, padding="same")
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    model.compile(jit_compile=True)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), layer(x), rtol=1e-5, atol=1e-6
    )


# Each rank, data format and padding at least once, in few (slow) runs.
CONTRACT_CASES = [
    (1, "channels_last", "same"),
    (2, "channels_last", "valid"),
    (2, "channels_first", "same"),
    (3, "channels_first", "valid"),
]


class LPPoolingContractTest(testing.TestCase):
    def test_layer_contract(self):
        for rank, data_format, padding in CONTRACT_CASES:
            cls = LP_POOLINGS[rank]
            kwargs = {
                "norm_type": 2.0,
                "pool_size": 3,
                "strides": 2,
                "padding": padding,
                "data_format": data_format,
            }
            shape = input_shape(rank, data_format)
            self.run_layer_test(
                cls,
                init_kwargs=kwargs,
                input_shape=shape,
                expected_output_shape=cls(**kwargs).compute_output_shape(shape),
                expected_num_trainable_weights=0,
                expected_num_non_trainable_weights=0,
                assert_built_after_instantiation=True,
            )


def test_torch_module_equivalent_has_the_same_output(rng):
    # The README's migration line: torch.nn.LPPool2d(2, 3, 2).
    x = np.abs(random_input(rng, 2, "channels_first"))
    expected = torch.nn.LPPool2d(2, 3, 2)(torch.tensor(x)).numpy()
    layer = layers.LPPooling2D(
        norm_type=2, pool_size=3, strides=2, data_format="channels_first"
    )
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
