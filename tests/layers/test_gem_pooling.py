import itertools

import keras
import numpy as np
import pytest
import torch
from keras.src import testing

import kpool
from kpool import layers

from .cases import input_shape, random_input
from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)
from .gradients import layer_gradients
from .saving import assert_reloads_from_keras_file

GEM_POOLINGS = {
    1: layers.GlobalGeMPooling1D,
    2: layers.GlobalGeMPooling2D,
    3: layers.GlobalGeMPooling3D,
}
CASES = list(
    itertools.product(
        (1, 2, 3), ("channels_last", "channels_first"), ("layer", "channel")
    )
)


def torch_gem(x, p, eps, axes):
    """The paper's formula, in torch (its authors' cirtorch `gem`)."""
    return x.clamp(min=eps).pow(p).mean(dim=axes).pow(1.0 / p)


@pytest.mark.parametrize("rank, data_format, granularity", CASES)
def test_values_and_gradients_match_the_formula(
    rng, rank, data_format, granularity
):
    x = random_input(rng, rank, data_format)  # half of it clamped
    layer = GEM_POOLINGS[rank](granularity=granularity, data_format=data_format)
    layer.build(x.shape)
    channels = x.shape[-1 if data_format == "channels_last" else 1]
    p = rng.uniform(1.5, 4, layer.exponent.shape).astype("float32")
    layer.exponent.assign(p)
    upstream = rng.uniform(1, 2, (x.shape[0], channels)).astype("float32")
    outputs, x_gradient, (p_gradient,) = layer_gradients(layer, x, upstream)

    # The formula channels last, where `p` broadcasts over the channels.
    x_last = x if data_format == "channels_last" else np.moveaxis(x, 1, -1)
    x_torch = torch.tensor(x_last.copy(), requires_grad=True)
    p_torch = torch.tensor(p, requires_grad=True)
    expected = torch_gem(x_torch, p_torch, 1e-6, tuple(range(1, rank + 1)))
    (expected * torch.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(outputs, expected.detach(), rtol=1e-5)
    expected_gradient = x_torch.grad.numpy()
    if data_format == "channels_first":
        expected_gradient = np.moveaxis(expected_gradient, -1, 1)
    np.testing.assert_allclose(
        x_gradient, expected_gradient, rtol=1e-4, atol=1e-7
    )
    assert p_gradient.shape == p.shape
    np.testing.assert_allclose(p_gradient, p_torch.grad, rtol=1e-4, atol=1e-6)


def test_numpy_formula_and_keepdims(rng):
    x = random_input(rng, 2, "channels_last")
    outputs = kpool.ops.global_gem_pool(x, p=2.5, eps=1e-3, keepdims=True)
    expected = np.mean(np.maximum(x, 1e-3) ** 2.5, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(outputs, expected ** (1 / 2.5), rtol=1e-5)


def test_p_one_is_the_average_and_large_p_the_max(rng):
    x = np.abs(random_input(rng, 2, "channels_last")) + 0.1
    np.testing.assert_allclose(
        kpool.ops.global_gem_pool(x, p=1.0), x.mean(axis=(1, 2)), rtol=1e-5
    )
    # max * N**(-1/p) <= GeM <= max, over N positions.
    gem = np.asarray(kpool.ops.global_gem_pool(x, p=60.0))
    maximum = x.max(axis=(1, 2))
    cells = x.shape[1] * x.shape[2]
    assert np.all(gem <= maximum * (1 + 1e-6))
    assert np.all(gem >= maximum * cells ** (-1 / 60) * (1 - 1e-6))


def test_p_is_trained(rng):
    x = np.abs(random_input(rng, 2, "channels_last", batch=4))
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            layers.GlobalGeMPooling2D(granularity="channel"),
            keras.layers.Dense(2),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, np.ones((4, 2), "float32"), verbose=0)
    p = keras.ops.convert_to_numpy(model.layers[0].exponent)
    assert p.shape == (3,)
    assert not np.allclose(p, 3.0)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"p": 0}, "p"),
        ({"p": -1.0}, "p"),
        ({"p": "3"}, "p"),
        ({"eps": 0}, "eps"),
        ({"granularity": "region"}, "granularity"),
        ({"data_format": "nhwc"}, "data_format"),
    ],
)
def test_bad_arguments_are_named(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        layers.GlobalGeMPooling2D(**kwargs)


def test_bad_rank_is_named():
    with pytest.raises(ValueError, match="`inputs`"):
        kpool.ops.global_gem_pool(np.ones((2, 3)))


def test_reloads_from_keras_file(rng, tmp_path):
    x = random_input(rng, 3, "channels_first")
    inputs = keras.Input(x.shape[1:])
    layer = layers.GlobalGeMPooling3D(
        granularity="channel", data_format="channels_first"
    )
    model = keras.Model(inputs, layer(inputs))
    layer.exponent.assign([2.0, 3.5, 5.0])
    restored = assert_reloads_from_keras_file(model, x, tmp_path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored.layers[-1].exponent),
        [2.0, 3.5, 5.0],
    )


def test_jit_matches_eager(rng):
    x = np.abs(random_input(rng, 1, "channels_last"))
    layer = layers.GlobalGeMPooling1D()
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    model.compile(jit_compile=True)
    expected = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5)


class GeMPoolingContractTest(testing.TestCase):
    def test_layer_contract(self):
        for rank, data_format, granularity in [
            (1, "channels_last", "layer"),
            (2, "channels_first", "channel"),
            (3, "channels_last", "channel"),
        ]:
            shape = input_shape(rank, data_format)
            self.run_layer_test(
                GEM_POOLINGS[rank],
                init_kwargs={
                    "p": 3.0,
                    "granularity": granularity,
                    "data_format": data_format,
                },
                input_shape=shape,
                expected_output_shape=(2, 3),
                expected_num_trainable_weights=1,
                expected_num_non_trainable_weights=0,
            )


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize(
    "rank, data_format, p",
    [
        (1, "channels_last", 3.0),
        (2, "channels_first", 2.5),
        (3, "channels_last", 1),
    ],
)
def test_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, data_format, p, keepdims
):
    # A fixed Python exponent takes the backend's scalar power.
    skip_without_fast_path("power_mean")
    x = random_input(rng, rank, data_format)
    # Inputs below eps: clamped, with a zero gradient.
    x.flat[::7] = -1.0
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: kpool.ops.global_gem_pool(
            x, p=p, data_format=data_format, keepdims=keepdims
        ),
        x,
        rng,
        rtol=1e-5,
    )
