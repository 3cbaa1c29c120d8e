"""CIFAR model families whose variants differ only in the downsampling op.

`build_model` takes a `ModelConfig` and one downsampling choice and returns
a functional `keras.Model` mapping raw images (float32, 0..255,
channels_last) to float32 logits. The model starts with the on-device
augmentation (training only) and the CIFAR-10 normalisation, so the host
never touches a batch.

Downsampling choices:

- a `kpool.get_downsampling` name (max, avg, min, mixed, mixed_learned,
  gated, stochastic): a pooling layer with the config's `pool_size`,
  `pool_strides` and `pool_padding`, placed after the activation of the conv
  before it (conv -> BN -> ReLU -> pool) or before it (conv -> BN -> pool ->
  ReLU), as `pool_position` says;
- "strided" (Springenberg et al., 2014): no pooling layer; the conv before
  it gets stride 2;
- "allconv" (Springenberg et al., 2014): the pooling layer is replaced by a
  3x3 stride-2 conv with as many filters as it has input channels, followed
  by BN and ReLU like every conv of the family. `pool_position` does not
  apply: it moves pooling layers only.

Matched initialisation: every layer that two variants share has the same
name in both, and its initializer's seed is derived from (run seed, layer
name). Shared layers therefore start from identical weights whatever layers
a variant inserts (the strided conv has the same kernel shape as its pooled
counterpart, so it starts from the same kernel too). Dropout and the random
poolings are seeded the same way.

Families (`width` = channels of the first stage, default in parentheses):

- small_cnn (32): three stages of two 3x3 convs, w, 2w, 4w channels, a
  downsampling after each of the first two stages; fast on a CPU.
- model_c (96): Springenberg et al., 2014, "Striving for Simplicity: The All
  Convolutional Net", model C: 3x3 convs w, w, downsample, 2w, 2w,
  downsample, 2w (3x3, valid), 2w (1x1), one 1x1 conv per class, global
  pooling. Differences from the paper: BN after every conv (unless
  `batch_norm=False`); the class-score conv is linear, where the paper put a
  ReLU on it; dropout (the paper's 0.5) after each downsampling only when
  `dropout > 0`, and none on the input.
- vgg (64): VGG-11 (Simonyan & Zisserman, 2015, configuration A) for 32x32
  inputs with BN: w, ds, 2w, ds, 4w, 4w, ds, 8w, 8w, ds, 8w, 8w, ds.
- resnet (16): ResNet-20 (He et al., 2016, CIFAR version): a 3x3 stem conv,
  three stages of three basic blocks with w, 2w, 4w channels; a 1x1
  conv + BN projection shortcut where the channels change. Where a stage
  halves the resolution, a pooling (or allconv) variant downsamples the
  previous stage's output once, so the main path and the shortcut of the
  next block both see the downsampled map; "strided" is the original
  ResNet: stride 2 in the block's first conv and in its projection
  shortcut.

Heads: "gap" (global average pooling -> dense), "gmp" (global max
pooling -> dense), "flatten" (flatten -> dense). model_c's class-score conv
already outputs one map per class, so its "gap"/"gmp" heads pool those maps
into logits without a dense layer, as in the paper.
"""

import zlib

import keras

from kpool.augment import CIFAR10_MEAN, CIFAR10_VARIANCE, RandomCropFlip
from kpool.registry import downsampling_names, get_downsampling

FAMILY_WIDTHS = {"small_cnn": 32, "model_c": 96, "vgg": 64, "resnet": 16}
NON_POOLING_CHOICES = ("strided", "allconv")
# Registry poolings that draw random numbers and take a `seed`.
_SEEDED_POOLINGS = ("mixed", "stochastic")
_HEADS = ("gap", "gmp", "flatten")
_POOL_POSITIONS = ("after_activation", "before_activation")


def layer_seed(seed, name):
    """A seed for the layer `name` that depends only on the run seed and
    the name, so the same layer in two variants starts identically."""
    return zlib.crc32(f"{seed}/{name}".encode()) & 0x7FFFFFFF


def build_model(
    model_config,
    downsampling,
    *,
    num_classes=10,
    input_shape=(32, 32, 3),
    seed=0,
    augment=True,
    downsampling_options=None,
):
    """Builds one variant of a model family.

    Args:
        model_config: `kpool.config.ModelConfig`.
        downsampling: string. A `kpool.downsampling_names()` pooling,
            "strided" or "allconv".
        num_classes: int. Number of logits.
        input_shape: tuple. Shape of one raw image, channels_last, 3
            channels.
        seed: int. The run seed; every initializer, dropout and random
            pooling derives its seed from it and the layer name.
        augment: bool. Start with `RandomCropFlip` (training only).
        downsampling_options: dict mapping a registry name to extra keyword
            arguments of its layer (e.g. `{"mixed": {"alpha": 0.75}}`).

    Returns:
        A `keras.Model` from raw images to float32 logits, named
        f"{family}_{downsampling}".
    """
    family = model_config.family
    _check_choice("model.family", family, tuple(_FAMILIES))
    _check_choice("model.head", model_config.head, _HEADS)
    _check_choice(
        "model.pool_position", model_config.pool_position, _POOL_POSITIONS
    )
    builder = _Builder(
        model_config, downsampling, seed, downsampling_options or {}
    )
    width = model_config.width or FAMILY_WIDTHS[family]

    inputs = keras.Input(input_shape, name="images")
    x = inputs
    if augment:
        x = RandomCropFlip(
            padding=4, seed=layer_seed(seed, "augment"), name="augment"
        )(x)
    x = keras.layers.Normalization(
        mean=CIFAR10_MEAN, variance=CIFAR10_VARIANCE, name="normalize"
    )(x)
    if builder.data_format == "channels_first":
        x = keras.layers.Permute((3, 1, 2), name="to_channels_first")(x)
    x = _FAMILIES[family](builder, x, width, num_classes)
    x = builder.head(x, num_classes, class_maps=family == "model_c")
    # Logits in float32 even under a mixed precision policy, for a
    # numerically safe softmax and loss.
    outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(
        x
    )
    return keras.Model(inputs, outputs, name=f"{family}_{downsampling}")


def _check_choice(key, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"`{key}` must be one of {list(allowed)}. Received: {key}={value!r}"
        )


