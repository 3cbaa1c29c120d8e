def tiled_unpool(window, inputs, indices, size, scatter):
    """Unpooling of tiling 2D channels-last windows (stride = size, the
    output `size` their tiling), where every index lies in its own window,
    as `max_pool_with_argmax`'s do: each window's cells are a comparison of
    the index's offset in the window with each offset, a select, and
    stacks and reshapes that put the cells in place. Else (`tf.cond` on
    the indices) `scatter()`, the sum into the flat output.

    TensorFlow's `unsorted_segment_sum`, the scatter, becomes
    `UNSORTED_SEGMENT_SUM` in TFLite and `Unique` plus `TopK` in tf2onnx's
    ONNX graph (252 + 25 of 326 ms in ONNX Runtime at 32x32x32x64, 2x2):
    an unpooling after argmax pooling took 27-78x a served max pooling in
    TFLite and 79-118x in ONNX Runtime (`results/serving`).
    """
    import tensorflow as tf

    (kh, kw), (height, width) = window.pool_size, size
    rows, cols = int(inputs.shape[1]), int(inputs.shape[2])
    channels = int(inputs.shape[3])
    index = tf.cast(indices, "int32")
    # Each index's cell, relative to its window's first cell.
    down = index // width - tf.reshape(tf.range(rows) * kh, (1, -1, 1, 1))
    across = index % width - tf.reshape(tf.range(cols) * kw, (1, 1, -1, 1))
    own = (down >= 0) & (down < kh) & (across >= 0) & (across < kw)

    def in_place():
        offset = down * kw + across
        zeros = tf.zeros_like(inputs)
        window_rows = []
        for i in range(kh):
            # (batch, rows, cols, kw, channels) -> (batch, rows, width, ..).
            cells = [
                tf.where(offset == i * kw + j, inputs, zeros) for j in range(kw)
            ]
            window_rows.append(
                tf.reshape(tf.stack(cells, 3), (-1, rows, width, channels))
            )
        # (batch, rows, kh, width, channels) -> (batch, height, width, ..).
        stacked = tf.stack(window_rows, 2)
        return tf.reshape(stacked, (-1, height, width, channels))

    return tf.cond(tf.reduce_all(own), in_place, scatter)
