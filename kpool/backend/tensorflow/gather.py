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


def region_max(x, cells, sizes, data_format):
    """The maximum of each fractional region, the regions the same for
    every example and channel.

    `cells[d]`, int `(1, m * sizes[d])`, lists each region's cells along
    spatial dim `d`, `sizes[d]` per region (a shorter region repeats its
    last cell). Every combination of them is gathered side by side in one
    `tf.gather` of whole channel vectors from the input with its spatial
    dims flattened, then one max pooling with window and stride `sizes`
    takes their maximum. Outside XLA each TensorFlow op is a pass over
    memory: gathering one dim after another wrote the input's rows grown
    by the first dim's regions, then read them again (forward 1.2-1.3x and
    training 1.3-1.6x slower than this, 2026-12-07). Channels first is
    transposed to channels last and back, as Keras's own TensorFlow
    pooling does: a gather of the innermost axis copies one element at a
    time (3x slower here). Max pooling gives a tie to the first maximal
    cell in row-major order, and the gathered cells keep the input's
    order (a repeated cell comes after its first copy).
    """
    import keras
    import tensorflow as tf

    rank = len(sizes)
    if data_format == "channels_first":
        x = tf.transpose(x, [0, *range(2, rank + 2), 1])
    static = x.shape
    flat = tf.zeros((), cells[0].dtype)
    for n, index in zip(static[1:-1], cells, strict=True):
        flat = flat[..., None] * n + index[0]
    lengths = [index.shape[-1] for index in cells]
    shape = tf.shape(x)
    x = tf.gather(
        tf.reshape(x, tf.stack([shape[0], -1, shape[-1]])),
        tf.reshape(flat, [-1]),
        axis=1,
    )
    x = tf.reshape(x, tf.concat([shape[:1], lengths, shape[-1:]], 0))
    # The reshape's shape is a tensor: the static shape is set here.
    x.set_shape([static[0], *lengths, static[-1]])
    x = keras.ops.max_pool(x, sizes, sizes, "valid", "channels_last")
    if data_format == "channels_first":
        x = tf.transpose(x, [0, rank + 1, *range(1, rank + 1)])
    return x


def each_dim_leading(x, reduce_dim, rank, channels_last):
    """`reduce_dim(x, d, 2)` for each spatial dim `d`, the last first, each
    on `x` transposed to `(batch, channels, dim d, the other spatial
    dims)`; the result in `x`'s layout.

    `take_rows` gathers one row per example and channel as a gather with
    the example and the channel as batch dims. Along the innermost axis
    that gather copies one element at a time: at 128x32x32x32, channels
    first, 17 ms for the width's gather where the height's (rows of 32
    cells) takes 0.8 ms (TensorFlow's step stats). Here each dim's axis
    comes just after the batch dims, for `rank + 1` transposes in all,
    where a channels-last input took two per gather."""
    import tensorflow as tf

    spatial = list(range(rank))
    start = ["b", *spatial, "c"] if channels_last else ["b", "c", *spatial]
    labels = start
    for d in reversed(spatial):
        target = ["b", "c", d, *(e for e in spatial if e != d)]
        x = tf.transpose(x, [labels.index(label) for label in target])
        labels = target
        x = reduce_dim(x, d, 2)
    return tf.transpose(x, [labels.index(label) for label in start])
