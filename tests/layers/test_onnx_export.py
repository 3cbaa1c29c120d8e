"""Models with a kpool layer export to ONNX and serve in onnxruntime.

`model.export(path, format="onnx")` converts the model's inference call:
through tf2onnx on TensorFlow, through torch's exporter on torch (with a
batch of any size, the TorchScript one). One small model per layer and
mode (and per code path, where a layer has several), with its weights
moved off their initial values, must give in onnxruntime, on a batch of
another size than the traced one, the outputs Keras gives.
"""

import keras
import numpy as np
import pytest

from kpool import layers

pytestmark = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "torch"),
    reason="jax2onnx fails on Keras's own MaxPooling2D",
)

SAME = {"pool_size": 3, "strides": 2, "padding": "same"}
FIRST = {"data_format": "channels_first"}


def argmax_and_unpool(inputs):
    values, indices = layers.MaxPoolingWithArgmax2D(2)(inputs)
    return layers.MaxUnpooling2D(2, output_size=(9, 9))(values, indices)


# (id, layer or function of the inputs, channels_first, marks).
CASES = [
    (
        "min",
        lambda: layers.MinPooling2D(**SAME),
        False,
    ),
    ("global-min", lambda: layers.GlobalMinPooling2D(), False),
    (
        "mixed-random",
        lambda: layers.MixedPooling2D(**SAME, mode="random", seed=1),
        False,
    ),
    (
        "mixed-learned",
        lambda: layers.MixedPooling2D(
            **SAME, mode="learned", granularity="channel"
        ),
        False,
    ),
    (
        "mixed-gated",
        lambda: layers.MixedPooling2D(
            **SAME, mode="gated", granularity="channel"
        ),
        False,
    ),
    ("stochastic", lambda: layers.StochasticPooling2D(**SAME, seed=1), False),
    ("lp", lambda: layers.LPPooling2D(norm_type=2, **SAME), False),
    ("gem", lambda: layers.GlobalGeMPooling2D(granularity="channel"), False),
    (
        "fractional-graham",
        lambda: layers.FractionalMaxPooling2D(output_ratio=0.7, seed=0),
        False,
    ),
    (
        "fractional-windows",
        lambda: layers.FractionalMaxPooling2D(
            output_size=(5, 6), pool_size=2, seed=0, **FIRST
        ),
        True,
    ),
    ("argmax-unpool", None, False),
    (
        "spp",
        lambda: layers.SpatialPyramidPooling2D(bins=(1, 2)),
        False,
    ),
    # 9x9 into 3 bins: torch's adaptive pooling, which exports.
    ("spp-dividing", lambda: layers.SpatialPyramidPooling2D(bins=(3,)), False),
    ("blur", lambda: layers.BlurPooling2D(filter_size=3, strides=2), False),
    ("max-blur", lambda: layers.MaxBlurPooling2D(2, 2, filter_size=3), False),
    ("soft-overlapping", lambda: layers.SoftPooling2D(**SAME), False),
    ("soft-disjoint", lambda: layers.SoftPooling2D(2, **FIRST), True),
    ("tree", lambda: layers.TreePooling2D(**SAME), False),
    (
        "tree-channel-depth-3",
        lambda: layers.TreePooling2D(2, depth=3, granularity="channel"),
        False,
    ),
    ("median-network", lambda: layers.MedianPooling2D(**SAME), False),
    # Odd sizes: edge windows of 1 and 2 cells.
    ("median-even", lambda: layers.MedianPooling2D(2, padding="same"), False),
    (
        "median-sorted",
        lambda: layers.MedianPooling2D(6, 1, "same", **FIRST),
        True,
    ),
]


def case_model(make, channels_first):
    shape = (4, 9, 9) if channels_first else (9, 9, 4)
    inputs = keras.Input(shape)
    outputs = argmax_and_unpool(inputs) if make is None else make()(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize(
    "make, channels_first",
    [pytest.param(*case[1:3], marks=case[3:], id=case[0]) for case in CASES],
)
def test_onnx_export_matches_keras(tmp_path, make, channels_first):
    if keras.backend.backend() == "tensorflow":
        pytest.importorskip("tf2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(0)
    model = case_model(make, channels_first)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        # Off the initial values (zero gates, p = 3, ...), kept positive.
        moved = weight.numpy() + rng.uniform(0.1, 0.5, weight.shape)
        weight.assign(moved.astype(weight.dtype))
    x = rng.standard_normal((3, *model.input_shape[1:])).astype("float32")
    expected = np.asarray(model.predict(x, verbose=0))
    path = str(tmp_path / "model.onnx")
    model.export(path, format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(path)
    (served,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)
