import math
import numbers

import keras

from kpool import ops
from kpool.layers.base_pooling import BasePooling, layer_doc

GRANULARITIES = ("layer", "channel")
MAX_DEPTH = 4

_SUMMARY = "Tree pooling for {data}: learned filters mixed by learned gates."
_BODY = """
The tree pooling of Lee, Gallagher and Tu (2016) (`kpool.ops.tree_pool`).
Each window, flattened in row-major order to a vector `x` of
`K = prod(pool_size)` cells (under `"same"` padded cells read as zeros),
goes down a complete binary tree of `depth` levels, with `L = 2**(depth-1)`
leaves numbered as a heap (root 1, children of node `m` are `2m` and
`2m + 1`, leaves `L ... 2L - 1`):

    f_m(x) = v_{m - L} . x                                 (leaf)
    f_m(x) = g_m f_{2m}(x) + (1 - g_m) f_{2m+1}(x),
             g_m = sigmoid(w_{m - 1} . x)                   (internal node)

and the output is `f_1(x)`. The leaves `v_i` are learned pooling filters
(the weight `"leaf_kernels"`, shape `(K, L)`, or `(K, L, channels)` with
`granularity="channel"`), the gates `w_j` learned too (`"gate_kernels"`,
`(K, L - 1)` or `(K, L - 1, channels)`). The default `depth=2` is the
paper's: two leaves and one gate, `f = s v_0 . x + (1 - s) v_1 . x` with
`s = sigmoid(w_0 . x)`. The leaves start uniform in `[0, 2 / K]` (each
about average pooling, different enough for the gate to learn), the gates
at zero (`g = 1/2`). Gradients reach the input, the leaves and the gates.

Under `"valid"` the output has `floor((n - pool_size) / strides) + 1` cells
along a spatial dim of size `n`; under `"same"`, `ceil(n / strides)`.

Reference:
    Lee, Gallagher and Tu, "Generalizing Pooling Functions in Convolutional
    Neural Networks: Mixed, Gated, and Tree", AISTATS 2016.
"""
_ARGS = """
Args:
    pool_size: int or tuple of ints, one per spatial dim. Window size.
    strides: int, tuple of ints, or `None` (meaning `pool_size`).
    padding: `"valid"` or `"same"` (case-insensitive), as in
        `keras.layers.MaxPooling2D`.
    data_format: `"channels_last"`, `"channels_first"`, or `None` for
        `keras.config.image_data_format()`.
    depth: int from 1 to 4. Levels of the tree: `2**(depth - 1)` leaves
        and `2**(depth - 1) - 1` gates (depth 1: one learned filter).
    granularity: `"layer"` (one tree shared by the channels) or
        `"channel"` (one tree per channel).
    leaf_initializer: initializer of the leaves, or `None` for uniform in
        `[0, 2 / prod(pool_size)]`.
    gate_initializer: initializer of the gates (default `"zeros"`).
    name: string. Name of the layer.
    **kwargs: forwarded to `keras.layers.Layer` (`dtype`, ...).
"""
_EXAMPLES = {
    1: """
>>> layer = kpool.layers.TreePooling1D(pool_size=2)
>>> layer(np.random.rand(2, 16, 3)).shape  # (2, 8, 3)
""",
    2: """
>>> layer = kpool.layers.TreePooling2D(pool_size=3, strides=2, padding="same")
>>> layer(np.random.rand(8, 32, 32, 16)).shape  # (8, 16, 16, 16)
>>> [w.shape for w in layer.weights]  # [(9, 2), (9, 1)]
""",
    3: """
>>> layer = kpool.layers.TreePooling3D(2, depth=3, granularity="channel")
>>> layer(np.random.rand(2, 8, 8, 8, 3)).shape  # (2, 4, 4, 4, 3)
""",
}


class TreePooling(BasePooling):
    """Tree pooling for any number of spatial dims; see `TreePooling2D`."""

    def __init__(
        self,
        pool_size=2,
        strides=None,
        padding="valid",
        data_format=None,
        depth=2,
        granularity="layer",
        leaf_initializer=None,
        gate_initializer="zeros",
        name=None,
        **kwargs,
    ):
        super().__init__(
            pool_size, strides, padding, data_format, name=name, **kwargs
        )
        if not (
            isinstance(depth, numbers.Integral)
            and not isinstance(depth, bool)
            and 1 <= depth <= MAX_DEPTH
        ):
            raise ValueError(
                f"`depth` must be an int from 1 to {MAX_DEPTH}. "
                f"Received: depth={depth!r}"
            )
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"`granularity` must be one of {list(GRANULARITIES)}. "
                f"Received: granularity={granularity!r}"
            )
        self.depth = int(depth)
        self.granularity = granularity
        self.leaf_initializer = (
            None
            if leaf_initializer is None
            else keras.initializers.get(leaf_initializer)
        )
        self.gate_initializer = keras.initializers.get(gate_initializer)

    def build(self, input_shape):
        cells = math.prod(self.pool_size)
        leaves = 2 ** (self.depth - 1)
        per_channel = (
            (input_shape[self.window.channel_axis],)
            if self.granularity == "channel"
            else ()
        )
        leaf_initializer = self.leaf_initializer or (
            keras.initializers.RandomUniform(0.0, 2.0 / cells)
        )
        self.leaf_kernels = self.add_weight(
            name="leaf_kernels",
            shape=(cells, leaves, *per_channel),
            initializer=leaf_initializer,
        )
        self.gate_kernels = None
        if leaves > 1:
            self.gate_kernels = self.add_weight(
                name="gate_kernels",
                shape=(cells, leaves - 1, *per_channel),
                initializer=self.gate_initializer,
            )

    def call(self, inputs):
        return ops.tree_pool(
            inputs,
            **self.window_args,
            leaf_kernels=self.leaf_kernels,
            gate_kernels=self.gate_kernels,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth": self.depth,
                "granularity": self.granularity,
                "leaf_initializer": (
                    None
                    if self.leaf_initializer is None
                    else keras.initializers.serialize(self.leaf_initializer)
                ),
                "gate_initializer": keras.initializers.serialize(
                    self.gate_initializer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kpool")
class TreePooling1D(TreePooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[1], 1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class TreePooling2D(TreePooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[2], 2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class TreePooling3D(TreePooling):
    __doc__ = layer_doc(_SUMMARY, _BODY, _ARGS, _EXAMPLES[3], 3)
    num_spatial_dims = 3


TreePool1D = TreePooling1D
TreePool2D = TreePooling2D
TreePool3D = TreePooling3D
