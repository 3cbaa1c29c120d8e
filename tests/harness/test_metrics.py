"""kpool.harness.metrics against NumPy references and hand computations."""

import math

import keras
import numpy as np
import pytest
from keras import layers

from kpool.harness import metrics

SHAPE = (8, 8, 3)
NUM_IMAGES = 24
CLASSES = 5


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(NUM_IMAGES, *SHAPE)).astype("float32")


@pytest.fixture(scope="module")
def dense():
    """A position-sensitive classifier and its weights, for NumPy references."""
    model = keras.Sequential(
        [keras.Input(SHAPE), layers.Flatten(), layers.Dense(CLASSES)]
    )
    rng = np.random.default_rng(2)
    weights = [
        rng.normal(size=(math.prod(SHAPE), CLASSES)).astype("float32"),
        rng.normal(size=CLASSES).astype("float32"),
    ]
    model.layers[-1].set_weights(weights)
    return model, weights


def dense_classes(weights, images):
    kernel, bias = (w.astype("float64") for w in weights)
    return np.argmax(images.reshape(len(images), -1) @ kernel + bias, -1)


@pytest.fixture(scope="module")
def circular_invariant():
    """1x1 convolution + global average pooling, with integer weights.

    Invariant to circular shifts, and exactly so in float32: integer pixels
    times integer weights, summed over 64 positions and divided by 64, are
    all represented exactly, whatever the order of the sums.
    """
    model = keras.Sequential(
        [
            keras.Input(SHAPE),
            layers.Conv2D(CLASSES, 1, use_bias=False),
            layers.GlobalAveragePooling2D(),
        ]
    )
    kernel = np.random.default_rng(3).integers(-3, 4, size=(1, 1, 3, CLASSES))
    model.layers[0].set_weights([kernel.astype("float32")])
    return model


def test_shift_consistency_is_100_for_circularly_invariant_model(
    images, circular_invariant
):
    assert (
        metrics.shift_consistency(
            circular_invariant, images, pad=4, pad_mode="wrap"
        )
        == 100.0
    )


@pytest.mark.parametrize("pad_mode", ["reflect", "constant", "wrap"])
def test_shift_consistency_matches_per_image_reference(images, dense, pad_mode):
    model, weights = dense
    seed, pad = 7, 2
    # The documented draw: (copy, image, (row, column)) offsets in 0..2*pad.
    offsets = np.random.default_rng(seed).integers(
        0, 2 * pad + 1, size=(2, NUM_IMAGES, 2)
    )
    classes = []
    for copy in offsets:
        crops = [
            np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=pad_mode)[
                row : row + SHAPE[0], column : column + SHAPE[1]
            ]
            for image, (row, column) in zip(images, copy, strict=True)
        ]
        classes.append(dense_classes(weights, np.stack(crops)))
    expected = 100.0 * np.mean(classes[0] == classes[1])
    assert expected < 100.0  # The model is not shift invariant.
    for batch_size in (7, 500):
        consistency = metrics.shift_consistency(
            model,
            images,
            seed=seed,
            pad=pad,
            pad_mode=pad_mode,
            batch_size=batch_size,
        )
        assert consistency == pytest.approx(expected)


def test_shift_consistency_reflect_keeps_constant_images_whole(dense):
    # Reflected borders of a constant image repeat it, so every crop is the
    # same image; zero borders are not.
    model, _ = dense
    colors = np.random.default_rng(4).integers(0, 256, size=(NUM_IMAGES, 3))
    constant = np.broadcast_to(colors[:, None, None, :], (NUM_IMAGES, *SHAPE))
    reflect = metrics.shift_consistency(model, constant, pad_mode="reflect")
    zeros = metrics.shift_consistency(model, constant, pad_mode="constant")
    assert reflect == 100.0
    assert zeros < 100.0


def reference_shift(images, rows, columns, pad_mode):
    """Moves image content by (rows, columns) without numpy.pad."""
    if pad_mode == "wrap":
        return np.roll(images, (rows, columns), axis=(1, 2))
    for axis, shift in ((1, rows), (2, columns)):
        # Shifting up is shifting down the flipped image.
        flip = shift < 0
        shift = abs(shift)
        if flip:
            images = np.flip(images, axis)
        if shift:
            kept = np.take(images, range(images.shape[axis] - shift), axis)
            if pad_mode == "reflect":
                filled = np.take(images, range(shift, 0, -1), axis)
            else:
                filled = np.zeros_like(np.take(images, range(shift), axis))
            images = np.concatenate([filled, kept], axis)
        if flip:
            images = np.flip(images, axis)
    return images


@pytest.mark.parametrize("pad_mode", ["reflect", "constant", "wrap"])
@pytest.mark.parametrize("shift", [1, 3])
def test_shifted_accuracy_matches_reference(images, dense, pad_mode, shift):
    model, weights = dense
    labels = dense_classes(weights, images)
    expected = np.mean(
        [
            np.mean(
                dense_classes(
                    weights, reference_shift(images, rows, columns, pad_mode)
                )
                == labels
            )
            for rows, columns in (
                (shift, 0),
                (-shift, 0),
                (0, shift),
                (0, -shift),
            )
        ]
    )
    assert expected < 1.0
    accuracy = metrics.shifted_accuracy(
        model, images, labels, shift, pad_mode=pad_mode, batch_size=10
    )
    assert accuracy == pytest.approx(expected)


def test_shifted_accuracy_zero_shift_is_accuracy(images, dense):
    model, weights = dense
    labels = dense_classes(weights, images)
    labels[::4] = (labels[::4] + 1) % CLASSES
    one_hot = np.eye(CLASSES)[labels]
    for given in (labels, labels[:, None], one_hot):
        assert metrics.shifted_accuracy(model, images, given, 0) == 0.75


def test_invariance_metrics_evaluates_seeded_subset(images, dense):
    model, weights = dense
    labels = dense_classes(weights, images)
    seed, max_images = 5, 10
    result = metrics.invariance_metrics(
        model, images, labels, seed=seed, max_shift=2, max_images=max_images
    )
    assert result == metrics.invariance_metrics(
        model, images, labels, seed=seed, max_shift=2, max_images=max_images
    )
    chosen = np.sort(
        np.random.default_rng(seed).choice(
            NUM_IMAGES, max_images, replace=False
        )
    )
    assert result == {
        "shift_consistency": metrics.shift_consistency(
            model, images[chosen], seed=seed
        ),
        "shift_accuracy_1px": metrics.shifted_accuracy(
            model, images[chosen], labels[chosen], 1
        ),
        "shift_accuracy_2px": metrics.shifted_accuracy(
            model, images[chosen], labels[chosen], 2
        ),
    }


def test_overfit_gap_is_train_minus_test_accuracy(images, dense):
    model, weights = dense
    labels = dense_classes(weights, images)
    wrong = (labels + 1) % CLASSES
    test_labels = np.where(np.arange(NUM_IMAGES) % 3 == 0, wrong, labels)
    assert metrics.overfit_gap(
        model, images, labels, images, test_labels
    ) == pytest.approx(
        {
            "inference_train_accuracy": 1.0,
            "inference_test_accuracy": 2 / 3,
            "overfit_gap": 1 / 3,
        }
    )


def hand_worked_model():
    """A 32x32x3 stack whose field and cost are worked out in the tests."""
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(16, 3, dilation_rate=2, groups=2, name="grouped")(x)
    block = keras.Sequential(
        [
            keras.Input((12, 12, 16)),
            layers.ZeroPadding2D(1),
            layers.DepthwiseConv2D(
                3, strides=2, depth_multiplier=2, name="depthwise"
            ),
        ],
        name="block",
    )
    x = block(x)
    shortcut = layers.AveragePooling2D(2, strides=1, padding="same")(x)
    x = layers.SeparableConv2D(32, 3, padding="same", name="separable")(x)
    x = layers.Concatenate()([x, shortcut])
    x = layers.Dropout(0.5)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10, name="dense")(x)
    return keras.Model(inputs, outputs)


def test_receptive_field_of_hand_worked_model():
    # layer            kernel dilation stride  jump in  field
    # conv 3x3         3      1        1       1        1 + 2*1*1 = 3
    # max pool 2       2      1        2       1        3 + 1*1*1 = 4
    # conv 3x3 dil 2   3      2        1       2        4 + 2*2*2 = 12
    # depthwise s2     3      1        2       2        12 + 2*1*2 = 16
    # separable 3x3    3      1        1       4        16 + 2*1*4 = 24
    # The average pool 2 shortcut: 16 + 1*1*4 = 20; concatenate: max = 24.
    assert metrics.receptive_field(hand_worked_model()) == 24


def test_receptive_field_of_blur_poolings_and_dilation():
    from kpool import layers as kpool_layers

    model = sequential(
        (32, 32, 3),
        layers.Conv2D(4, 3, padding="same"),
        kpool_layers.BlurPooling2D(filter_size=3, strides=2),
        layers.Conv2D(4, 3, dilation_rate=2, padding="same"),
        kpool_layers.MaxBlurPooling2D(pool_size=2, strides=2, filter_size=4),
        layers.Conv2D(4, 3, padding="same"),
        kpool_layers.GlobalGeMPooling2D(),
        layers.Dense(3),
    )
    # layer                 window            stride jump in field
    # conv 3x3              3                 1      1       1 + 2*1 = 3
    # blur, filter 3        3                 2      1       3 + 2*1 = 5
    # conv 3x3, dilation 2  3, spans 5        1      2       5 + 2*2*2 = 13
    # max 2 (stride 1),     2 + 4 - 1 = 5     2      2       13 + 4*2 = 21
    #   then blur 4
    # conv 3x3              3                 1      4       21 + 2*4 = 29
    # GeM ends the map.
    assert metrics.receptive_field(model) == 29


@pytest.mark.parametrize("ratio, expected", [(0.5, 8), (2**-0.5, 7)])
def test_receptive_field_of_fractional_max_pooling(ratio, expected):
    from kpool import layers as kpool_layers

    model = sequential(
        (32, 32, 3),
        layers.Conv2D(4, 3),
        kpool_layers.FractionalMaxPooling2D(output_ratio=ratio, seed=0),
        layers.Conv2D(4, 3),
    )
    # conv 3x3: 3; Graham's regions, at most ceil(1 / ratio) = 2 wide:
    # 3 + 1 = 4, mean step 1 / ratio; conv 3x3: 4 + 2 / ratio, rounded up:
    # 8 at 1/2, ceil(6.83) = 7 at 1/sqrt(2).
    assert metrics.receptive_field(model) == expected


