import dataclasses
import os

import keras
import numpy as np
import pytest

from kpool.harness.config import (
    DOWNSAMPLING_CHOICES,
    MODEL_FAMILIES,
    ModelConfig,
)
from kpool.harness.metrics import receptive_field
from kpool.harness.models import (
    build_model,
    downsampling_choices,
    layer_seed,
    min_image_size,
)

WIDTH = 8
IMAGES = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))
IMAGES = IMAGES.astype("float32")
# Channels entering each downsampling, in units of `width`.
DOWNSAMPLED_CHANNELS = {
    "small_cnn": (1, 2),
    "model_c": (1, 2),
    "vgg": (1, 2, 4, 8, 8),
    "resnet": (1, 2),
}
# The convs that get stride 2 under "strided" (Springenberg et al.: the conv
# before the pooling; ResNet: the first conv of a stage and its shortcut).
STRIDED_CONVS = {
    "small_cnn": {"stage1_conv2", "stage2_conv2"},
    "model_c": {"conv2", "conv4"},
    "vgg": {"conv1", "conv2", "conv4", "conv6", "conv8"},
    "resnet": {
        "stage2_block1_conv1",
        "stage2_block1_shortcut",
        "stage3_block1_conv1",
        "stage3_block1_shortcut",
    },
}


def build(family="small_cnn", downsampling="max", seed=0, **overrides):
    config = ModelConfig(family=family, width=WIDTH, **overrides)
    return build_model(config, downsampling, seed=seed)


def conv_strides(model):
    return {
        layer.name: tuple(layer.strides)
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    }


def pooling_layers(model):
    """Windowed pooling layers (the heads' global poolings excluded)."""
    return [
        layer
        for layer in model.layers
        if "Pooling" in type(layer).__name__
        and "Global" not in type(layer).__name__
    ]


def family_choice_cases():
    """Every family with every choice on TensorFlow, the backend that runs
    the full grids (tests/conftest.py). Elsewhere, where each choice's
    layers have their own tests (tests/layers), every choice in the small
    CNN and every family with max pooling (KPOOL_FULL_GRID=1: all)."""
    full = (
        keras.backend.backend() == "tensorflow"
        or os.environ.get("KPOOL_FULL_GRID") == "1"
    )
    return [
        (family, downsampling)
        for family in MODEL_FAMILIES
        for downsampling in DOWNSAMPLING_CHOICES
        if full or family == "small_cnn" or downsampling == "max"
    ]


@pytest.mark.parametrize("family, downsampling", family_choice_cases())
def test_every_family_and_choice_runs(family, downsampling):
    model = build(family, downsampling)
    logits = model(IMAGES, training=True)
    assert tuple(logits.shape) == (2, 10)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))
    assert model.name == f"{family}_{downsampling}"


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_strided_drops_the_pooling_and_strides_the_conv_before_it(family):
    pooled = build(family, "max")
    strided = build(family, "strided")
    assert len(pooling_layers(pooled)) == len(DOWNSAMPLED_CHANNELS[family])
    assert pooling_layers(strided) == []
    assert set(conv_strides(pooled).values()) == {(1, 1)}
    strides = conv_strides(strided)
    assert {n for n, s in strides.items() if s == (2, 2)} == (
        STRIDED_CONVS[family]
    )
    assert strides.keys() == conv_strides(pooled).keys()
    assert strided.count_params() == pooled.count_params()


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_allconv_replaces_each_pooling_by_a_3x3_stride_2_conv(family):
    pooled = build(family, "max")
    allconv = build(family, "allconv")
    assert pooling_layers(allconv) == []
    extra = [
        layer
        for layer in allconv.layers
        if isinstance(layer, keras.layers.Conv2D)
        and layer.name not in conv_strides(pooled)
    ]
    assert [tuple(layer.kernel_size) for layer in extra] == [(3, 3)] * len(
        DOWNSAMPLED_CHANNELS[family]
    )
    assert {tuple(layer.strides) for layer in extra} == {(2, 2)}
    # Each extra conv maps c channels to c (no bias under BN) and adds a
    # BN layer of 4 weights per channel.
    channels = [WIDTH * m for m in DOWNSAMPLED_CHANNELS[family]]
    added = sum(9 * c * c + 4 * c for c in channels)
    assert allconv.count_params() == pooled.count_params() + added


