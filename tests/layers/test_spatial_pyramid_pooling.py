import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from keras.src import testing

import kpool
from kpool import layers
from kpool.ops.spatial_pyramid_pool import dynamic_adaptive_pool
from kpool.ops.windows import Window

from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)
from .gradients import layer_gradients
from .saving import assert_reloads_from_keras_file
from .torch_reference import to_channels_first

DATA_FORMATS = ("channels_last", "channels_first")
TORCH_POOLS = {"max": F.adaptive_max_pool2d, "average": F.adaptive_avg_pool2d}


def images(rng, data_format, size=(13, 10), batch=2, channels=3):
    shape = (batch, *size, channels)
    x = rng.standard_normal(shape).astype("float32")
    return x if data_format == "channels_last" else np.moveaxis(x, -1, 1)


def torch_pyramid(x, bins, mode, data_format):
    """torch's adaptive pooling per level, flattened in `data_format`."""
    x = torch.tensor(to_channels_first(x, data_format).copy())
    levels = []
    for level in bins:
        pooled = TORCH_POOLS[mode](x, level)
        if data_format == "channels_last":
            pooled = pooled.permute(0, 2, 3, 1)
        levels.append(pooled.reshape(x.shape[0], -1))
    return torch.cat(levels, dim=1).numpy()


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize("size", [(13, 10), (4, 3), (8, 12)])
def test_matches_torch_adaptive_pooling(rng, mode, data_format, size):
    # (4, 3) is smaller than the 4x4 level: bins share cells. (8, 12): the
    # bins of every level divide both dims.
    x = images(rng, data_format, size)
    bins = [1, 2, (4, 3)]
    layer = layers.SpatialPyramidPooling2D(bins, mode, data_format)
    expected = torch_pyramid(x, bins, mode, data_format)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    assert layer.compute_output_shape(x.shape) == expected.shape


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("data_format", DATA_FORMATS)
def test_dynamic_shape_bins_match_the_static_ones(rng, mode, data_format):
    x = images(rng, data_format, (11, 7))
    window = Window(2, 1, 1, "valid", data_format)
    for level in [(1, 1), (2, 2), (4, 3), (3, 5)]:
        static = kpool.ops.spatial_pyramid_pool(x, [level], mode, data_format)
        dynamic = dynamic_adaptive_pool(
            keras.ops.convert_to_tensor(x), level, mode, window
        )
        np.testing.assert_allclose(
            keras.ops.reshape(dynamic, static.shape), static, rtol=1e-5
        )


def test_gradient_matches_torch(rng):
    x = images(rng, "channels_last")
    layer = layers.SpatialPyramidPooling2D([1, 2, 4])
    upstream = rng.uniform(1, 2, (2, 63)).astype("float32")
    _, gradient, _ = layer_gradients(layer, x, upstream)
    x_torch = torch.tensor(np.moveaxis(x, -1, 1).copy(), requires_grad=True)
    levels = [
        F.adaptive_max_pool2d(x_torch, b).permute(0, 2, 3, 1).reshape(2, -1)
        for b in (1, 2, 4)
    ]
    (torch.cat(levels, 1) * torch.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(
        gradient, np.moveaxis(x_torch.grad.numpy(), 1, -1), rtol=1e-6
    )


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize("size", [(13, 10), (4, 3), (8, 12)])
def test_fast_path_matches_keras_ops_form(
    monkeypatch, rng, mode, data_format, size
):
    # torch's adaptive pooling for every level; TensorFlow's pooling where
    # the bins divide the input (8x12, channels last); reductions and a
    # global max or mean in keras.ops. (Ties aside: random inputs.)
    skip_without_fast_path("adaptive_pool")
    x = images(rng, data_format, size)
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: kpool.ops.spatial_pyramid_pool(
            x, [1, 2, (4, 3)], mode, data_format
        ),
        x,
        rng,
    )


def unknown_size_model(data_format="channels_last"):
    shape = (
        (None, None, 3) if data_format == "channels_last" else (3, None, None)
    )
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, data_format=data_format)(inputs)
    x = layers.SpatialPyramidPooling2D([1, 2, 4], data_format=data_format)(x)
    return keras.Model(inputs, keras.layers.Dense(5)(x))


@pytest.mark.parametrize("data_format", DATA_FORMATS)
def test_unknown_size_model_takes_two_image_sizes(rng, tmp_path, data_format):
    if data_format == "channels_first" and keras.backend.backend() == (
        "tensorflow"
    ):
        pytest.skip("TensorFlow's CPU convolutions are channels_last only")
    model = unknown_size_model(data_format)
    assert model.layers[2].output.shape == (None, 4 * 21)
    small = images(rng, data_format, (9, 12))
    large = images(rng, data_format, (20, 17))
    for x in (small, large):
        outputs = model.predict(x, verbose=0)
        assert outputs.shape == (2, 5)
        np.testing.assert_allclose(
            outputs, keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-5
        )
    model.compile(keras.optimizers.SGD(0.01), "mse")
    for x in (small, large):
        history = model.fit(x, np.ones((2, 5), "float32"), verbose=0)
        assert np.isfinite(history.history["loss"][0])
    assert_reloads_from_keras_file(model, small, tmp_path)
    assert_reloads_from_keras_file(model, large, tmp_path)


def test_tensorflow_graph_of_unknown_size(rng):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("a graph of unknown spatial size is TensorFlow's case")
    import tensorflow as tf

    layer = layers.SpatialPyramidPooling2D([1, 2, 4], mode="average")
    function = tf.function(
        layer, input_signature=[tf.TensorSpec((None, None, None, 3))]
    )
    for size in ((9, 12), (20, 17)):
        x = images(rng, "channels_last", size)
        np.testing.assert_allclose(function(x), layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"bins": []}, "bins"),
        ({"bins": [0, 2]}, "bins"),
        ({"bins": [(1, 2, 3)]}, "bins"),
        ({"bins": 4}, "bins"),
        ({"mode": "min"}, "mode"),
        ({"data_format": "nhwc"}, "data_format"),
    ],
)
def test_bad_arguments_are_named(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        layers.SpatialPyramidPooling2D(**kwargs)


def test_bad_rank_is_named():
    with pytest.raises(ValueError, match="`inputs`"):
        kpool.ops.spatial_pyramid_pool(np.ones((2, 4, 3)))


class SpatialPyramidPoolingContractTest(testing.TestCase):
    def test_layer_contract(self):
        for data_format, mode in [
            ("channels_last", "max"),
            ("channels_first", "average"),
        ]:
            shape = (
                (2, 7, 6, 3) if data_format == "channels_last" else (2, 3, 7, 6)
            )
            self.run_layer_test(
                layers.SpatialPyramidPooling2D,
                init_kwargs={
                    "bins": [1, 2, [3, 2]],
                    "mode": mode,
                    "data_format": data_format,
                },
                input_shape=shape,
                expected_output_shape=(2, 3 * 11),
                expected_num_trainable_weights=0,
                expected_num_non_trainable_weights=0,
                assert_built_after_instantiation=True,
            )
