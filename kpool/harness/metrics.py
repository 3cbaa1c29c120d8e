"""Evaluation metrics for the four textbook claims about pooling layers.

Each claim becomes a measured column of a run:

- invariance to small translations: `shift_consistency` (Zhang, 2019,
  "Making Convolutional Networks Shift-Invariant Again") and
  `shifted_accuracy` for shifts of 1..4 pixels (`invariance_metrics` computes
  all of them in one call);
- a larger receptive field: `receptive_field`;
- less computation and fewer parameters: `flops_per_image` (with the
  per-layer breakdown `layer_flops`) and `complexity_metrics`;
- less overfitting: `overfit_gap`.

Conventions:

- Models take raw images `(N, H, W, C)`, channels_last, float32 pixel values
  0..255, and return class scores whose argmax is the predicted class. Images
  are cast to float32 batch by batch, so uint8 arrays can be passed as they are.
- Predictions run in inference mode (`model.predict_on_batch`), `batch_size`
  images at a time, one pass per shifted copy of the images.
- Accuracies are fractions in [0, 1], like Keras's accuracy metrics;
  `shift_consistency` is a percentage in [0, 100], as in Zhang's paper.
- Labels are integer class ids `(N,)` or `(N, 1)`, or one-hot `(N, K)`.
- `pad_mode` fills the pixels a shift or a crop uncovers, named as in
  `numpy.pad`: "reflect" mirrors the image about its border pixel (without
  repeating it), "constant" fills with 0 (black in raw pixel values, not the
  dataset mean), "wrap" makes shifts circular.
- Everything random draws from `numpy.random.default_rng(seed)`, so the same
  seed gives every model the same crops and the same image subset.
"""

import math

import keras
import numpy as np

PAD_MODES = ("reflect", "constant", "wrap")

# These change the map's extent but not which input pixels a unit sees.
_BORDER_LAYERS = (
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.RandomCrop,
    # Swaps axes only; the reported field is the largest over the axes.
    keras.layers.Permute,
)
_TRANSPOSED_CONV_LAYERS = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_CONV_LAYERS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_DEPTHWISE_LAYERS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE_LAYERS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def shift_consistency(
    model, images, *, seed=0, pad=4, pad_mode="reflect", batch_size=500
):
    """Percentage of images classified the same under two random shifts.

    Zhang's (2019) consistency, adapted to small images: each image is padded
    by `pad` pixels on every side and cropped twice back to its own size, at
    offsets drawn uniformly from `0..2 * pad` along each axis. The two offset
    pairs are independent (as in Zhang's code), so about 1 image in
    `(2 * pad + 1) ** 2` gets the same crop twice. The offsets are drawn up
    front as `default_rng(seed).integers(0, 2 * pad + 1, size=(2, N, 2))`
    (copy, image, (row, column)): they depend only on `seed`, `pad` and the
    number of images, never on the model.

    Which models score exactly 100: with `pad_mode="wrap"` every crop is a
    circular shift, so a model that is exactly invariant to circular shifts
    (a 1x1 convolution followed by global average pooling, say) scores 100.
    With "reflect" or "constant" the crop changes the image content at the
    border and no non-trivial CNN is exactly invariant; only inputs that
    every crop leaves unchanged (constant images under "reflect") guarantee
    100.

    Args:
        model: Keras model mapping images to class scores.
        images: array `(N, H, W, C)` of raw pixel values.
        seed: int. Seed of the crop offsets.
        pad: int. Largest shift in pixels, >= 0 (and < H, W for "reflect").
        pad_mode: str. One of "reflect", "constant", "wrap".
        batch_size: int. Images per prediction call.

    Returns:
        float, percentage in [0, 100].
    """
    images = _check_images(images)
    _check_padding(images, pad, "pad", pad_mode)
    _check_int(batch_size, "batch_size", 1)
    offsets = np.random.default_rng(seed).integers(
        0, 2 * pad + 1, size=(2, len(images), 2)
    )
    first, second = (
        _predict_classes(model, images, offset, pad, pad_mode, batch_size)
        for offset in offsets
    )
    return float(100.0 * np.mean(first == second))


