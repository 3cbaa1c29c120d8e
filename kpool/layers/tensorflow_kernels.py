"""TensorFlow-only kernels for the layers, where `keras.ops` is too slow.

On a CPU the layers first try `tensorflow_ops`, compiled kernels that fuse
each layer into one pass each way; these, built from TensorFlow's own ops,
serve where those cannot be built (no compiler) or run (a GPU), and
`uniform` everywhere.

The layers are written in `keras.ops`. On TensorFlow outside XLA (Keras's
default on a CPU) every op is its own kernel: nothing fuses, and the
gradients that TensorFlow derives for the window extraction and the
sampling are many full-size passes over memory. The functions here compute
the same values with hand-written gradients that reuse TensorFlow's fused
pooling kernels or, where the windows tile the input, broadcast the
output-sized factors over each window in the input's layout. A layer calls
them only when `applies()` is true, and keeps its `keras.ops` path for
every other backend and inside XLA (where `MaxPoolGradWithArgmax` has no
kernel and the plain ops fuse anyway). The tests run both paths against the
same NumPy references. `uniform` is the exception: it serves every
TensorFlow mode, XLA included.

Nothing here imports TensorFlow at module level: the JAX and torch backends
never load it.
"""

import math

import keras
import numpy as np


def applies():
    """Whether the TensorFlow kernels should run: TF backend, not in XLA."""
    if keras.config.backend() != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    # `tf.function(jit_compile=True)`, as Keras's `jit_compile=True` uses,
    # traces inside an XLA context, and so does any function it calls.
    return not control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


def uniform(shape, dtype, seed_generator):
    """`keras.random.uniform(shape, dtype, seed=seed_generator)`, fast in XLA.

    Keras draws with TensorFlow's stateless uniform and its default
    algorithm, `"auto_select"`, which picks Philox on CPU and GPU. Under XLA
    on CPU (Keras's `jit_compile=True`) that compiles to code ~60x slower
    than naming Philox: 450 ms against 7 ms for 2M float32 draws, more than
    the rest of a training step around a pooling layer. Naming it draws the
    same numbers (checked by the tests in eager, graph and XLA mode) at the
    same speed outside XLA. The seed is drawn and cast as Keras does. Other
    backends call `keras.random.uniform`.
    """
    if keras.config.backend() != "tensorflow":
        return keras.random.uniform(shape, dtype=dtype, seed=seed_generator)
    import tensorflow as tf

    return tf.random.stateless_uniform(
        shape,
        seed=_int32_seed(seed_generator.next()),
        dtype=dtype,
        alg="philox",
    )


def _int32_seed(seed):
    """A Keras seed state as the int32 pair TensorFlow's stateless ops take.

    As Keras's TensorFlow backend casts it: `SeedGenerator` keeps int64 state
    (a TensorFlow placement constraint), folded into int32's range.
    """
    import tensorflow as tf

    seed = tf.convert_to_tensor(seed)
    if seed.dtype == tf.int32:
        return seed
    return tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)


def min_pool(inputs, max_pool):
    """`-max_pool(-inputs)` with one negation fewer in the gradient.

    Autodiff would negate the gradient on the way back (an input-sized
    pass); since the max-pooling gradient is linear in the upstream
    gradient, the two negations cancel and the upstream gradient is passed
    to it directly.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def forward(x):
        negated = tf.negative(x)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(negated)
            pooled = max_pool(negated)

        def grad(upstream):
            return tape.gradient(pooled, negated, output_gradients=upstream)

        return tf.negative(pooled), grad

    return forward(inputs)


def mixed_pool(layer, inputs, mixing, choose):
    """Mixed pooling's `avg + mixing * (max - avg)`, with a lean gradient.

    `mixing` broadcasts against the output. With `choose` (the random mode
    in training) it is boolean and the output is exactly `max` where it is
    true and `avg` elsewhere; it gets no gradient. Otherwise it gets
    `sum(upstream * (max - avg))` over the axes it is broadcast along.

    The input gradient is max pooling's gradient of `mixing * upstream`
    plus average pooling's of `(1 - mixing) * upstream`, two output-sized
    products where autodiff takes four. Where the windows tile the input
    exactly (`pool_size == strides`, each spatial dim a multiple), average
    pooling's gradient is its upstream gradient over the window size,
    repeated over each window: it is added to max pooling's as a broadcast
    in one input-sized pass, instead of `AvgPoolGrad` and a sum of two
    input-sized gradients.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def mix(x, mixing):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            max_pooled = layer._max_pool(x)
            avg_pooled = layer._average_pool(x, layer._zero_pad(x))
        if choose:
            weight = tf.cast(mixing, x.dtype)
            outputs = tf.where(mixing, max_pooled, avg_pooled)
        else:
            weight = mixing
            difference = max_pooled - avg_pooled
            outputs = avg_pooled + mixing * difference

        def grad(upstream):
            to_max = upstream * weight
            to_avg = upstream - to_max
            dx = tape.gradient(max_pooled, x, output_gradients=to_max)
            blocks = window_blocks(layer, x.shape)
            if blocks is None:
                dx += tape.gradient(avg_pooled, x, output_gradients=to_avg)
            else:
                tiled, per_window = blocks
                size = math.prod(layer.pool_size)
                dx = tf.reshape(
                    tf.reshape(dx, tiled)
                    + tf.reshape(to_avg * (1.0 / size), per_window),
                    tf.shape(x),
                )
            if choose:
                return dx, None
            return dx, sum_to_shape(upstream * difference, mixing)

        return outputs, grad

    return mix(inputs, tf.convert_to_tensor(mixing))