def conv_dilations(model):
    return {
        layer.name: tuple(layer.dilation_rate)
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    }


# Dilation of each 3x3 conv under "dilated" with stride-2 downsamplings: the
# product of the strides removed before it.
DILATIONS = {
    "small_cnn": {"stage1": 1, "stage2": 2, "stage3": 4},
    "vgg": {
        "conv1": 1,
        "conv2": 2,
        "conv3": 4,
        "conv4": 4,
        "conv5": 8,
        "conv6": 8,
        "conv7": 16,
        "conv8": 16,
    },
    "resnet": {"stem": 1, "stage1": 1, "stage2": 2, "stage3": 4},
    "model_c": {"conv1": 1, "conv2": 1, "conv3": 2, "conv4": 2, "conv5": 4},
}


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_dilated_keeps_the_resolution_and_dilates_the_convs_after(family):
    pooled = build(family, "max")
    dilated = build(family, "dilated")
    assert pooling_layers(dilated) == []
    assert set(conv_strides(dilated).values()) == {(1, 1)}
    assert conv_strides(dilated).keys() == conv_strides(pooled).keys()
    assert dilated.count_params() == pooled.count_params()
    for name, dilation in conv_dilations(dilated).items():
        layer = dilated.get_layer(name)
        if tuple(layer.kernel_size) == (1, 1):
            assert dilation == (1, 1), name
            continue
        prefix = next(p for p in DILATIONS[family] if name.startswith(p))
        assert dilation == (DILATIONS[family][prefix],) * 2, name
    # No downsampling: the head sees a map of the input's size (less
    # model_c's 3x3 valid conv, 2 * 4 pixels at dilation 4).
    head_input = dilated.get_layer("head_gap").input
    size = 24 if family == "model_c" else 32
    assert tuple(head_input.shape[1:3]) == (size, size)


def test_dilation_follows_the_pooling_stride():
    # 3x3 windows with stride 3 remove a factor 3 each.
    model = build("small_cnn", "dilated", pool_size=3)
    assert model.get_layer("stage2_conv1").dilation_rate == (3, 3)
    assert model.get_layer("stage3_conv2").dilation_rate == (9, 9)
    model = build("small_cnn", "dilated", pool_size=3, pool_strides=2)
    assert model.get_layer("stage3_conv2").dilation_rate == (4, 4)


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_dilated_receptive_field_is_the_pooled_one_less_the_windows(family):
    # The i-th 2x2 window (i = 0, 1, ...) sits at jump 2**i and adds
    # (2 - 1) * 2**i pixels that the dilated net has no window for.
    windows = sum(2**i for i in range(len(DOWNSAMPLED_CHANNELS[family])))
    assert receptive_field(build(family, "dilated")) == (
        receptive_field(build(family, "max")) - windows
    )


@pytest.mark.parametrize("family", ["small_cnn", "model_c", "vgg"])
def test_dilated_receptive_field_equals_the_strided_net(family):
    # In the plain families the strided conv is the conv before the pool,
    # so its taps land where the dilated net's do.
    assert receptive_field(build(family, "dilated")) == receptive_field(
        build(family, "strided")
    )


def test_dilated_receptive_field_by_hand():
    # small_cnn, 2x2 windows: r = 1 + 2 + 2 (stage 1), + 2 * 2 * 2
    # (stage 2, dilation 2), + 2 * 2 * 4 (stage 3, dilation 4) = 29; the
    # pooled net adds each window's own extent, (2 - 1) * 1 + (2 - 1) * 2.
    assert receptive_field(build("small_cnn", "dilated")) == 29
    assert receptive_field(build("small_cnn", "max")) == 32


def test_dilated_costs_more_flops_than_pooling():
    from kpool.harness.metrics import flops_per_image

    pooled = flops_per_image(build("small_cnn", "max"))
    dilated = flops_per_image(build("small_cnn", "dilated"))
    # Stage s keeps 4**(s-1) times the positions of the pooled net.
    w = WIDTH
    stage_flops = [
        9 * (3 * w + w * w),
        9 * (w * 2 * w + 2 * w * 2 * w),
        9 * (2 * w * 4 * w + 4 * w * 4 * w),
    ]
    head = 4 * w * 10
    assert pooled == 32 * 32 * stage_flops[0] + 16 * 16 * stage_flops[1] + (
        8 * 8 * stage_flops[2] + head
    )
    assert dilated == 32 * 32 * sum(stage_flops) + head


