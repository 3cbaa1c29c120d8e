def take_rows(x, cells, axis, channels_last):
    """`x`'s cells `cells` along the spatial `axis`, `cells` int `(rows,
    m)`: one row for every example and channel (a gather of whole slices),
    or one per example and channel, in that order.

    `keras.ops.take_along_axis` broadcasts the index to the output's shape
    in int64, wraps negative entries and moves the axis last in the input,
    the index and the output: four passes as large as the output or the
    input. Here, channels first, one `tf.gather` with the example and the
    channel as batch dims takes the `(batch, channels, m)` index as it is;
    channels last adds a transpose before and after.
    """
    import tensorflow as tf

    if cells.shape[0] == 1:
        return tf.gather(x, cells[0], axis=axis)
    rank = len(x.shape)
    shape = tf.shape(x)
    batch = shape[0]
    channels = shape[-1] if channels_last else shape[1]
    m = cells.shape[-1]
    index = tf.reshape(cells, tf.stack([batch, channels, m]))
    if channels_last:
        first = [0, rank - 1, *range(1, rank - 1)]
        gathered = tf.gather(
            tf.transpose(x, first), index, axis=axis + 1, batch_dims=2
        )
        gathered = tf.transpose(gathered, [0, *range(2, rank), 1])
    else:
        gathered = tf.gather(x, index, axis=axis, batch_dims=2)
    # The reshape's shape is a tensor: the static shape is set here.
    static = list(x.shape)
    static[axis] = m
    gathered.set_shape(static)
    return gathered
