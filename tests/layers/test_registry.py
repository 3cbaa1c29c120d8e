"""kpool.get_downsampling: every registry name, its class per rank, its
arguments and errors."""

import itertools

import keras
import numpy as np
import pytest

import kpool
from kpool import layers

EXPECTED = {
    "max": ("MaxPooling", {}),
    "avg": ("AveragePooling", {}),
    "min": ("MinPooling", {}),
    "mixed": ("MixedPooling", {"mode": "random"}),
    "mixed_learned": ("MixedPooling", {"mode": "learned"}),
    "gated": ("MixedPooling", {"mode": "gated"}),
    "stochastic": ("StochasticPooling", {}),
    "global_max": ("GlobalMaxPooling", {}),
    "global_avg": ("GlobalAveragePooling", {}),
    "global_min": ("GlobalMinPooling", {}),
}


# Names whose classes take other arguments or exist for fewer ranks.
WINDOW_FILTERS = {
    "blurpool": "BlurPooling",
    "maxblurpool": "MaxBlurPooling",
    "softpool": "SoftPooling",
    "tree": "TreePooling",
    "median": "MedianPooling",
}
BY_RANK = {
    "lp": {1: layers.LPPooling1D, 2: layers.LPPooling2D, 3: layers.LPPooling3D},
    "fractional": {
        2: layers.FractionalMaxPooling2D,
        3: layers.FractionalMaxPooling3D,
    },
    "spp": {2: layers.SpatialPyramidPooling2D},
    "adaptive_avg": {
        1: keras.layers.AdaptiveAveragePooling1D,
        2: keras.layers.AdaptiveAveragePooling2D,
        3: keras.layers.AdaptiveAveragePooling3D,
    },
    "adaptive_max": {
        1: keras.layers.AdaptiveMaxPooling1D,
        2: keras.layers.AdaptiveMaxPooling2D,
        3: keras.layers.AdaptiveMaxPooling3D,
    },
    "gem": {
        1: layers.GlobalGeMPooling1D,
        2: layers.GlobalGeMPooling2D,
        3: layers.GlobalGeMPooling3D,
    },
}
# What a name needs beyond its defaults.
REQUIRED = {
    "adaptive_avg": {"output_size": 2},
    "adaptive_max": {"output_size": 2},
}


def test_lists_every_name():
    assert set(kpool.downsampling_names()) == set(EXPECTED) | set(
        WINDOW_FILTERS
    ) | set(BY_RANK)


@pytest.mark.parametrize(
    "name, rank", list(itertools.product(sorted(EXPECTED), (1, 2, 3)))
)
def test_builds_the_class_of_each_name_and_rank(name, rank):
    class_name, fixed = EXPECTED[name]
    class_name = f"{class_name}{rank}D"
    cls = getattr(layers, class_name, None) or getattr(keras.layers, class_name)
    layer = kpool.get_downsampling(name, rank=rank, name="pooling")
    assert type(layer) is cls
    assert layer.name == "pooling"
    config = layer.get_config()
    assert all(config[key] == value for key, value in fixed.items())


def test_rank_defaults_to_2_and_kwargs_reach_the_layer():
    layer = kpool.get_downsampling(
        "mixed", pool_size=3, strides=1, padding="same", alpha=0.2, seed=4
    )
    assert isinstance(layer, layers.MixedPooling2D)
    assert (layer.pool_size, layer.strides) == ((3, 3), (1, 1))
    assert (layer.padding, layer.alpha, layer.seed) == ("same", 0.2, 4)
    # A window of 2 by default, for Keras's AveragePooling*D too.
    assert kpool.get_downsampling("avg", rank=1).pool_size == (2,)
    global_layer = kpool.get_downsampling("global_min", keepdims=True)
    assert isinstance(global_layer, layers.GlobalMinPooling2D)
    assert global_layer.keepdims


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="`name`") as error:
        kpool.get_downsampling("mean")
    assert all(repr(name) in str(error.value) for name in EXPECTED)
    assert "'mean'" in str(error.value)


@pytest.mark.parametrize("rank", [0, 4, "2"])
def test_bad_rank_is_rejected(rank):
    with pytest.raises(ValueError, match="`rank` must be 1, 2 or 3"):
        kpool.get_downsampling("max", rank=rank)


def test_mode_is_fixed_by_the_name():
    with pytest.raises(ValueError, match="`mode` is fixed to 'learned'"):
        kpool.get_downsampling("mixed_learned", mode="gated")


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("name", list(WINDOW_FILTERS))
def test_window_filter_names_build_their_class(name, rank):
    assert name in kpool.downsampling_names()
    layer = kpool.get_downsampling(name, rank=rank)
    assert type(layer) is getattr(layers, f"{WINDOW_FILTERS[name]}{rank}D")
    # Every default halves an even size, as max pooling 2 does.
    shape = (None, *(8,) * rank, 3)
    assert layer.compute_output_shape(shape) == (None, *(4,) * rank, 3)


def test_blurpool_takes_no_pool_size_and_its_own_arguments():
    layer = kpool.get_downsampling(
        "blurpool", filter_size=5, strides=2, padding_mode="zero"
    )
    assert (layer.filter_size, layer.padding_mode) == (5, "zero")
    with pytest.raises(ValueError, match="pool_size"):
        kpool.get_downsampling("blurpool", pool_size=2)


def test_maxblurpool_arguments():
    layer = kpool.get_downsampling(
        "maxblurpool", pool_size=3, strides=2, filter_size=4, padding="same"
    )
    assert (layer.pool_size, layer.strides) == ((3, 3), (2, 2))
    assert layer(np.zeros((1, 8, 8, 2))).shape == (1, 4, 4, 2)


RANK_CASES = [
    pytest.param(name, rank, id=f"{name}-{rank}d")
    for name, classes in BY_RANK.items()
    for rank in (1, 2, 3)
]


@pytest.mark.parametrize("name, rank", RANK_CASES)
def test_builds_the_class_of_each_name_and_rank_it_has(name, rank):
    kwargs = REQUIRED.get(name, {})
    if rank not in BY_RANK[name]:
        with pytest.raises(ValueError, match="`rank` must be one of") as error:
            kpool.get_downsampling(name, rank=rank, **kwargs)
        assert f"name={name!r}" in str(error.value)
        return
    layer = kpool.get_downsampling(name, rank=rank, **kwargs)
    assert type(layer) is BY_RANK[name][rank]


def test_defaults_and_kwargs_reach_the_layers():
    lp = kpool.get_downsampling("lp", norm_type=3, strides=1)
    assert (lp.norm_type, lp.pool_size, lp.strides) == (3.0, (2, 2), (1, 1))
    # No window is forced on Graham's regions, nor on SPP.
    fractional = kpool.get_downsampling("fractional", seed=4)
    assert fractional.pool_size is None and fractional.seed == 4
    assert fractional.output_ratio == (0.5**0.5,) * 2
    spp = kpool.get_downsampling("spp", data_format="channels_first")
    assert spp.bins == ((1, 1), (2, 2), (4, 4))
    assert spp.data_format == "channels_first"
    gem = kpool.get_downsampling("gem", granularity="channel", keepdims=True)
    assert gem.granularity == "channel" and gem.keepdims
    adaptive = kpool.get_downsampling("adaptive_max", rank=1, output_size=3)
    x = np.random.default_rng(0).standard_normal((2, 9, 4)).astype("float32")
    assert adaptive(x).shape == (2, 3, 4)
