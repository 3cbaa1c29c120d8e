import keras

from kpool import ops
from kpool.layers.base_global_pooling import BaseGlobalPooling
from kpool.layers.base_pooling import layer_doc
from kpool.ops.gem_pool import check_gem_arguments

_SUMMARY = "Generalized-mean (GeM) pooling for {data}, with a trainable p."
_BODY = """
For each channel, `(mean_i max(x_i, eps)**p)**(1 / p)` over every spatial
position (`kpool.ops.global_gem_pool`): `p=1` is average pooling and a large
`p` approaches max pooling. `p` is a weight, initialised to `p` and trained
with the model (one per layer, or one per channel with
`granularity="channel"`); `trainable=False` freezes it.

The clamp at `eps` keeps the powers and the root defined, as in the paper's
code: GeM follows a ReLU, so an input below `eps` (zero or negative) counts
as `eps`, with gradient 0. float16 and bfloat16 inputs are computed in
float32 and cast back. With `keepdims=True` the spatial dims are kept, with
length 1, as in `keras.layers.GlobalMaxPooling{rank}D`.

Reference: Radenovic, Tolias and Chum, "Fine-tuning CNN Image Retrieval
with No Human Annotation", TPAMI 2018.
"""
_ARGS = """
Args:
    p: float > 0. The initial exponent (3 in the paper).
    eps: float > 0. The clamp.
    granularity: `"layer"` (one `p`) or `"channel"` (one per channel).
    data_format: `"channels_last"`, `"channels_first"`, or `None` for
        `keras.config.image_data_format()`.
    keepdims: bool. Whether to keep the spatial dims, with length 1.
    name: string. Name of the layer.
    **kwargs: forwarded to `keras.layers.Layer` (`dtype`, `trainable`, ...).
"""
_EXAMPLE = """
>>> x = np.random.rand(2, {shape}, 3)
>>> kpool.layers.GlobalGeMPooling{rank}D()(x).shape  # (2, 3)
"""
GRANULARITIES = ("layer", "channel")


class GlobalGeMPooling(BaseGlobalPooling):
    """GeM pooling for any rank; see `GlobalGeMPooling2D`."""

    def __init__(
        self,
        p=3.0,
        eps=1e-6,
        granularity="layer",
        data_format=None,
        keepdims=False,
        name=None,
        **kwargs,
    ):
        super().__init__(data_format, keepdims, name=name, **kwargs)
        check_gem_arguments(p, eps)
        if granularity not in GRANULARITIES:
            raise ValueError(
                f"`granularity` must be one of {list(GRANULARITIES)}. "
                f"Received: granularity={granularity!r}"
            )
        self.p = float(p)
        self.eps = float(eps)
        self.granularity = granularity

    def build(self, input_shape):
        channel_axis = -1 if self.data_format == "channels_last" else 1
        shape = (
            (input_shape[channel_axis],)
            if self.granularity == "channel"
            else ()
        )
        self.exponent = self.add_weight(
            name="p",
            shape=shape,
            initializer=keras.initializers.Constant(self.p),
        )

    def call(self, inputs):
        return ops.global_gem_pool(
            inputs,
            p=self.exponent,
            eps=self.eps,
            data_format=self.data_format,
            keepdims=self.keepdims,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"p": self.p, "eps": self.eps, "granularity": self.granularity}
        )
        return config


def _doc(rank):
    shape = ", ".join(["4", "5", "6"][:rank])
    example = _EXAMPLE.format(shape=shape, rank=rank)
    return layer_doc(_SUMMARY, _BODY, _ARGS, example, rank, output=None)


@keras.saving.register_keras_serializable(package="kpool")
class GlobalGeMPooling1D(GlobalGeMPooling):
    __doc__ = _doc(1)
    num_spatial_dims = 1


@keras.saving.register_keras_serializable(package="kpool")
class GlobalGeMPooling2D(GlobalGeMPooling):
    __doc__ = _doc(2)
    num_spatial_dims = 2


@keras.saving.register_keras_serializable(package="kpool")
class GlobalGeMPooling3D(GlobalGeMPooling):
    __doc__ = _doc(3)
    num_spatial_dims = 3
