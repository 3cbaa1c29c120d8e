"""Gradients of a layer's output on every backend, for the layer tests."""

import inspect

import keras
import numpy as np


def layer_gradients(layer, x, upstream, training=False):
    """Returns `d sum(upstream * layer(x)) / d (x, trainable weights)`.

    The result is `(input_gradient, [weight_gradient, ...])` as NumPy
    arrays, weights in `layer.trainable_weights` order.
    """
    if not layer.built:
        layer.build(x.shape)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(upstream * layer(x, training=training))
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
                [v.value for v in layer.non_trainable_weights],
                x,
                **call_kwargs,
            )
            return (upstream * outputs).sum()

        input_gradient, weight_gradients = jax.grad(loss, argnums=(0, 1))(
            x, [v.value for v in layer.trainable_weights]
        )
        gradients = [input_gradient, *weight_gradients]
    elif backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        outputs = layer(x, training=training)
        loss = (torch.tensor(upstream) * outputs).sum()
        gradients = torch.autograd.grad(
            loss, [x, *(v.value for v in layer.trainable_weights)]
        )
    else:
        raise ValueError(f"No gradient helper for backend {backend!r}.")
    gradients = [np.asarray(keras.ops.convert_to_numpy(g)) for g in gradients]
    return gradients[0], gradients[1:]
