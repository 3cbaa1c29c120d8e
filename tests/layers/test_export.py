"""Models with kpool layers export, and serve where kpool is not installed.

A model holding every kpool layer and mode is trained for a step, exported
with `model.export()` (a TensorFlow SavedModel, on TensorFlow and on JAX
through jax2tf), and loaded in a fresh process that imports TensorFlow but
never kpool (importing it fails there). Its outputs must be the model's
inference outputs. On TensorFlow the SavedModel must also convert to TFLite
with the built-in op set only.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from .cases import layers_of_rank

pytestmark = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax"),
    reason="model.export() writes a SavedModel from TensorFlow and JAX only",
)

# Run in a process of its own: TensorFlow, and no kpool.
SERVE = """
import json, sys
# kpool is installed here: make importing it fail, as where it is not.
sys.modules["kpool"] = None
import numpy as np
import tensorflow as tf
directory, inputs_path, outputs_path, tflite = sys.argv[1:]
served = tf.saved_model.load(directory)
x = np.load(inputs_path)
outputs = {"saved_model": np.asarray(served.serve(tf.constant(x))).tolist()}
if tflite == "1":
    converter = tf.lite.TFLiteConverter.from_saved_model(directory)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    (entry,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(entry["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], x)
    interpreter.invoke()
    (exit,) = interpreter.get_output_details()
    outputs["tflite"] = interpreter.get_tensor(exit["index"]).tolist()
outputs["loaded"] = sorted(m for m in sys.modules if m.startswith("kpool."))
json.dump(outputs, open(outputs_path, "w"))
"""


def every_layer_model(extra_layers=()):
    """Conv, then every kpool 2D layer and mode in turn, then a dense."""
    return keras.Sequential(
        [
            keras.Input((12, 12, 3), batch_size=4),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            *layers_of_rank(2),
            *extra_layers,
            keras.layers.Dense(5),
        ]
    )


def new_operators_model():
    """Every operator of the pooling issues, in one functional model."""
    from kpool import layers

    inputs = keras.Input((24, 24, 3), batch_size=4)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.LPPooling2D(norm_type=2, pool_size=2, strides=1, padding="same")(
        x
    )
    x = layers.SoftPooling2D(2, strides=1, padding="same")(x)
    x = layers.BlurPooling2D(filter_size=3, strides=1)(x)
    x = layers.MaxBlurPooling2D(pool_size=2, strides=2, filter_size=3)(x)
    x = layers.MedianPooling2D(3, strides=1, padding="same")(x)
    x = layers.FractionalMaxPooling2D(output_size=(9, 9), seed=0)(x)
    x = layers.TreePooling2D(2, strides=1, granularity="channel")(x)
    # Shared filters take another fast path than per-channel ones.
    x = layers.TreePooling2D(2, strides=1, depth=3)(x)
    x = layers.MixedPooling2D(2, strides=1, mode="gated", granularity="layer")(
        x
    )
    pyramid = layers.SpatialPyramidPooling2D(bins=(1, 2))(x)
    # Disjoint windows: on TensorFlow a choice of forms (nested `If`s).
    soft = keras.layers.Flatten()(layers.SoftPooling2D(2)(x))
    values, indices = layers.MaxPoolingWithArgmax2D(2)(x)
    x = layers.MaxUnpooling2D(2)(values, indices)
    heads = [layers.GlobalGeMPooling2D()(x), pyramid, soft]
    outputs = keras.layers.Dense(5)(keras.layers.Concatenate()(heads))
    return keras.Model(inputs, outputs)


def serve_elsewhere(directory, x, tmp_path, tflite):
    inputs_path = tmp_path / "inputs.npy"
    outputs_path = tmp_path / "outputs.json"
    np.save(inputs_path, x)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # Nothing of this checkout on the path: kpool cannot be imported there.
    env.pop("PYTHONPATH", None)
    subprocess.run(
        [sys.executable, "-c", SERVE, str(directory), str(inputs_path)]
        + [str(outputs_path), "1" if tflite else "0"],
        check=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    with open(outputs_path) as f:
        return json.load(f)


@pytest.mark.parametrize(
    "make_model, size",
    [(every_layer_model, 12), (new_operators_model, 24)],
    ids=["min-mixed-stochastic", "new-operators"],
)
def test_trained_model_serves_without_kpool(tmp_path, make_model, size):
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, size, size, 3)).astype("float32")
    model.fit(x, rng.normal(size=(4, 5)), epochs=2, verbose=0)
    directory = tmp_path / "exported"
    model.export(str(directory), verbose=False)
    tensorflow = keras.backend.backend() == "tensorflow"
    served = serve_elsewhere(directory, x, tmp_path, tflite=tensorflow)
    assert served["loaded"] == []
    expected = np.asarray(model.predict(x, verbose=0))
    np.testing.assert_allclose(
        served["saved_model"], expected, rtol=1e-5, atol=1e-5
    )
    if tensorflow:
        np.testing.assert_allclose(
            served["tflite"], expected, rtol=1e-4, atol=1e-5
        )


# TFLite ops that XNNPACK, TFLite's CPU delegate, does not run: MIRROR_PAD
# took 11-14x a max pooling's time by itself; SHAPE and PACK are the
# dynamic slice sizes that a batch of unknown size gave (a graph XNNPACK
# leaves to TFLite's reference kernels).
SLOW_TFLITE_OPS = {"MIRROR_PAD", "SHAPE", "PACK"}


def argmax_then_unpool(inputs):
    from kpool import layers

    values, indices = layers.MaxPoolingWithArgmax2D(3, strides=2)(inputs)
    return layers.MaxUnpooling2D(3, strides=2, output_size=(11, 10))(
        values, indices
    )


def layer_of(name, **kwargs):
    def call(inputs):
        from kpool import layers

        return getattr(layers, name)(**kwargs)(inputs)

    return call


@pytest.mark.parametrize(
    "call, slow_ops",
    [
        (layer_of("BlurPooling2D", filter_size=3), SLOW_TFLITE_OPS),
        (
            layer_of("BlurPooling2D", filter_size=5, padding_mode="replicate"),
            SLOW_TFLITE_OPS,
        ),
        (
            layer_of("MaxBlurPooling2D", pool_size=2, filter_size=4),
            SLOW_TFLITE_OPS,
        ),
        (layer_of("MedianPooling2D", pool_size=3, strides=2), SLOW_TFLITE_OPS),
        # Overlapping windows: the argmax once sliced a 6-D tensor, which
        # TFLite's SLICE refuses when the model runs.
        (argmax_then_unpool, set()),
    ],
    ids=["blur-reflect", "blur-replicate", "max-blur", "median", "argmax-3x3"],
)
def test_tflite_runs_the_graph_with_fast_ops(tmp_path, call, slow_ops):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite converts TensorFlow graphs")
    import tensorflow as tf

    inputs = keras.Input((11, 10, 3))
    model = keras.Model(inputs, call(inputs))
    directory = str(tmp_path / "exported")
    model.export(directory, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(directory)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not ops & slow_ops, ops
    x = np.random.default_rng(0).normal(size=(2, 11, 10, 3))
    x = x.astype("float32")
    (entry,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(entry["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], x)
    interpreter.invoke()
    (exit,) = interpreter.get_output_details()
    np.testing.assert_allclose(
        interpreter.get_tensor(exit["index"]),
        model.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )
