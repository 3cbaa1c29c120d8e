"""CIFAR model families whose variants differ only in the downsampling op.

`build_model` takes a `ModelConfig` and one downsampling choice and returns
a functional `keras.Model` mapping raw images (float32, 0..255,
channels_last) to float32 logits. The model starts with the on-device
augmentation (training only) and the CIFAR-10 normalisation, so the host
never touches a batch. The families were designed for CIFAR's 32x32 RGB
images, and take any RGB image size down to their smallest (see
`min_image_size` and the families below) and any number of classes: the
input and the classifier take their shapes from the data.

Downsampling choices:

- a `kpool.get_downsampling` pooling name (max, avg, min, mixed,
  mixed_learned, gated, stochastic, blurpool, maxblurpool, softpool, tree,
  median, lp, fractional; `downsampling_choices()` lists them): a pooling layer
  with the config's `pool_size`, `pool_strides` and `pool_padding`, placed
  after the activation of the conv before it (conv -> BN -> ReLU -> pool)
  or before it (conv -> BN -> pool -> ReLU), as `pool_position` says;
  "blurpool" takes only the stride (`pool_strides`, else `pool_size`): its
  window is its `filter_size` (a `downsampling_options` key); "fractional"
  takes `output_ratio = 1 / stride` (Graham's regions; set another ratio
  in `downsampling_options`);
- "strided" (Springenberg et al., 2014): no pooling layer; the conv before
  it gets stride 2;
- "allconv" (Springenberg et al., 2014): the pooling layer is replaced by a
  3x3 stride-2 conv with as many filters as it has input channels, followed
  by BN and ReLU like every conv of the family;
- "blurstrided" (Zhang, 2019, "Making Convolutional Networks Shift-Invariant
  Again", the anti-aliased strided conv): the conv runs at stride 1 and
  blur pooling with stride 2 follows its ReLU. Its `downsampling_options`
  go to `BlurPooling2D` (`filter_size`, ...). In the plain families this is
  the same network as "blurpool" after the activation; in the ResNet it
  sits inside the transition block, where "strided" strides: after the
  first conv's ReLU, and before the 1x1 shortcut conv, as in Zhang's
  anti-aliased ResNet;
- "dilated" (Yu & Koltun, 2016, "Multi-Scale Context Aggregation by Dilated
  Convolutions"): no downsampling at all; every conv after a removed
  downsampling gets the dilation of the strides removed before it (2, 4,
  ... for stride 2), so its taps land on the same input pixels as in the
  pooled net. The receptive field is the pooled net's less the pooling
  windows' own extent, `(pool_size - 1) * jump` each (in the plain families
  that is the strided net's). The maps keep the input resolution: the FLOPs
  column shows the cost.
`pool_position` moves pooling layers only; the other choices ignore it.
Dropout (`dropout > 0`) follows every downsampling, whatever does it
(for "dilated": where the downsampling would have been), except inside
a ResNet block ("strided" and "blurstrided" there).

Matched initialisation: every layer that two variants share has the same
name in both, and its initializer's seed is derived from (run seed, layer
name). Shared layers therefore start from identical weights whatever layers
a variant inserts (the strided conv has the same kernel shape as its pooled
counterpart, so it starts from the same kernel too). Dropout and the random
poolings are seeded the same way.

Families (`width` = channels of the first stage, default in parentheses).
Each family downsamples a fixed number of times (`FAMILY_DOWNSAMPLINGS`),
and each downsampling needs a map it can reduce, so the images must be at
least `min_image_size(config)` on each side; the sizes below are those of
the default 2x2 windows with stride 2. `build_model` refuses smaller ones.

- small_cnn (32): three stages of two 3x3 convs, w, 2w, 4w channels, a
  downsampling after each of the first two stages; fast on a CPU. Images
  of at least 4x4.
- model_c (96): Springenberg et al., 2014, "Striving for Simplicity: The All
  Convolutional Net", model C: 3x3 convs w, w, downsample, 2w, 2w,
  downsample, 2w (3x3, valid), 2w (1x1), one 1x1 conv per class, global
  pooling. Differences from the paper: BN after every conv (unless
  `batch_norm=False`); the class-score conv is linear, where the paper put a
  ReLU on it; dropout (the paper's 0.5) after each downsampling only when
  `dropout > 0`, and none on the input. Images of at least 12x12: its 3x3
  "valid" conv after the second downsampling needs a 3x3 map.
- vgg (64): VGG-11 (Simonyan & Zisserman, 2015, configuration A) for 32x32
  inputs with BN: w, ds, 2w, ds, 4w, 4w, ds, 8w, 8w, ds, 8w, 8w, ds. Five
  downsamplings: images of at least 32x32.
- resnet (16): ResNet-20 (He et al., 2016, CIFAR version): a 3x3 stem conv,
  three stages of three basic blocks with w, 2w, 4w channels; a 1x1
  conv + BN projection shortcut where the channels change. Where a stage
  halves the resolution, a pooling (or allconv) variant downsamples the
  previous stage's output once, so the main path and the shortcut of the
  next block both see the downsampled map; "strided" is the original
  ResNet: stride 2 in the block's first conv and in its projection
  shortcut ("blurstrided": see above). Images of at least 4x4.

Heads: "gap" (global average pooling -> dense), "gmp" (global max
pooling -> dense), "flatten" (flatten -> dense), "gem" (generalized-mean
pooling, Radenović et al., 2018, `GlobalGeMPooling2D` -> dense), "spp"
(spatial pyramid pooling, He et al., 2014, bins 1, 2, 4 -> dense).
model_c's class-score conv already outputs one map per class, so its
"gap"/"gmp"/"gem" heads pool those maps into logits without a dense layer,
as in the paper.
"""

