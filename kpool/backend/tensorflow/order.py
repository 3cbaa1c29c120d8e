def order_statistics(window, inputs, select):
    """`select(inputs)`: order statistics of each window of `inputs` (its
    middle values, say), with each one's gradient sent to the first cell
    of the window, in row-major order, that equals it; none where no cell
    does (a NaN).

    Autodiff through a selection network costs about five kernels per
    compare-exchange backward outside XLA (TensorFlow's gradient of a
    minimum or a maximum: a comparison, two selects on zeros, and the
    reductions of a broadcast), on top of the window slots' strided-slice
    gradients. Here the network runs forward only, under a custom
    gradient; backward, the window's cells come from `Window.cells` (whose
    gradient is pads, a stack and a transpose), and each value takes one
    comparison and two selects per cell. Padded cells are NaN there,
    which equals nothing, as in torch's `order_statistics`.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def statistics(x):
        values = select(x)

        def gradient(*upstream):
            return _first_cells_gradient(window, x, values, upstream)

        return values, gradient

    return statistics(inputs)


def _first_cells_gradient(window, x, values, upstream):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        cells = window.cells(window.pad(x, float("nan")))
    gradients = [None] * len(cells)
    for value, rest in zip(values, upstream, strict=True):
        if rest is None:
            continue
        for k, cell in enumerate(cells):
            match = tf.equal(cell, value)
            taken = tf.where(match, rest, 0.0)
            gradients[k] = (
                taken if gradients[k] is None else gradients[k] + taken
            )
            if k + 1 < len(cells):
                # What a later equal cell would take, the first has.
                rest = tf.where(match, 0.0, rest)
    gradients = [
        tf.zeros_like(cell) if g is None else g
        for cell, g in zip(cells, gradients, strict=True)
    ]
    return tape.gradient(cells, x, output_gradients=gradients)
