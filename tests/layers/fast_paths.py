"""An op run by the backend's fast path and by its `keras.ops` form.

`kpool.backend.fast_path` picks a backend's own form of a piece of an op;
every such form must give the values and gradients of the `keras.ops`
form, which these helpers run by making `fast_path` answer `None`.
"""

import keras
import numpy as np
import pytest

from kpool import backend

from .gradients import layer_gradients


def skip_without_fast_path(name, window=None):
    """Skips the test where this backend has no fast path `name`."""
    if backend.fast_path(name, window=window) is None:
        pytest.skip(f"{keras.backend.backend()} has no fast path {name!r}")


class _Op(keras.layers.Layer):
    """`function` as a layer, for `layer_gradients`."""

    def __init__(self, function, **kwargs):
        super().__init__(**kwargs)
        self.function = function

    def call(self, inputs):
        return self.function(inputs)


def fast_and_keras_ops(monkeypatch, function, x, upstream):
    """`(outputs, input gradient)` of `function` on `x`, the gradient of
    `sum(upstream * outputs)`, by the fast paths, then by `keras.ops`."""
    fast = layer_gradients(_Op(function), x, upstream)[:2]
    with monkeypatch.context() as patch:
        patch.setattr(backend, "fast_path", lambda *args, **kwargs: None)
        generic = layer_gradients(_Op(function), x, upstream)[:2]
    return fast, generic


def assert_same_outputs_and_gradients(
    monkeypatch, function, x, rng, rtol=1e-6, atol=1e-6
):
    """Runs `function` on `x` both ways, with the same random upstream
    gradient, and compares the outputs and the input gradients."""
    shape = keras.ops.shape(function(keras.ops.convert_to_tensor(x)))
    upstream = rng.uniform(1, 2, tuple(shape)).astype(x.dtype)
    (outputs, gradient), (expected, expected_gradient) = fast_and_keras_ops(
        monkeypatch, function, x, upstream
    )
    np.testing.assert_allclose(outputs, expected, rtol=rtol, atol=atol)
    np.testing.assert_allclose(
        gradient, expected_gradient, rtol=rtol, atol=atol
    )
    return outputs