import zlib

import keras

from kpool.harness.augment import CIFAR10_MEAN, CIFAR10_VARIANCE, RandomCropFlip
from kpool.harness.config import resolve_downsampling
from kpool.registry import downsampling_names, get_downsampling

FAMILY_WIDTHS = {"small_cnn": 32, "model_c": 96, "vgg": 64, "resnet": 16}
FAMILY_DOWNSAMPLINGS = {"small_cnn": 2, "model_c": 2, "vgg": 5, "resnet": 2}
# model_c's 3x3 "valid" conv after its last downsampling needs a 3x3 map.
_FAMILY_LAST_MAP = {"model_c": 3}
NON_POOLING_CHOICES = ("strided", "allconv", "blurstrided", "dilated")
# Registry poolings that draw random numbers and take a `seed`.
_SEEDED_POOLINGS = ("mixed", "stochastic", "fractional")
# Registry names of head layers (global poolings), not downsampling choices.
_HEAD_LAYERS = ("gem", "spp")
# Registry names that pool to a fixed output size: no downsampling choice.
_FIXED_SIZE_POOLINGS = ("adaptive_avg", "adaptive_max")
_HEADS = ("gap", "gmp", "flatten", *_HEAD_LAYERS)
# Heads that pool each channel to one number, so model_c's class maps become
# logits without a dense layer.
_CHANNEL_POOLING_HEADS = ("gap", "gmp", "gem")
_POOL_POSITIONS = ("after_activation", "before_activation")


def downsampling_choices():
    """Every downsampling choice `build_model` takes: the registry's
    windowed poolings, then `NON_POOLING_CHOICES`."""
    poolings = tuple(
        name
        for name in downsampling_names()
        if not name.startswith("global_")
        and name not in _HEAD_LAYERS + _FIXED_SIZE_POOLINGS
    )
    return poolings + NON_POOLING_CHOICES