def shifted_accuracy(
    model, images, labels, shift, *, pad_mode="reflect", batch_size=500
):
    """Accuracy on images shifted by `shift` pixels, averaged over 4 ways.

    The content of every image moves by `shift` pixels down, up, right and
    left in turn; the `shift` rows or columns it uncovers are filled by
    `pad_mode`. The result is the mean of the 4 accuracies (equal to the
    accuracy over all 4 shifted copies). `shift=0` is the plain accuracy.

    Args:
        model: Keras model mapping images to class scores.
        images: array `(N, H, W, C)` of raw pixel values.
        labels: class ids `(N,)` or `(N, 1)`, or one-hot `(N, K)`.
        shift: int. Shift in pixels, >= 0 (and < H, W for "reflect").
        pad_mode: str. One of "reflect", "constant", "wrap".
        batch_size: int. Images per prediction call.

    Returns:
        float, fraction in [0, 1].
    """
    images = _check_images(images)
    labels = _check_labels(labels, len(images))
    _check_padding(images, shift, "shift", pad_mode)
    _check_int(batch_size, "batch_size", 1)
    if shift == 0:
        directions = [(0, 0)]
    else:
        directions = [(shift, 0), (-shift, 0), (0, shift), (0, -shift)]
    accuracies = []
    for rows, columns in directions:
        # Cropping at (shift - rows, shift - columns) from the padded image
        # moves its content by (rows, columns).
        offset = np.array([shift - rows, shift - columns])
        offsets = np.broadcast_to(offset, (len(images), 2))
        predicted = _predict_classes(
            model, images, offsets, shift, pad_mode, batch_size
        )
        accuracies.append(np.mean(predicted == labels))
    return float(np.mean(accuracies))


def invariance_metrics(
    model,
    images,
    labels,
    *,
    seed=0,
    max_shift=4,
    max_images=None,
    pad=4,
    pad_mode="reflect",
    batch_size=500,
):
    """All the translation-invariance columns of a run, in one call.

    Costs `2 + 4 * max_shift` predictions per evaluated image. With
    `max_images`, a random subset of that many images, drawn as
    `sorted(default_rng(seed).choice(N, max_images, replace=False))`, is
    evaluated instead of all `N`: the same subset for every model.

    Args:
        model: Keras model mapping images to class scores.
        images: array `(N, H, W, C)` of raw pixel values.
        labels: class ids `(N,)` or `(N, 1)`, or one-hot `(N, K)`.
        seed: int. Seed of the subset and of the consistency crops.
        max_shift: int. Largest shift of `shifted_accuracy`, >= 0.
        max_images: int or None. Size of the evaluated subset; None for all.
        pad: int. `pad` of `shift_consistency`.
        pad_mode: str. One of "reflect", "constant", "wrap", used for both
            metrics.
        batch_size: int. Images per prediction call.

    Returns:
        dict with "shift_consistency" (percentage) and "shift_accuracy_1px"
        ... f"shift_accuracy_{max_shift}px" (fractions).
    """
    images = _check_images(images)
    labels = _check_labels(labels, len(images))
    _check_int(max_shift, "max_shift", 0)
    images, labels = _subset(images, labels, max_images, seed)
    metrics = {
        "shift_consistency": shift_consistency(
            model,
            images,
            seed=seed,
            pad=pad,
            pad_mode=pad_mode,
            batch_size=batch_size,
        )
    }
    for shift in range(1, max_shift + 1):
        metrics[f"shift_accuracy_{shift}px"] = shifted_accuracy(
            model,
            images,
            labels,
            shift,
            pad_mode=pad_mode,
            batch_size=batch_size,
        )
    return metrics


