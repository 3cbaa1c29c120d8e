"""Shared helpers of the layer tests: NumPy windows, formats, gradients, jit.

Written independently of `kpool.ops.windows`: NumPy windows one cell at a
time, gradients through each backend's own autodiff, `.keras` round trips.
"""

import itertools
import math

import keras
import numpy as np


def channels_last(x, data_format):
    return np.moveaxis(x, 1, -1) if data_format == "channels_first" else x


def to_format(x, data_format):
    return np.moveaxis(x, -1, 1) if data_format == "channels_first" else x


def sample(rng, rank, data_format, spatial, batch=2, channels=3):
    """Normal float32 values (about half negative), laid out as asked."""
    x = rng.standard_normal((batch, *spatial, channels)).astype("float32")
    return to_format(x, data_format)


def windows(x, pool_size, strides, padding, data_format):
    """Each window of `x` as Keras places it, padded cells NaN.

    Returns `(batch, *output_spatial, prod(pool_size), channels)`, each
    window's cells in row-major order. Under "same" there are
    `ceil(n / s)` outputs and `max((out - 1) * s + k - n, 0)` padded cells,
    half of them (rounded down) before.
    """
    x = channels_last(x, data_format).astype("float64")
    spatial = x.shape[1:-1]
    outs, befores = [], []
    for n, k, s in zip(spatial, pool_size, strides, strict=True):
        if padding == "valid":
            outs.append((n - k) // s + 1)
            befores.append(0)
        else:
            out = math.ceil(n / s)
            outs.append(out)
            befores.append(max((out - 1) * s + k - n, 0) // 2)
    result = np.full(
        (x.shape[0], *outs, math.prod(pool_size), x.shape[-1]), np.nan
    )
    offsets = list(itertools.product(*(range(k) for k in pool_size)))
    for position in itertools.product(*(range(o) for o in outs)):
        for j, offset in enumerate(offsets):
            index = [
                p * s - b + o
                for p, s, b, o in zip(
                    position, strides, befores, offset, strict=True
                )
            ]
            if all(0 <= i < n for i, n in zip(index, spatial, strict=True)):
                result[(slice(None), *position, j)] = x[(slice(None), *index)]
    return result


def gradients(layer, x, upstream):
    """`(outputs, d sum(upstream * outputs) / d x, [d ... / d w])`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x)
            loss = tf.reduce_sum(upstream * outputs)
        grads = tape.gradient(loss, [x, *layer.trainable_weights])
    elif backend == "jax":
        import jax

        def loss(x, weights):
            outputs, _ = layer.stateless_call(
                weights, [v.value for v in layer.non_trainable_weights], x
            )
            return (upstream * outputs).sum(), outputs

        (_, outputs), (input_grad, weight_grads) = jax.value_and_grad(
            loss, argnums=(0, 1), has_aux=True
        )(x, [v.value for v in layer.trainable_weights])
        grads = [input_grad, *weight_grads]
    else:
        import torch

        x = torch.tensor(x, requires_grad=True)
        outputs = layer(x)
        loss = (torch.tensor(upstream) * outputs).sum()
        grads = torch.autograd.grad(
            loss, [x, *(v.value for v in layer.trainable_weights)]
        )
        outputs = outputs.detach()
    outputs, *grads = [
        np.asarray(keras.ops.convert_to_numpy(t)) for t in [outputs, *grads]
    ]
    return outputs, grads[0], grads[1:]


def numeric(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def assert_keras_file_round_trip(layer, x, tmp_path, rtol=1e-6):
    """A model of `layer` saved as .keras and reloaded predicts the same."""
    inputs = keras.Input(batch_shape=(None, *x.shape[1:]))
    model = keras.Model(inputs, layer(inputs))
    expected = model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.layers[-1]) is type(layer)
    assert restored.layers[-1].get_config() == layer.get_config()
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), expected, rtol=rtol, atol=1e-6
    )


def assert_jit_matches_eager(layer, x, rtol=1e-5):
    """The layer compiled (XLA on TensorFlow and JAX) gives its eager
    output; torch's compiler is not exercised (too slow for a unit test)."""
    expected = numeric(layer(x))
    if keras.backend.backend() == "torch":
        return
    inputs = keras.Input(batch_shape=(None, *x.shape[1:]))
    model = keras.Model(inputs, layer(inputs))
    model.compile(jit_compile=True)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), expected, rtol=rtol, atol=1e-6
    )