def min_image_size(model_config):
    """The smallest height and width `model_config.family` takes.

    Each of the family's `FAMILY_DOWNSAMPLINGS` downsamplings divides the
    side by its stride (`pool_strides`, else `pool_size`), rounding down as
    fractional pooling does (`(side - pool_size) // stride + 1` with
    `pool_padding="valid"`), and needs a side of at least the stride (and
    of the window with "valid") to reduce; model_c's last map must be 3x3
    for its "valid" 3x3 conv. With 2x2 windows and stride 2 that is 4 for
    small_cnn and resnet, 12 for model_c and 32 for vgg. Every choice is
    held to the size of the pooling it stands for (the "dilated" net keeps
    its resolution but has the pooled net's receptive field). A layer may
    need more, and says so when the model is built: "maxblurpool" after a
    "valid" max pooling blurs with reflection, which needs 2 cells.

    Returns:
        int.
    """
    family = model_config.family
    _check_choice("model.family", family, tuple(_FAMILIES))
    pool_size = model_config.pool_size
    stride = model_config.pool_strides or pool_size
    valid = model_config.pool_padding == "valid"
    least = max(stride, pool_size) if valid else stride

    def fits(side):
        for _ in range(FAMILY_DOWNSAMPLINGS[family]):
            if side < least:
                return False
            side = (side - pool_size) // stride + 1 if valid else side // stride
        return side >= _FAMILY_LAST_MAP.get(family, 1)

    side = 1
    while not fits(side):
        side += 1
    return side


def _check_inputs(model_config, input_shape, num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        num_classes = None
    if num_classes is None or num_classes < 2:
        raise ValueError(
            "`num_classes` must be an int >= 2 (the data's number of "
            f"classes). Received: num_classes={num_classes!r}"
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ValueError(
            "`input_shape` must be (height, width, 3): the models take RGB "
            "images and normalise them with CIFAR-10's per-channel "
            f"statistics. Received: input_shape={input_shape}"
        )
    least = min_image_size(model_config)
    height, width = input_shape[:2]
    if min(height, width) < least:
        family = model_config.family
        raise ValueError(
            f"`model.family`={family!r} needs images of at least "
            f"{least}x{least}: it downsamples "
            f"{FAMILY_DOWNSAMPLINGS[family]} times, and each downsampling "
            f"(pool_size={model_config.pool_size}, "
            f"pool_strides={model_config.pool_strides}, "
            f"pool_padding={model_config.pool_padding!r}) needs a map it "
            "can reduce. Resize the images (data.image_size) or choose a "
            f"family that downsamples less. Received: {height}x{width} "
            f"images (input_shape={input_shape})"
        )


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
        model_config: `kpool.harness.config.ModelConfig`.
        downsampling: string. One of `downsampling_choices()`, or a variant
            defined in `downsampling_options` (see
            `kpool.harness.config.resolve_downsampling`).
        num_classes: int. Number of logits, at least 2.
        input_shape: tuple. Shape of one raw image, channels_last, 3
            channels, at least `min_image_size(model_config)` high and
            wide.
        seed: int. The run seed; every initializer, dropout and random
            pooling derives its seed from it and the layer name.
        augment: bool. Start with `RandomCropFlip` (training only).
        downsampling_options: dict mapping a choice to extra keyword
            arguments of its layer (e.g. `{"mixed": {"alpha": 0.75}}`;
            "blurstrided" passes them to its blur pooling), or a variant
            name to its choice and arguments.

    Returns:
        A `keras.Model` from raw images to float32 logits, named
        f"{family}_{downsampling}".

    Raises:
        ValueError: an argument is invalid, or the images are smaller than
            the family takes (the message names `model.family`, the
            smallest size and the size received).
    """
    family = model_config.family
    _check_choice("model.family", family, tuple(_FAMILIES))
    _check_inputs(model_config, input_shape, num_classes)
    _check_choice("model.head", model_config.head, _HEADS)
    _check_choice(
        "model.pool_position", model_config.pool_position, _POOL_POSITIONS
    )
    choice, options = resolve_downsampling(
        downsampling, downsampling_options or {}
    )
    builder = _Builder(model_config, choice, seed, options)
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
        _check_choice("downsampling", downsampling, downsampling_choices())
        self.config = model_config
        self.downsampling = downsampling
        self.seed = seed
        self.options = options
        self.data_format = model_config.data_format
        self.channel_axis = -1 if self.data_format == "channels_last" else 1
        # The stride of the downsampling each choice stands for.
        self.downsample_stride = (
            model_config.pool_strides or model_config.pool_size
        )
        # "dilated": the dilation of the next convs, the product of the
        # strides of the downsamplings removed so far.
        self.dilation = 1

    @property
    def strided(self):
        return self.downsampling == "strided"

    @property
    def in_block(self):
        """Whether a ResNet downsamples inside its transition blocks (main
        path and shortcut) rather than before them."""
        return self.downsampling in ("strided", "blurstrided")

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
            dilation_rate=self.dilation if kernel_size > 1 else 1,
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
        if not downsample:
            return relu(x)
        if self.strided:
            x = relu(x)
        elif self.downsampling == "allconv":
            x = self.conv(
                relu(x),
                x.shape[self.channel_axis],
                f"{name}_allconv",
                strides=2,
            )
        elif self.downsampling == "dilated":
            x = relu(x)
            self.dilation *= self.downsample_stride
        elif self.downsampling == "blurstrided":
            x = self.blur(relu(x), f"{name}_blur")
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

    def blur(self, x, name):
        """Zhang's (2019) anti-aliasing of a strided conv: blur pooling with
        stride 2 after the conv (run at stride 1) and its ReLU."""
        return self._named(
            get_downsampling(
                "blurpool",
                strides=2,
                data_format=self.data_format,
                **self.options,
            ),
            name,
        )(x)

    def _pooling(self, name):
        kwargs = {"strides": self.downsample_stride}
        if self.downsampling == "fractional":
            # Graham's regions, shrinking the map by the same factor as the
            # others (at 1/2 they are 2 wide; `output_ratio` in the options
            # gives Graham's gentler ratios, such as 1/sqrt(2)).
            kwargs = {"output_ratio": 1 / self.downsample_stride}
        elif self.downsampling != "blurpool":
            # Blur pooling's window is its filter (`filter_size`), and it
            # pads by `padding_mode`, never "valid".
            kwargs.update(
                pool_size=self.config.pool_size,
                padding=self.config.pool_padding,
            )
        if self.downsampling in _SEEDED_POOLINGS:
            kwargs["seed"] = layer_seed(self.seed, name)
        kwargs.update(self.options)
        return self._named(
            get_downsampling(
                self.downsampling, data_format=self.data_format, **kwargs
            ),
            name,
        )

    @staticmethod
    def _named(layer, name):
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
        if head in _HEAD_LAYERS:
            pooling = get_downsampling(head, data_format=self.data_format)
        else:
            pooling = {
                "gap": keras.layers.GlobalAveragePooling2D,
                "gmp": keras.layers.GlobalMaxPooling2D,
            }[head](data_format=self.data_format)
        x = self._named(pooling, f"head_{head}")(x)
        if class_maps and head in _CHANNEL_POOLING_HEADS:
            return x
        return self.dense(x, num_classes, "classifier")


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
                downsample=transition and builder.in_block,
            )
            # The other variants downsample the stage's output once, before
            # the next stage's first block and its shortcut.
            x = builder.activate(
                x,
                name,
                downsample=block == blocks_per_stage
                and stage < 3
                and not builder.in_block,
            )
    return x


def _basic_block(builder, x, filters, name, downsample):
    """Returns the sum before the block's last ReLU. `downsample`: halve
    the resolution in the block, by stride 2 ("strided", the original
    ResNet) or, for "blurstrided", by blur pooling after the first conv and
    before the 1x1 shortcut conv (Zhang's anti-aliased ResNet)."""
    strides = 2 if downsample and builder.strided else 1
    blur = downsample and not builder.strided
    shortcut = x
    if blur:
        shortcut = builder.blur(shortcut, f"{name}_shortcut_blur")
    if downsample or x.shape[builder.channel_axis] != filters:
        shortcut = builder.conv(
            shortcut,
            filters,
            f"{name}_shortcut",
            kernel_size=1,
            strides=strides,
            activate=False,
        )
    y = builder.conv(x, filters, f"{name}_conv1", strides=strides)
    if blur:
        y = builder.blur(y, f"{name}_conv1_blur")
    y = builder.conv(y, filters, f"{name}_conv2", activate=False)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


_FAMILIES = {
    "small_cnn": _small_cnn,
    "model_c": _model_c,
    "vgg": _vgg,
    "resnet": _resnet,
}