def overfit_gap(
    model,
    train_images,
    train_labels,
    test_images,
    test_labels,
    *,
    seed=0,
    max_images=None,
    batch_size=500,
):
    """Train accuracy minus test accuracy, both measured in inference mode.

    Training-time accuracy is measured with dropout and augmentation on and
    while the weights move; this measures both sets with the final weights
    and the model in inference mode. `max_images` draws a fixed subset of
    each set as in `invariance_metrics`, and both accuracies are returned so
    that the gap can be checked against them.

    Args:
        model: Keras model mapping images to class scores.
        train_images, test_images: arrays `(N, H, W, C)` of raw pixel values.
        train_labels, test_labels: class ids `(N,)` or `(N, 1)`, or one-hot.
        seed: int. Seed of the subsets.
        max_images: int or None. Images evaluated per set; None for all.
        batch_size: int. Images per prediction call.

    Returns:
        dict with "inference_train_accuracy", "inference_test_accuracy"
        (fractions) and "overfit_gap" (their difference).
    """
    accuracies = {}
    for split, images, labels in (
        ("train", train_images, train_labels),
        ("test", test_images, test_labels),
    ):
        images = _check_images(images)
        labels = _check_labels(labels, len(images))
        images, labels = _subset(images, labels, max_images, seed)
        accuracies[f"inference_{split}_accuracy"] = shifted_accuracy(
            model, images, labels, 0, batch_size=batch_size
        )
    accuracies["overfit_gap"] = (
        accuracies["inference_train_accuracy"]
        - accuracies["inference_test_accuracy"]
    )
    return accuracies


def receptive_field(model):
    """Theoretical receptive field, in input pixels, of the last spatial map.

    Walks the built model's layer graph from its input to the last tensor
    that is still a spatial map (same rank as the input, before global
    pooling, meaning any layer whose class name starts with "Global", or
    `Flatten` or any other rank change), with the standard recurrence
    `r_out = r_in + (k - 1) * d * j_in`, `j_out = j_in * s` for a window of
    size `k`, dilation `d` and stride `s`, starting from `r = j = 1` at the
    input. The field is the theoretical one: it is not clipped to the image,
    and padding does not change it.

    Layers handled: convolutions (`kernel_size`, `strides`, `dilation_rate`:
    Conv, DepthwiseConv, SeparableConv; a dilated kernel spans
    `(k - 1) * d + 1` pixels), windows (any layer with `pool_size`
    and `strides` attributes, such as Keras's and kpool's pooling layers),
    blur pooling (`filter_size` and `strides`: the filter is the window) and
    max-blur pooling (a stride-1 `pool_size` window, then the filter at
    `strides`: one window of `pool_size + filter_size - 1`), fractional max
    pooling (`output_ratio`: regions of `pool_size`, or of
    `ceil(1 / ratio)` for Graham's disjoint ones, at the mean step
    `1 / ratio`; the field is rounded up),
    padding, cropping and `Permute` (no change), merges such as `Add` and
    `Concatenate` (the largest field of the branches, whose jumps must
    agree), nested Functional or Sequential models (walked through), and
    unknown layers that keep the spatial size and hold no spatial kernel
    (weights of rank > 2): normalization, activation, dropout, `Dense` on a
    map, inference-mode augmentation, which count as pointwise. Any other
    layer raises a ValueError naming its class.

    Fields are tracked per spatial axis; for non-square windows the largest
    axis is reported.

    Args:
        model: built Functional or Sequential Keras model.

    Returns:
        int, receptive field in input pixels along one axis.
    """
    spatial_rank = len(_graph_inputs(model)[0].shape)
    fields = [
        _Field.at_input(spatial_rank - 2)
        if len(tensor.shape) == spatial_rank
        else None
        for tensor in model.inputs
    ]
    seen = list(fields)
    _propagate_fields(model, fields, seen)
    # A fractional pooling's mean step can make the field fractional.
    return math.ceil(max(max(f.size) for f in seen if f is not None))