def sum_to_shape(product, mixing):
    """`product`'s sums over the axes `mixing` is broadcast along, shaped
    as `mixing`: the gradient of a factor broadcast against the output."""
    import tensorflow as tf

    lead = len(product.shape) - len(mixing.shape)
    axes = [*range(lead)] + [
        lead + i for i, n in enumerate(mixing.shape) if n == 1
    ]
    return tf.reshape(tf.reduce_sum(product, axis=axes), tf.shape(mixing))


def window_blocks(layer, input_shape):
    """Shapes that split the input into its windows, if they tile it.

    `None` (falsy) unless `pool_size == strides` and the windows cover every
    spatial dim exactly (no padding, nothing dropped). Otherwise returns
    the input's shape with each spatial dim `n` split into
    `(n // k, k)`, and the same with `(n // k, 1)`: an output-sized tensor
    reshaped to the latter broadcasts over each window.
    """
    windows = list(
        zip(layer._spatial_shape(input_shape), layer.pool_size, strict=True)
    )
    if tuple(layer.pool_size) != tuple(layer.strides) or any(
        n is None or n % k for n, k in windows
    ):
        return None
    tiled = [d for n, k in windows for d in (n // k, k)]
    per_window = [d for n, k in windows for d in (n // k, 1)]
    channels = input_shape[-1 if layer._channels_last else 1]
    if layer._channels_last:
        return [-1, *tiled, channels], [-1, *per_window, channels]
    return [-1, channels, *tiled], [-1, channels, *per_window]


def stochastic_sample(layer, inputs, uniform):
    """Stochastic pooling's training output, with a scatter as gradient.

    `inputs` are the layer's inputs in the computation dtype; `uniform` holds
    one draw in [0, 1) per output cell. Computes what
    `StochasticPooling._sample` does: in each window of `a = relu(inputs)`
    (zero-padded as `"same"` pads), with running sums `c_j` in row-major
    order, the output is `a_m` for `m = #{j : c_j <= uniform * c_last}`, the
    first element whose running sum exceeds the threshold. Its flat position
    in the padded input is found from the 0/1 vector `c_j <= threshold`, the
    value is gathered from there, and the gradient is scattered there by
    TensorFlow's `MaxPoolGradWithArgmax` kernel (one pass), instead of
    flowing back through the window extraction. The gradient is the
    upstream gradient at the sampled cell and zero elsewhere; a window with
    no positive input (output 0) passes none.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def sample(x, uniform):
        padded = layer._zero_pad(tf.nn.relu(x))
        windows = layer._windows(padded)
        axis = layer._window_axis % len(windows.shape)
        size = windows.shape[axis]
        cumulative = running_sums(layer, windows)
        total = layer._unit_slice(cumulative, axis, size - 1, 1)
        below = tf.cast(cumulative <= uniform * total, cumulative.dtype)
        # The running sums never decrease, so `below` is 1 for the elements
        # before the sampled one and 0 from it on, and the sampled element's
        # distance from the window's first is the sum of the steps between
        # neighbours over the 1s: a product with `steps`, in floats that
        # hold these small integers exactly. `uniform < 1` keeps the
        # threshold below a positive total (TensorFlow's uniforms are
        # multiples of 2**-23 or finer), so `below` ends before the last
        # positive element; a window summing to 0 is all 1s, and the step
        # after the last element, 0, keeps it inside the window (on a zero
        # element).
        base, offsets = window_flat_indices(layer, padded.shape, size)
        steps = np.append(np.diff(offsets), 0).astype(cumulative.dtype.name)
        if layer._channels_last:
            offset = tf.matmul(tf.constant(steps[None, :]), below)
        else:
            offset = tf.matmul(below, tf.constant(steps[:, None]))
        offset = tf.squeeze(offset, axis)
        # Sums of integers below 2**24: exact, so the cast loses nothing.
        flat_index = tf.cast(offset, tf.int64) + base
        batch = tf.shape(x)[0]
        per_example = math.prod(padded.shape[1:])
        flat_padded = tf.reshape(padded, [batch, per_example])
        outputs = tf.reshape(
            tf.gather(
                flat_padded, tf.reshape(flat_index, [batch, -1]), batch_dims=1
            ),
            tf.shape(flat_index),
        )

        def grad(upstream):
            upstream = tf.where(outputs > 0, upstream, tf.zeros_like(upstream))
            per_output = math.prod(outputs.shape[1:])
            # The kernel adds `grad[i]` at `argmax[i]` (offset by the batch
            # index) and only checks that the shapes agree with a pooling,
            # so the tensors are viewed as (batch, 1, n, 1) and the "window"
            # is chosen so that pooling `per_example` cells gives
            # `per_output` (a window start per output cell never exceeds
            # the padded input's size).
            scattered = tf.raw_ops.MaxPoolGradWithArgmax(
                input=tf.reshape(padded, [batch, 1, per_example, 1]),
                grad=tf.reshape(upstream, [batch, 1, per_output, 1]),
                argmax=tf.reshape(flat_index, [batch, 1, per_output, 1]),
                ksize=[1, 1, per_example - per_output + 1, 1],
                strides=[1, 1, 1, 1],
                padding="VALID",
                include_batch_in_index=False,
            )
            scattered = tf.reshape(scattered, tf.shape(padded))
            if layer.padding == "same":
                pads = layer._same_pads(layer._spatial_shape(x.shape))
                starts = layer._full_shape([p[0] for p in pads], 0)
                scattered = tf.slice(scattered, starts, tf.shape(x))
            return scattered, tf.zeros_like(uniform)

        return outputs, grad

    return sample(inputs, uniform)


def tiled_stochastic_sample(layer, inputs, uniform):
    """`StochasticPooling._sample` where windows tile the input.

    The forward pass is the layer's. The gradient is the upstream gradient
    at each window's sampled element, zero elsewhere (and in a window with
    no positive input, which samples nothing): one select in the input's
    layout, with the boolean sampled mask moved back from the window layout
    (a transpose of a quarter of the bytes) and the upstream gradient
    broadcast over each window. Autodiff takes an input-sized select,
    broadcast of the sum's gradient and transpose, and ReLU's gradient,
    which is 1 at a sampled element (it is positive).
    """
    import tensorflow as tf

    @tf.custom_gradient
    def sample(x):
        windows = layer._windows(tf.nn.relu(x))
        sampled = layer._sampled(windows, uniform)
        outputs = tf.reduce_sum(
            tf.where(sampled, windows, tf.zeros([], windows.dtype)),
            axis=layer._window_axis,
        )

        def grad(upstream):
            tiled, per_window = window_blocks(layer, x.shape)
            dx = tf.where(
                _unwindow(layer, sampled),
                tf.reshape(upstream, per_window),
                tf.zeros([], upstream.dtype),
            )
            return tf.reshape(dx, tf.shape(x))

        return outputs, grad

    return sample(inputs)


def stochastic_expectation(layer, inputs):
    """`StochasticPooling._expectation` of `relu(inputs)`, lean gradient.

    With `n` the window size, `m` the mean of `a = relu(x)` over a window
    and `out` the mean of `a**2` over `m`, `d out / d a_i` is
    `(2 a_i - out) / (n m)`; a window with `m = 0` (all zeros, `out = 0`)
    uses `m = 1`, as the forward pass does, and gets 0. ReLU's gradient
    (`ReluGrad`, one kernel) masks the sum over windows. Where the windows
    tile the input, each cell is in one window and the output-sized factors
    are broadcast over it: `ReluGrad((a - out / 2) * 2 g / (n m), a)`,
    three input-sized passes. Otherwise two average-pooling gradients
    spread them: `ReluGrad(a * P(2 g / m) - P(g out / m), a)`, `P` that
    gradient (`1 / n` to each cell of each window). Autodiff takes two
    average-pooling gradients, the square's gradient (two passes), their
    sum and ReLU's gradient.
    """
    import tensorflow as tf
    from tensorflow.python.ops import gen_nn_ops

    @tf.custom_gradient
    def expectation(x):
        activations = tf.nn.relu(x)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(activations)
            means = layer._window_means(layer._zero_pad(activations))
        mean_square = layer._window_means(
            layer._zero_pad(tf.square(activations))
        )
        mean = tf.where(means > 0, means, tf.ones_like(means))
        outputs = mean_square / mean

        def grad(upstream):
            scale = upstream / mean
            blocks = window_blocks(layer, x.shape)
            if blocks:
                tiled, per_window = blocks
                size = math.prod(layer.pool_size)
                activations_tiled = tf.reshape(activations, tiled)
                dx = (
                    activations_tiled - tf.reshape(outputs * 0.5, per_window)
                ) * tf.reshape(scale * (2.0 / size), per_window)
                dx = gen_nn_ops.relu_grad(dx, activations_tiled)
                return tf.reshape(dx, tf.shape(x))
            twice = tape.gradient(means, activations, scale * 2.0)
            once = tape.gradient(means, activations, scale * outputs)
            return gen_nn_ops.relu_grad(activations * twice - once, activations)

        return outputs, grad

    return expectation(inputs)


def _unwindow(layer, windowed):
    """A tensor laid out as `layer._windows`'s back in `window_blocks` form.

    Only where windows tile the input: each window axis is split back into
    its spatial dims, each placed after its output dim.
    """
    import tensorflow as tf

    d = layer.num_spatial_dims
    if layer._channels_last:
        outputs = windowed.shape[1 : 1 + d]
        channels = windowed.shape[-1]
        shape = [-1, *outputs, *layer.pool_size, channels]
        order = [0, *(a for i in range(d) for a in (1 + i, 1 + d + i))]
        order.append(1 + 2 * d)
    else:
        outputs = windowed.shape[2 : 2 + d]
        channels = windowed.shape[1]
        shape = [-1, channels, *outputs, *layer.pool_size]
        order = [0, 1, *(a for i in range(d) for a in (2 + i, 2 + d + i))]
    return tf.transpose(tf.reshape(windowed, shape), order)


def running_sums(layer, windows):
    """Running sums along the window axis of `layer._windows`'s result.

    A product with a triangular matrix of ones adds the same terms as
    `cumsum`, whose CPU kernel along a short axis is ~10x slower. (A GPU
    that multiplies float32 in TF32 rounds them to 10 bits first, moving
    the sampling probabilities by < 0.1%; the sampled values stay exact.)
    """
    import tensorflow as tf

    size = windows.shape[layer._window_axis]
    triangle = tf.constant(np.tril(np.ones((size, size))), windows.dtype)
    if layer._channels_last:
        return tf.matmul(triangle, windows)
    return tf.matmul(windows, triangle, transpose_b=True)


def window_flat_indices(layer, padded_shape, size):
    """Flat positions, per example, of the window elements of `padded`.

    Returns `(base, offsets)`: `base` has the output's shape without the
    batch (the position of each window's first element, channel included)
    and `offsets[j]` is the distance from it to element `j` in row-major
    order, so element `j` of a window is at `base + offsets[j]`.
    """
    import tensorflow as tf

    example_shape = tuple(padded_shape[1:])
    spatial = layer._spatial_shape((None, *example_shape))
    # `padded` is padded already: its windows are "valid" ones.
    output_spatial = [
        (n - k) // s + 1
        for n, k, s in zip(spatial, layer.pool_size, layer.strides, strict=True)
    ]
    channels = padded_shape[-1 if layer._channels_last else 1]
    # Row-major distances between neighbours along each spatial dim.
    strides = np.cumprod((*spatial[1:], 1)[::-1])[::-1]
    if layer._channels_last:
        strides = strides * channels
        channel_stride, channel_axis = 1, -1
    else:
        channel_stride, channel_axis = math.prod(spatial), 0
    base = np.zeros(
        (*output_spatial, channels)
        if layer._channels_last
        else (channels, *output_spatial),
        np.int64,
    )
    first_spatial_axis = 0 if layer._channels_last else 1
    for dim, (n_out, step, stride) in enumerate(
        zip(output_spatial, layer.strides, strides, strict=True)
    ):
        shape = [1] * base.ndim
        shape[first_spatial_axis + dim] = n_out
        base += (np.arange(n_out) * step * stride).reshape(shape)
    shape = [1] * base.ndim
    shape[channel_axis] = channels
    base += (np.arange(channels) * channel_stride).reshape(shape)
    offsets = np.zeros((), np.int64)
    for k, stride in zip(layer.pool_size, strides, strict=True):
        offsets = np.add.outer(offsets, np.arange(k) * stride)
    offsets = offsets.reshape(-1)
    assert offsets.size == size
    return tf.constant(base), offsets
