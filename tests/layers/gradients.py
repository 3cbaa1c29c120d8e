"""Gradients of a layer's output on every backend, for the layer tests."""

import inspect

import keras
import numpy as np


def layer_gradients(layer, x, upstream, training=False):
    """Calls `layer` on `x` and differentiates `sum(upstream * outputs)`.

    Returns `(outputs, input_gradient, weight_gradients)` as NumPy arrays,
    the weight gradients in `layer.trainable_weights` order. The outputs are
    those the gradients belong to (the same random draw).
    """
    if not layer.built:
        layer.build(x.shape)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x, training=training)
            loss = tf.reduce_sum(upstream * outputs)
        gradients = tape.gradient(loss, [x, *layer.trainable_weights])
    elif backend == "jax":
        import jax

        # Unlike `__call__`, `stateless_call` passes `training` on as is.
        accepts_training = (
            "training" in inspect.signature(layer.call).parameters
        )
        call_kwargs = {"training": training} if accepts_training else {}

        def loss(x, trainable):
            outputs, _ = layer.stateless_call(
                trainable,
                [v.value for v in layer.non_trainable_variables],
                x,
                **call_kwargs,
            )
            return (upstream * outputs).sum(), outputs

        (_, outputs), (input_gradient, weight_gradients) = jax.value_and_grad(
            loss, argnums=(0, 1), has_aux=True
        )(x, [v.value for v in layer.trainable_weights])
        gradients = [input_gradient, *weight_gradients]
    elif backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        outputs = layer(x, training=training)
        loss = (torch.tensor(upstream) * outputs).sum()
        gradients = torch.autograd.grad(
            loss, [x, *(v.value for v in layer.trainable_weights)]
        )
        outputs = outputs.detach()
    else:
        raise ValueError(f"No gradient helper for backend {backend!r}.")
    outputs, *gradients = [
        np.asarray(keras.ops.convert_to_numpy(t)) for t in [outputs, *gradients]
    ]
    return outputs, gradients[0], gradients[1:]