def layer_flops(model):
    """Multiply-adds per image of every layer call, in graph order.

    Counted from the built model's output shapes: a convolution costs
    `prod(output_spatial) * prod(kernel_size) * c_in / groups * filters`, a
    depthwise one `prod(output_spatial) * prod(kernel_size) * c_in *
    depth_multiplier`, a separable one its depthwise plus its 1x1 part, and
    `Dense` `prod(leading_dims) * c_in * units`. Biases, normalization,
    activations, pooling, merges and every other layer count 0, including
    pooling layers with learned parts (such as a gate) whose cost cannot be
    read from standard attributes. Nested models are expanded, their layers
    named "outer/inner".

    Args:
        model: built Functional or Sequential Keras model with a fixed input
            shape.

    Returns:
        list of `(layer_name, multiply_adds)` tuples.
    """
    flops = []
    for node in _graph_nodes(model):
        layer = node.operation
        if isinstance(layer, keras.Model):
            flops.extend(
                (f"{layer.name}/{name}", count)
                for name, count in layer_flops(layer)
            )
        else:
            flops.append((layer.name, _multiply_adds(layer, node)))
    return flops


def flops_per_image(model):
    """Forward multiply-adds per image: the sum of `layer_flops(model)`.

    Args:
        model: built Functional or Sequential Keras model with a fixed input
            shape.

    Returns:
        int.
    """
    return sum(count for _, count in layer_flops(model))


def complexity_metrics(model):
    """The model-size columns of a run.

    Args:
        model: built Functional or Sequential Keras model with a fixed input
            shape.

    Returns:
        dict with "receptive_field", "flops_per_image" (multiply-adds) and
        "params" (trainable parameters; non-trainable state such as batch
        normalization's moving statistics is not counted).
    """
    return {
        "receptive_field": receptive_field(model),
        "flops_per_image": flops_per_image(model),
        "params": sum(
            math.prod(weight.shape) for weight in model.trainable_weights
        ),
    }


def _predict_classes(model, images, offsets, pad, pad_mode, batch_size):
    """Predicted classes of the crops of the padded images at `offsets`."""
    height, width = images.shape[1:3]
    predicted = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        padded = np.pad(
            batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=pad_mode
        )
        batch_offsets = offsets[start : start + batch_size]
        rows = batch_offsets[:, 0, None] + np.arange(height)
        columns = batch_offsets[:, 1, None] + np.arange(width)
        crops = padded[
            np.arange(len(batch))[:, None, None],
            rows[:, :, None],
            columns[:, None, :],
        ]
        scores = model.predict_on_batch(crops.astype("float32"))
        predicted.append(np.argmax(scores, axis=-1))
    return np.concatenate(predicted)


def _subset(images, labels, max_images, seed):
    if max_images is None:
        return images, labels
    _check_int(max_images, "max_images", 1)
    if max_images >= len(images):
        return images, labels
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), max_images, replace=False))
    return images[chosen], labels[chosen]


def _check_images(images):
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            "`images` must have shape (N, H, W, C). "
            f"Received: images.shape={images.shape}"
        )
    return images


def _check_labels(labels, num_images):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = np.argmax(labels, axis=-1)
    labels = labels.reshape(-1)
    if len(labels) != num_images:
        raise ValueError(
            "`labels` must hold one class id or one-hot row per image "
            f"({num_images} images). Received: {len(labels)} labels"
        )
    return labels


def _check_padding(images, pad, name, pad_mode):
    if pad_mode not in PAD_MODES:
        raise ValueError(
            f"`pad_mode` must be one of {PAD_MODES}. "
            f"Received: pad_mode={pad_mode!r}"
        )
    _check_int(pad, name, 0)
    if pad_mode == "reflect" and pad >= min(images.shape[1:3]):
        raise ValueError(
            f"With pad_mode='reflect', `{name}` must be smaller than the "
            f"image height and width {images.shape[1:3]}. "
            f"Received: {name}={pad}"
        )