@pytest.mark.parametrize("family", ["small_cnn", "model_c"])
def test_strided_and_dilated_get_dropout_at_each_downsampling(family):
    for name in ("strided", "dilated", "max"):
        model = build(family, name, dropout=0.5)
        dropouts = [
            layer
            for layer in model.layers
            if isinstance(layer, keras.layers.Dropout)
        ]
        assert len(dropouts) == len(DOWNSAMPLED_CHANNELS[family]), name


def blur_layers(model):
    return [
        layer
        for layer in model.layers
        if type(layer).__name__ == "BlurPooling2D"
    ]


def test_blurstrided_blurs_after_a_stride_1_conv():
    model = build("small_cnn", "blurstrided")
    assert set(conv_strides(model).values()) == {(1, 1)}
    blurs = blur_layers(model)
    assert [layer.name for layer in blurs] == [
        "stage1_conv2_blur",
        "stage2_conv2_blur",
    ]
    assert {(tuple(b.strides), b.filter_size) for b in blurs} == {((2, 2), 3)}
    assert blurs[0].input is model.get_layer("stage1_conv2_relu").output
    assert model.count_params() == build("small_cnn", "max").count_params()


def test_blurstrided_in_a_plain_family_is_blur_pooling_after_the_relu():
    options = {
        "blurstrided": {"filter_size": 5},
        "blurpool": {"filter_size": 5},
    }
    config = ModelConfig(width=WIDTH)
    outputs = [
        keras.ops.convert_to_numpy(
            build_model(config, name, seed=1, downsampling_options=options)(
                IMAGES
            )
        )
        for name in ("blurstrided", "blurpool")
    ]
    np.testing.assert_allclose(*outputs, rtol=1e-5, atol=1e-5)


def test_blurstrided_resnet_blurs_inside_the_transition_blocks():
    model = build("resnet", "blurstrided")
    assert set(conv_strides(model).values()) == {(1, 1)}
    assert sorted(layer.name for layer in blur_layers(model)) == [
        f"stage{s}_block1_{part}_blur"
        for s in (2, 3)
        for part in ("conv1", "shortcut")
    ]
    # Zhang's anti-aliased shortcut: blur, then the 1x1 conv.
    shortcut = model.get_layer("stage2_block1_shortcut")
    assert (
        shortcut.input is model.get_layer("stage2_block1_shortcut_blur").output
    )
    assert (
        conv_strides(model).keys()
        == conv_strides(build("resnet", "strided")).keys()
    )


def test_blurpool_takes_the_stride_and_its_filter_from_the_options():
    model = build_model(
        ModelConfig(width=WIDTH, pool_size=3, pool_strides=2),
        "blurpool",
        downsampling_options={"blurpool": {"filter_size": 4}},
    )
    blurs = blur_layers(model)
    assert len(blurs) == 2
    assert {(tuple(b.strides), b.filter_size) for b in blurs} == {((2, 2), 4)}


def test_maxblurpool_variants_get_their_filter_sizes():
    options = {
        f"maxblurpool_f{f}": {"choice": "maxblurpool", "filter_size": f}
        for f in (2, 5)
    }
    for f in (2, 5):
        model = build_model(
            ModelConfig(width=WIDTH),
            f"maxblurpool_f{f}",
            downsampling_options=options,
        )
        layers = pooling_layers(model)
        assert [type(layer).__name__ for layer in layers] == [
            "MaxBlurPooling2D"
        ] * 2
        assert {layer.filter_size for layer in layers} == {f}
        assert {tuple(layer.pool_size) for layer in layers} == {(2, 2)}
        assert tuple(model(IMAGES).shape) == (2, 10)


def test_parameter_counts_of_the_pooling_choices():
    max_params = build("small_cnn", "max").count_params()
    for name in ("avg", "min", "mixed", "stochastic"):
        assert build("small_cnn", name).count_params() == max_params
    # One mixing weight per layer, then 2x2 gate weights per layer, for the
    # two downsamplings (granularity "layer").
    assert build("small_cnn", "mixed_learned").count_params() == max_params + 2
    assert build("small_cnn", "gated").count_params() == max_params + 8


