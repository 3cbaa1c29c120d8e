"""`.keras` round trips for the layer tests."""

import keras
import numpy as np


def assert_reloads_from_keras_file(model, inputs, tmp_path):
    """Saves `model` as .keras, reloads it, and compares predictions."""
    expected = model.predict(inputs, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    outputs = restored.predict(inputs, verbose=0)
    for got, want in zip(
        keras.tree.flatten(outputs), keras.tree.flatten(expected), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return restored