def _check_int(value, name, minimum):
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}"
        )


class _Field:
    """Receptive field size and jump (input pixels) per spatial axis."""

    def __init__(self, size, jump):
        self.size = tuple(size)
        self.jump = tuple(jump)

    @classmethod
    def at_input(cls, spatial_dims):
        return cls((1,) * spatial_dims, (1,) * spatial_dims)

    def through(self, kernel, strides, dilation):
        return _Field(
            [
                r + (k - 1) * d * j
                for r, k, d, j in zip(
                    self.size, kernel, dilation, self.jump, strict=True
                )
            ],
            [j * s for j, s in zip(self.jump, strides, strict=True)],
        )


def _graph_inputs(model):
    inputs = getattr(model, "inputs", None) if model.built else None
    if not inputs:
        raise ValueError(
            "`model` must be a built Functional or Sequential model. "
            f"Received: {type(model).__name__} without symbolic inputs"
        )
    return inputs


def _graph_nodes(model):
    """Yields the layer calls of `model`'s graph, inputs first."""
    graph = keras.Function(_graph_inputs(model), model.outputs)
    # Keras exposes no public node walk; this is the order in which
    # `Function._run_through_graph` executes the graph.
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if not node.is_input:
                yield node


def _propagate_fields(model, input_fields, seen):
    """Fields of `model`'s outputs; appends every field met to `seen`."""
    fields = {id(t): f for t, f in zip(model.inputs, input_fields, strict=True)}
    for node in _graph_nodes(model):
        layer = node.operation
        node_fields = [fields[id(t)] for t in node.input_tensors]
        if isinstance(layer, keras.Model):
            output_fields = _propagate_fields(layer, node_fields, seen)
        else:
            output_fields = [_layer_field(layer, node, node_fields)] * len(
                node.output_tensors
            )
        for tensor, field in zip(
            node.output_tensors, output_fields, strict=True
        ):
            fields[id(tensor)] = field
            seen.append(field)
    return [fields[id(t)] for t in model.outputs]


def _layer_field(layer, node, input_fields):
    """Field of one layer call's output; None once it is no spatial map."""
    spatial = [field for field in input_fields if field is not None]
    if not spatial:
        return None
    name = type(layer).__name__
    rank = len(node.input_tensors[0].shape)
    # Global pooling ends the map even with keepdims=True.
    if len(node.output_tensors[0].shape) != rank or name.startswith("Global"):
        return None
    if len(spatial) < len(input_fields):
        raise ValueError(
            f"Layer {layer.name!r} ({name}) mixes a spatial map with a "
            "global (non-spatial) tensor, which makes the receptive field "
            "the whole input; `receptive_field` does not support it."
        )
    if len({field.jump for field in spatial}) > 1:
        raise ValueError(
            f"Layer {layer.name!r} ({name}) merges maps of different strides "
            f"{[field.jump for field in spatial]}; `receptive_field` needs "
            "them equal."
        )
    field = _Field(
        [max(axis) for axis in zip(*(f.size for f in spatial), strict=True)],
        spatial[0].jump,
    )
    window = _window(layer, node, rank - 2)
    return field if window is None else field.through(*window)