def test_small_cnn_parameter_count_by_hand():
    w = WIDTH
    convs = [(3, w), (w, w), (w, 2 * w), (2 * w, 2 * w)]
    convs += [(2 * w, 4 * w), (4 * w, 4 * w)]
    expected = sum(9 * cin * cout + 4 * cout for cin, cout in convs)
    expected += 4 * w * 10 + 10  # dense head
    assert build("small_cnn", "max").count_params() == expected


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_shared_layers_start_with_identical_weights(family):
    variants = {
        name: build(family, name, seed=3)
        for name in ("max", "stochastic", "allconv", "mixed_learned")
    }
    reference = variants.pop("max")
    weighted = [layer for layer in reference.layers if layer.weights]
    assert len(weighted) > 5
    for model in variants.values():
        for layer in weighted:
            other = model.get_layer(layer.name)
            for a, b in zip(layer.weights, other.weights, strict=True):
                np.testing.assert_array_equal(
                    keras.ops.convert_to_numpy(a),
                    keras.ops.convert_to_numpy(b),
                )
    # The seed matters: another run seed gives other initial weights.
    other_seed = build(family, "max", seed=4)
    first_conv = next(
        layer for layer in weighted if isinstance(layer, keras.layers.Conv2D)
    )
    assert not np.array_equal(
        keras.ops.convert_to_numpy(first_conv.kernel),
        keras.ops.convert_to_numpy(
            other_seed.get_layer(first_conv.name).kernel
        ),
    )


def test_strided_conv_starts_from_the_pooled_variant_kernel():
    pooled = build("model_c", "max", seed=1)
    strided = build("model_c", "strided", seed=1)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(pooled.get_layer("conv2").kernel),
        keras.ops.convert_to_numpy(strided.get_layer("conv2").kernel),
    )


def test_pool_position_moves_the_pooling_around_the_relu():
    after = build("small_cnn", "avg", pool_position="after_activation")
    before = build("small_cnn", "avg", pool_position="before_activation")
    pool_after = after.get_layer("stage1_conv2_pool")
    pool_before = before.get_layer("stage1_conv2_pool")
    assert pool_after.input is after.get_layer("stage1_conv2_relu").output
    assert pool_before.input is before.get_layer("stage1_conv2_bn").output
    # Same weights, different functions: ReLU does not commute with avg.
    assert not np.allclose(
        keras.ops.convert_to_numpy(after(IMAGES)),
        keras.ops.convert_to_numpy(before(IMAGES)),
    )


def test_max_pooling_commutes_with_relu():
    after = build("small_cnn", "max", pool_position="after_activation")
    before = build("small_cnn", "max", pool_position="before_activation")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(after(IMAGES)),
        keras.ops.convert_to_numpy(before(IMAGES)),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("head", ["gap", "gmp", "flatten"])
def test_heads(head):
    model = build("small_cnn", "max", head=head)
    dense = model.get_layer("classifier")
    # 32 -> 16 -> 8 pixels, 4 * WIDTH channels.
    features = 8 * 8 * 4 * WIDTH if head == "flatten" else 4 * WIDTH
    assert dense.kernel.shape == (features, 10)
    assert tuple(model(IMAGES).shape) == (2, 10)


@pytest.mark.parametrize("head, bins", [("gem", 1), ("spp", 1 + 4 + 16)])
def test_pooling_heads(head, bins):
    model = build("small_cnn", "max", head=head)
    assert type(model.get_layer(f"head_{head}")).__name__ in (
        "GlobalGeMPooling2D",
        "SpatialPyramidPooling2D",
    )
    # GeM pools each of the 4 * WIDTH channels to one number; SPP to one
    # per bin of its 1x1, 2x2 and 4x4 grids.
    dense = model.get_layer("classifier")
    assert dense.kernel.shape == (4 * WIDTH * bins, 10)
    assert tuple(model(IMAGES).shape) == (2, 10)


def test_model_c_gem_pools_the_class_maps_and_spp_adds_a_dense():
    gem = build("model_c", "max", head="gem")
    assert not any(isinstance(x, keras.layers.Dense) for x in gem.layers)
    spp = build("model_c", "max", head="spp")
    assert spp.get_layer("classifier").kernel.shape == (10 * 21, 10)


