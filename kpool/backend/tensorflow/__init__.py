"""TensorFlow's fast paths.

On TensorFlow outside XLA (Keras's default on a CPU), every op is its own
kernel and nothing fuses, so some pieces of kpool's ops have a faster form
made of other TensorFlow ops. Inside XLA (`jit_compile=True`) the
`keras.ops` forms fuse and stay. Random numbers take one path in every
mode (`random.uniform`). Every piece is TensorFlow's own ops, so exported
models serve without kpool.
"""

from kpool.backend.tensorflow import (
    adaptive,
    blur,
    gather,
    order,
    random,
    roots,
    soft_pool,
    stochastic,
    unpool,
    windows,
)


def in_xla():
    """Whether ops are being traced for XLA (`jit_compile=True`)."""
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    # `tf.function(jit_compile=True)`, as Keras's `jit_compile=True` uses,
    # traces inside an XLA context, and so does any function it calls.
    return control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


def fast_path(name, window=None):
    if name == "uniform":
        return random.uniform
    if in_xla():
        return None
    if name == "running_sums":
        return windows.running_sums
    if name == "adaptive_pool":
        return adaptive.adaptive_pool
    if name == "take_rows":
        return gather.take_rows
    if name == "each_dim_arranged":
        return gather.each_dim_leading
    # TensorFlow's 3D max pooling gives a tied maximum's gradient to every
    # maximal cell, and so to each copy of a repeated one.
    if name == "region_max" and window.num_spatial_dims < 3:
        return gather.region_max
    if name == "order_statistics":
        return order.order_statistics
    if name == "positive_root":
        return roots.positive_root
    if name == "stochastic_expectation":
        return stochastic.stochastic_expectation
    if name == "stochastic_sample":
        return stochastic.stochastic_sample
    # TensorFlow's CPU poolings take channels last only.
    if (
        name == "disjoint_soft_pool"
        and window.num_spatial_dims < 3
        and window.channels_last
    ):
        return soft_pool.disjoint_soft_pool
    if (
        name == "overlapping_soft_pool"
        and window.num_spatial_dims < 3
        and window.channels_last
    ):
        return soft_pool.overlapping_soft_pool
    # Tiling windows, as a segmentation net's encoder pools: in place where
    # each index is in its own window (a `tf.cond`).
    if name == "tiled_unpool" and (
        window is None
        or (window.num_spatial_dims == 2 and window.channels_last)
    ):
        return unpool.tiled_unpool
    # One depthwise convolution over both axes at once, as TensorFlow's
    # users write it.
    if name == "blur" and (
        window is None  # whether this backend has the piece at all
        or (
            window.num_spatial_dims == 2
            and window.data_format == "channels_last"
        )
    ):
        return blur.blur
    # One depthwise convolution per axis runs about as fast as max pooling
    # in TensorFlow's graph mode; the slices XLA fuses take 3x as long.
    if name == "blur_filter_axis":
        from kpool.backend.depthwise import depthwise_filter_axis

        return depthwise_filter_axis
    # keras.ops has no 3D depthwise convolution nor 4D convolution here.
    if name == "window_responses" and window.num_spatial_dims < 3:
        from kpool.backend.depthwise import depthwise_responses

        return depthwise_responses
    return None