def test_flops_and_params_of_hand_worked_model():
    model = hand_worked_model()
    expected = {
        "conv": 32 * 32 * 9 * 3 * 8,  # same padding: 32x32 output
        # 16x16x8 in, valid 3x3 dilated by 2: 12x12 out, 2 groups of 4 -> 8.
        "grouped": 12 * 12 * 9 * (8 // 2) * 16,
        # padded to 14x14, 3x3 stride 2: 6x6 out, 16 channels x 2.
        "block/depthwise": 6 * 6 * 9 * 16 * 2,
        # 6x6x32 in: depthwise 3x3 then 1x1 to 32 channels.
        "separable": 6 * 6 * 9 * 32 + 6 * 6 * 32 * 32,
        "dense": 64 * 10,
    }
    breakdown = metrics.layer_flops(model)
    assert {name: count for name, count in breakdown if count} == expected
    assert len(breakdown) == 14  # every layer call, nested ones included
    assert metrics.flops_per_image(model) == sum(expected.values())
    # conv 9*3*8 + 8, batch norm gamma and beta 2*8, grouped 9*4*16 + 16,
    # depthwise 9*16*2 + 32, separable 9*32 + 32*32 + 32, dense 64*10 + 10.
    params = 224 + 16 + 592 + 320 + 1344 + 650
    assert metrics.complexity_metrics(model) == {
        "receptive_field": 24,
        "flops_per_image": sum(expected.values()),
        "params": params,
    }


class WindowMin(layers.Layer):
    """Min pooling with `pool_size` and `strides` attributes, int or None."""

    def __init__(self, pool_size, strides=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.strides = strides

    def call(self, inputs):
        window = (self.pool_size,) * 2
        return -keras.ops.max_pool(-inputs, window, window, padding="valid")


class Subsample(layers.Layer):
    """Halves the spatial size without saying how."""

    def call(self, inputs):
        return inputs[:, ::2, ::2, :]


class HiddenConv(layers.Layer):
    """A 'same' 3x3 convolution that keeps the size but hides its kernel."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(3, 3, input_shape[-1], 2))

    def call(self, inputs):
        return keras.ops.conv(inputs, self.kernel, padding="same")


def sequential(shape, *stack):
    return keras.Sequential([keras.Input(shape), *stack])


@pytest.mark.parametrize(
    "model, expected",
    [
        # 3 -> pool 2 (+1, jump 2) -> 4 -> conv 3 (+2*2) -> 8
        (
            lambda: sequential(
                (16, 16, 3),
                layers.Conv2D(2, 3),
                WindowMin(2),
                layers.Conv2D(2, 3),
            ),
            8,
        ),
        # Non-square: rows 3, columns 5 -> the larger, 5.
        (lambda: sequential((16, 16, 3), layers.Conv2D(2, (3, 5))), 5),
        # Conv1D: 5 + (3-1)*2*1 = 9 with dilation 2, then pool 2: 9 + 1*1 = 10.
        (
            lambda: sequential(
                (32, 4),
                layers.Conv1D(2, 5),
                layers.Conv1D(2, 3, dilation_rate=2),
                layers.MaxPooling1D(2),
                layers.Flatten(),
                layers.Dense(3),
            ),
            10,
        ),
        # Cropping and a Dense on the map change nothing; nothing spatial
        # after the flatten counts.
        (
            lambda: sequential(
                (16, 16, 3),
                layers.Cropping2D(2),
                layers.Dense(4),
                layers.Conv2D(2, 3),
                layers.Flatten(),
                layers.Dense(3),
            ),
            3,
        ),
    ],
)
def test_receptive_field_of_small_stacks(model, expected):
    assert metrics.receptive_field(model()) == expected


@pytest.mark.parametrize("layer", [Subsample, HiddenConv])
def test_receptive_field_rejects_unknown_spatial_layers(layer):
    model = sequential((8, 8, 3), layer(), layers.GlobalMaxPooling2D())
    with pytest.raises(ValueError, match=layer.__name__):
        metrics.receptive_field(model)


def test_receptive_field_rejects_unbuilt_model():
    with pytest.raises(ValueError, match="`model` must be a built"):
        metrics.receptive_field(keras.Sequential([layers.Conv2D(2, 3)]))


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda m, x, y: metrics.shift_consistency(m, x, pad_mode="edge"),
            "`pad_mode` must be one of",
        ),
        (
            lambda m, x, y: metrics.shift_consistency(m, x, pad=8),
            "`pad` must be smaller",
        ),
        (
            lambda m, x, y: metrics.shifted_accuracy(m, x, y, -1),
            "`shift` must be an int >= 0",
        ),
        (
            lambda m, x, y: metrics.shift_consistency(m, x[0]),
            "`images` must have shape",
        ),
        (
            lambda m, x, y: metrics.shifted_accuracy(m, x, y[:3], 1),
            "`labels` must hold",
        ),
        (
            lambda m, x, y: metrics.shift_consistency(m, x, batch_size=0),
            "`batch_size` must be an int >= 1",
        ),
        (
            lambda m, x, y: metrics.invariance_metrics(m, x, y, max_images=0),
            "`max_images` must be an int >= 1",
        ),
        (
            lambda m, x, y: metrics.invariance_metrics(m, x, y, max_shift=-1),
            "`max_shift` must be an int >= 0",
        ),
    ],
)
def test_bad_arguments_raise(images, dense, call, match):
    model, weights = dense
    with pytest.raises(ValueError, match=match):
        call(model, images, dense_classes(weights, images))