class _Builder:
    """Makes the layers of one variant: named, seeded, in the config's
    layout, with the chosen downsampling."""

    def __init__(self, model_config, downsampling, seed, options):
        pooling_names = tuple(
            n for n in downsampling_names() if not n.startswith("global_")
        )
        _check_choice(
            "downsampling", downsampling, pooling_names + NON_POOLING_CHOICES
        )
        self.config = model_config
        self.downsampling = downsampling
        self.seed = seed
        self.options = options
        self.data_format = model_config.data_format
        self.channel_axis = -1 if self.data_format == "channels_last" else 1

    @property
    def strided(self):
        return self.downsampling == "strided"

    def conv(
        self,
        x,
        filters,
        name,
        kernel_size=3,
        strides=1,
        padding="same",
        downsample=False,
        activate=True,
    ):
        """Conv -> BN [-> ReLU]; `downsample` makes it the conv before a
        downsampling: stride 2 under "strided", else the op follows."""
        if downsample and self.strided:
            strides = 2
        batch_norm = self.config.batch_norm
        x = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=not batch_norm,
            kernel_initializer=keras.initializers.HeNormal(
                seed=layer_seed(self.seed, name)
            ),
            data_format=self.data_format,
            name=name,
        )(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(
                axis=self.channel_axis,
                momentum=self.config.batch_norm_momentum,
                name=f"{name}_bn",
            )(x)
        if not activate:
            return x
        return self.activate(x, name, downsample=downsample)

    def activate(self, x, name, downsample=False):
        """ReLU, with the variant's downsampling after it (or before it,
        for a pooling with `pool_position="before_activation"`)."""
        relu = keras.layers.ReLU(name=f"{name}_relu")
        if not downsample or self.strided:
            return relu(x)
        if self.downsampling == "allconv":
            x = self.conv(
                relu(x),
                x.shape[self.channel_axis],
                f"{name}_allconv",
                strides=2,
            )
        elif self.config.pool_position == "after_activation":
            x = self._pooling(f"{name}_pool")(relu(x))
        else:
            x = relu(self._pooling(f"{name}_pool")(x))
        if self.config.dropout:
            x = keras.layers.Dropout(
                self.config.dropout,
                seed=layer_seed(self.seed, f"{name}_dropout"),
                name=f"{name}_dropout",
            )(x)
        return x

    def _pooling(self, name):
        kwargs = {
            "pool_size": self.config.pool_size,
            "strides": self.config.pool_strides,
            "padding": self.config.pool_padding,
            "data_format": self.data_format,
        }
        if self.downsampling in _SEEDED_POOLINGS:
            kwargs["seed"] = layer_seed(self.seed, name)
        kwargs.update(self.options.get(self.downsampling, {}))
        layer = get_downsampling(self.downsampling, **kwargs)
        # `get_downsampling`'s first parameter is called `name`, so the
        # layer's name cannot be passed through it. Renaming is safe before
        # the layer is called: its weights are created (and named) then.
        layer.name = name
        return layer

    def dense(self, x, units, name):
        return keras.layers.Dense(
            units,
            kernel_initializer=keras.initializers.GlorotUniform(
                seed=layer_seed(self.seed, name)
            ),
            name=name,
        )(x)

    def head(self, x, num_classes, class_maps=False):
        """Logits from the last feature map; `class_maps`: the map already
        has one channel per class."""
        head = self.config.head
        if head == "flatten":
            x = keras.layers.Flatten(data_format=self.data_format)(x)
            return self.dense(x, num_classes, "classifier")
        pooling = {
            "gap": keras.layers.GlobalAveragePooling2D,
            "gmp": keras.layers.GlobalMaxPooling2D,
        }[head]
        x = pooling(data_format=self.data_format, name=f"head_{head}")(x)
        return x if class_maps else self.dense(x, num_classes, "classifier")


def _small_cnn(builder, x, width, num_classes):
    for stage, filters in enumerate((width, 2 * width, 4 * width), 1):
        x = builder.conv(x, filters, f"stage{stage}_conv1")
        x = builder.conv(
            x, filters, f"stage{stage}_conv2", downsample=stage < 3
        )
    return x


def _model_c(builder, x, width, num_classes):
    x = builder.conv(x, width, "conv1")
    x = builder.conv(x, width, "conv2", downsample=True)
    x = builder.conv(x, 2 * width, "conv3")
    x = builder.conv(x, 2 * width, "conv4", downsample=True)
    x = builder.conv(x, 2 * width, "conv5", padding="valid")
    x = builder.conv(x, 2 * width, "conv6", kernel_size=1)
    # The class-score conv: linear, with a bias, no BN.
    return keras.layers.Conv2D(
        num_classes,
        1,
        kernel_initializer=keras.initializers.HeNormal(
            seed=layer_seed(builder.seed, "class_conv")
        ),
        data_format=builder.data_format,
        name="class_conv",
    )(x)


# VGG-11 ("A") channel multipliers of `width`; "D" marks a downsampling.
_VGG11 = (1, "D", 2, "D", 4, 4, "D", 8, 8, "D", 8, 8, "D")


def _vgg(builder, x, width, num_classes):
    convs = [
        (multiplier, _VGG11[i + 1] == "D")
        for i, multiplier in enumerate(_VGG11)
        if multiplier != "D"
    ]
    for number, (multiplier, downsample) in enumerate(convs, 1):
        x = builder.conv(
            x, multiplier * width, f"conv{number}", downsample=downsample
        )
    return x


def _resnet(builder, x, width, num_classes, blocks_per_stage=3):
    x = builder.conv(x, width, "stem")
    for stage, filters in enumerate((width, 2 * width, 4 * width), 1):
        for block in range(1, blocks_per_stage + 1):
            name = f"stage{stage}_block{block}"
            transition = stage > 1 and block == 1
            x = _basic_block(
                builder,
                x,
                filters,
                name,
                strides=2 if transition and builder.strided else 1,
            )
            # A pooling or allconv variant downsamples the stage's output
            # once, before the next stage's first block and its shortcut.
            x = builder.activate(
                x, name, downsample=block == blocks_per_stage and stage < 3
            )
    return x


def _basic_block(builder, x, filters, name, strides):
    """Returns the sum before the block's last ReLU."""
    shortcut = x
    if strides != 1 or x.shape[builder.channel_axis] != filters:
        shortcut = builder.conv(
            x,
            filters,
            f"{name}_shortcut",
            kernel_size=1,
            strides=strides,
            activate=False,
        )
    y = builder.conv(x, filters, f"{name}_conv1", strides=strides)
    y = builder.conv(y, filters, f"{name}_conv2", activate=False)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


_FAMILIES = {
    "small_cnn": _small_cnn,
    "model_c": _model_c,
    "vgg": _vgg,
    "resnet": _resnet,
}