def _window(layer, node, spatial_dims):
    """(kernel, strides, dilation) of a windowed layer, None if pointwise."""
    name = type(layer).__name__
    if isinstance(layer, _TRANSPOSED_CONV_LAYERS):
        raise ValueError(
            f"Layer {layer.name!r} ({name}) upsamples; `receptive_field` "
            "does not support transposed convolutions."
        )
    if hasattr(layer, "kernel_size"):
        return tuple(
            _as_tuple(value, spatial_dims)
            for value in (
                layer.kernel_size,
                layer.strides,
                getattr(layer, "dilation_rate", 1),
            )
        )
    if hasattr(layer, "filter_size") and hasattr(layer, "strides"):
        # Blur pooling: its filter is its window. Max-blur pooling: a
        # stride-1 window of `pool_size`, then the filter at `strides`;
        # together one window of `pool_size + filter_size - 1`.
        filter_size = _as_tuple(layer.filter_size, spatial_dims)
        pool_size = _as_tuple(getattr(layer, "pool_size", 1), spatial_dims)
        kernel = tuple(
            p + f - 1 for p, f in zip(pool_size, filter_size, strict=True)
        )
        strides = _as_tuple(layer.strides, spatial_dims)
        return kernel, strides, (1,) * spatial_dims
    if getattr(layer, "output_ratio", None) is not None:
        # Fractional max pooling: regions of `pool_size` (Graham's disjoint
        # ones: at most ceil(1 / ratio) wide) at a mean step of 1 / ratio.
        steps = [1 / r for r in _as_tuple(layer.output_ratio, spatial_dims)]
        if layer.pool_size is None:
            kernel = tuple(math.ceil(step) for step in steps)
        else:
            kernel = _as_tuple(layer.pool_size, spatial_dims)
        return kernel, tuple(steps), (1,) * spatial_dims
    if hasattr(layer, "pool_size") and hasattr(layer, "strides"):
        kernel = _as_tuple(layer.pool_size, spatial_dims)
        strides = (
            kernel
            if layer.strides is None
            else _as_tuple(layer.strides, spatial_dims)
        )
        return kernel, strides, (1,) * spatial_dims
    if isinstance(layer, _BORDER_LAYERS + (keras.layers.Dense,)):
        return None
    has_kernel = any(
        len(weight.shape) > 2 for weight in getattr(layer, "weights", [])
    )
    output_size = _spatial_size(layer, node.output_tensors[0])
    same_size = all(
        _spatial_size(layer, tensor) == output_size
        for tensor in node.input_tensors
    )
    if has_kernel or not same_size:
        raise ValueError(
            f"`receptive_field` does not know layer {layer.name!r} ({name}): "
            "it changes the spatial size or holds a spatial kernel, but has "
            "no `kernel_size` or `pool_size`/`strides` attributes."
        )
    return None


def _spatial_size(layer, tensor):
    data_format = getattr(layer, "data_format", None)
    if data_format is None:
        data_format = keras.config.image_data_format()
    shape = tensor.shape[1:]
    return shape[1:] if data_format == "channels_first" else shape[:-1]


def _as_tuple(value, length):
    if isinstance(value, int):
        return (value,) * length
    return tuple(value)


def _multiply_adds(layer, node):
    """Multiply-adds per image of one layer call (see `layer_flops`)."""
    if isinstance(layer, keras.layers.Dense):
        inputs = _product(layer, node.input_tensors[0].shape[1:])
        return inputs * layer.units
    if not isinstance(
        layer, _CONV_LAYERS + _DEPTHWISE_LAYERS + _SEPARABLE_LAYERS
    ):
        return 0
    channels_axis = 1 if layer.data_format == "channels_first" else -1
    channels = node.input_tensors[0].shape[channels_axis]
    positions = _product(layer, _spatial_size(layer, node.output_tensors[0]))
    windows = positions * math.prod(layer.kernel_size)
    if isinstance(layer, _CONV_LAYERS):
        return windows * channels // layer.groups * layer.filters
    depthwise = windows * channels * layer.depth_multiplier
    if isinstance(layer, _DEPTHWISE_LAYERS):
        return depthwise
    pointwise = positions * channels * layer.depth_multiplier * layer.filters
    return depthwise + pointwise


def _product(layer, dims):
    if None in dims:
        raise ValueError(
            f"Layer {layer.name!r} has an unknown input or output shape; "
            "`flops_per_image` needs a model built on a fixed input shape."
        )
    return math.prod(dims)