def test_model_c_global_heads_pool_the_class_maps():
    model = build("model_c", "max", head="gap")
    assert not any(isinstance(x, keras.layers.Dense) for x in model.layers)
    class_maps = keras.Model(model.input, model.get_layer("class_conv").output)(
        IMAGES
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(IMAGES)),
        np.mean(keras.ops.convert_to_numpy(class_maps), axis=(1, 2)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_augmentation_only_in_training():
    augmented = build("small_cnn", "max")
    plain = build_model(ModelConfig(width=WIDTH), "max", augment=False)
    assert "augment" in [layer.name for layer in augmented.layers]
    assert "augment" not in [layer.name for layer in plain.layers]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(augmented(IMAGES, training=False)),
        keras.ops.convert_to_numpy(plain(IMAGES, training=False)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_normalisation_uses_cifar10_statistics():
    from kpool.harness.augment import CIFAR10_MEAN, CIFAR10_STD

    model = build("small_cnn", "max")
    normalize = keras.Model(model.input, model.get_layer("normalize").output)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normalize(IMAGES)),
        (IMAGES - CIFAR10_MEAN) / CIFAR10_STD,
        rtol=1e-4,
        atol=1e-4,
    )


def test_mixed_precision_keeps_float32_logits():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build("small_cnn", "stochastic")
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("stage1_conv1").compute_dtype == "float16"
    logits = model(IMAGES, training=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="TensorFlow's CPU convolutions support channels_last only",
)
def test_channels_first_computes_the_same_function():
    last = build("small_cnn", "max", seed=2)
    first = build("small_cnn", "max", seed=2, data_format="channels_first")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(last(IMAGES)),
        keras.ops.convert_to_numpy(first(IMAGES)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_downsampling_options_reach_the_layer():
    config = ModelConfig(width=WIDTH)
    model = build_model(
        config, "mixed", downsampling_options={"mixed": {"alpha": 0.25}}
    )
    assert {layer.alpha for layer in pooling_layers(model)} == {0.25}
    assert len({layer.seed for layer in pooling_layers(model)}) == 2


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_batch_norm_momentum_reaches_every_bn_layer(momentum):
    model = build("resnet", "allconv", batch_norm_momentum=momentum)
    bn = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(bn) > 10
    assert {layer.momentum for layer in bn} == {momentum}


def test_batch_norm_momentum_sets_the_moving_average():
    """One training-mode call moves the moving mean by (1 - momentum) of the
    way to the batch mean."""
    config = ModelConfig(width=WIDTH, batch_norm_momentum=0.75)
    model = build_model(config, "max", augment=False)
    sub = keras.Model(model.input, model.get_layer("stage1_conv1").output)
    batch_mean = np.mean(
        keras.ops.convert_to_numpy(sub(IMAGES)), axis=(0, 1, 2)
    )
    model(IMAGES, training=True)
    moving_mean = keras.ops.convert_to_numpy(
        model.get_layer("stage1_conv1_bn").moving_mean
    )
    np.testing.assert_allclose(moving_mean, 0.25 * batch_mean, rtol=1e-4)


def test_layer_seed_depends_on_run_seed_and_name():
    assert layer_seed(0, "conv1") == layer_seed(0, "conv1")
    assert layer_seed(0, "conv1") != layer_seed(1, "conv1")
    assert layer_seed(0, "conv1") != layer_seed(0, "conv2")
    assert 0 <= layer_seed(123, "x") < 2**31


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("family", "lenet", "`model.family` must be one of"),
        ("head", "dense", "`model.head` must be one of"),
        ("pool_position", "inside", "`model.pool_position` must be one of"),
    ],
)
def test_bad_model_config(key, value, message):
    config = dataclasses.replace(ModelConfig(), **{key: value})
    with pytest.raises(ValueError, match=message):
        build_model(config, "max")


def test_bad_downsampling():
    with pytest.raises(ValueError, match="`downsampling` must be one of"):
        build_model(ModelConfig(), "median_of_5")
    # A head's layer is no downsampling choice.
    with pytest.raises(ValueError, match="`downsampling` must be one of"):
        build_model(ModelConfig(), "global_max")


