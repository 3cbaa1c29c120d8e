"""The registry names of issue 12's poolings and Keras's adaptive ones."""

import keras
import numpy as np
import pytest

import kpool
from kpool import layers

EXPECTED = {
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
CASES = [
    pytest.param(name, rank, id=f"{name}-{rank}d")
    for name, classes in EXPECTED.items()
    for rank in (1, 2, 3)
]


def test_every_name_is_listed():
    assert set(EXPECTED) <= set(kpool.downsampling_names())


@pytest.mark.parametrize("name, rank", CASES)
def test_builds_the_class_of_each_name_and_rank(name, rank):
    kwargs = REQUIRED.get(name, {})
    if rank not in EXPECTED[name]:
        with pytest.raises(ValueError, match="`rank` must be one of") as error:
            kpool.get_downsampling(name, rank=rank, **kwargs)
        assert f"name={name!r}" in str(error.value)
        return
    layer = kpool.get_downsampling(name, rank=rank, **kwargs)
    assert type(layer) is EXPECTED[name][rank]


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
