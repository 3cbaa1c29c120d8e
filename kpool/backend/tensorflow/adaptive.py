import tensorflow as tf

_POOLS = {"max": tf.nn.max_pool2d, "average": tf.nn.avg_pool2d}


def adaptive_pool(inputs, output_size, mode, data_format):
    """2D adaptive max or average pooling of channels-last `inputs` to
    `output_size` where the bins divide the spatial dims: one
    `tf.nn.max_pool2d` (or `avg_pool2d`) with window and stride `n // b`,
    whose gradient is one kernel. The reductions over reshaped views
    (the `keras.ops` form) build their gradient from several whole-input
    ops, 2-2.4x the time of the poolings a TensorFlow user would write.
    `None` (that form) for other sizes and for channels first, which
    TensorFlow's CPU poolings do not take. As torch's adaptive max
    pooling does, it passes a tied maximum's gradient to one of the tied
    cells.
    """
    spatial = [int(n) for n in inputs.shape[1:3]]
    if data_format != "channels_last" or any(
        n % b for n, b in zip(spatial, output_size, strict=True)
    ):
        return None
    window = [n // b for n, b in zip(spatial, output_size, strict=True)]
    return _POOLS[mode](inputs, window, window, "VALID")