def test_a_variant_builds_its_choice_with_its_options():
    options = {"mixed_a25": {"choice": "mixed", "alpha": 0.25}}
    model = build_model(
        ModelConfig(width=WIDTH), "mixed_a25", downsampling_options=options
    )
    assert {layer.alpha for layer in pooling_layers(model)} == {0.25}
    assert {layer.mode for layer in pooling_layers(model)} == {"random"}
    assert model.name == "small_cnn_mixed_a25"


def test_config_choices_are_the_models_choices():
    assert set(DOWNSAMPLING_CHOICES) == set(downsampling_choices())


# Any image size and number of classes, down to what each family takes.

SMALLEST_SIDE = {"small_cnn": 4, "model_c": 12, "vgg": 32, "resnet": 4}


@pytest.mark.parametrize(
    "family, overrides, side",
    [
        *[(family, {}, side) for family, side in SMALLEST_SIDE.items()],
        # By hand, backwards from the last map: 3x3 windows at stride 2,
        # "valid", need 3 before the last of vgg's five downsamplings, so
        # 7, 15, 31 and 63 before the ones above it.
        (
            "vgg",
            {"pool_size": 3, "pool_strides": 2, "pool_padding": "valid"},
            63,
        ),
        # Stride 3, rounding down: model_c's 3x3 map needs 9, then 27.
        ("model_c", {"pool_size": 3}, 27),
    ],
)
def test_min_image_size(family, overrides, side):
    assert min_image_size(ModelConfig(family=family, **overrides)) == side


# Rounding up ("same" max pooling), down (fractional), and no downsampling
# with the dilated convs' reach (model_c's "valid" conv).
@pytest.mark.parametrize("downsampling", ["max", "fractional", "dilated"])
@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_every_family_runs_at_its_smallest_size(family, downsampling):
    side = SMALLEST_SIDE[family]
    config = ModelConfig(family=family, width=WIDTH)
    model = build_model(
        config, downsampling, num_classes=3, input_shape=(side, side, 3)
    )
    images = np.random.default_rng(0).uniform(0, 255, (2, side, side, 3))
    logits = keras.ops.convert_to_numpy(model(images, training=True))
    assert logits.shape == (2, 3)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_images_below_the_smallest_size_are_refused(family):
    side = SMALLEST_SIDE[family]
    config = ModelConfig(family=family, width=WIDTH)
    message = (
        f"`model.family`='{family}' needs images of at least {side}x{side}: "
        r".*Received: \d+x\d+ images"
    )
    for shape in [(side - 1, side, 3), (side, side - 1, 3)]:
        with pytest.raises(ValueError, match=message):
            build_model(config, "max", input_shape=shape)


@pytest.mark.parametrize("head", ["gap", "flatten", "spp"])
@pytest.mark.parametrize("family", ["small_cnn", "model_c"])
def test_head_and_input_follow_the_data(family, head):
    # Non-square images and 7 classes: the input and the classifier take
    # their shapes from the data.
    config = ModelConfig(family=family, width=WIDTH, head=head)
    model = build_model(config, "max", num_classes=7, input_shape=(40, 24, 3))
    assert tuple(model.input_shape) == (None, 40, 24, 3)
    logits = model(np.zeros((2, 40, 24, 3), "float32"))
    assert tuple(logits.shape) == (2, 7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (32, 32, 1)}, r"`input_shape` must be \(height, "),
        ({"input_shape": (32, 32)}, r"`input_shape` must be \(height, "),
        ({"num_classes": 1}, "`num_classes` must be an int >= 2"),
        ({"num_classes": 10.0}, "`num_classes` must be an int >= 2"),
    ],
)
def test_bad_inputs_or_classes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(ModelConfig(width=WIDTH), "max", **kwargs)


def test_too_small_images_stop_the_experiment_before_training(tmp_path):
    from kpool.harness.config import ConfigError, config_from_dict
    from kpool.harness.experiment import run_experiment

    config = config_from_dict(
        {
            "output_dir": str(tmp_path),
            "model": {"family": "vgg", "width": WIDTH},
            "data": {
                "source": "synthetic",
                "image_size": 16,
                "subset": 20,
                "test_subset": 10,
            },
        }
    )
    with pytest.raises(ConfigError) as raised:
        run_experiment(config, verbose=0)
    message = str(raised.value)
    assert "`model.family`='vgg' needs images of at least 32x32" in message
    assert "Received: 16x16 images" in message
    assert not (tmp_path / "experiment").exists()
