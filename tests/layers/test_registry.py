import itertools

import keras
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


# Tested in test_registry_issue13.py and test_registry_new_ops.py.
NEWER = {"blurpool", "maxblurpool", "softpool", "tree", "median", "lp"}
NEWER |= {"fractional", "spp", "adaptive_avg", "adaptive_max", "gem"}


def test_lists_every_name():
    assert set(kpool.downsampling_names()) == set(EXPECTED) | NEWER


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
