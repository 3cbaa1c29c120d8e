"""Issue 13's registry names: blurpool, maxblurpool, softpool, tree, median."""

import numpy as np
import pytest

from kpool import layers
from kpool.registry import downsampling_names, get_downsampling

CLASSES = {
    "blurpool": "BlurPooling",
    "maxblurpool": "MaxBlurPooling",
    "softpool": "SoftPooling",
    "tree": "TreePooling",
    "median": "MedianPooling",
}


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("name", list(CLASSES))
def test_names_build_their_class(name, rank):
    assert name in downsampling_names()
    layer = get_downsampling(name, rank=rank)
    assert type(layer) is getattr(layers, f"{CLASSES[name]}{rank}D")
    # Every default halves an even size, as max pooling 2 does.
    shape = (None, *(8,) * rank, 3)
    assert layer.compute_output_shape(shape) == (None, *(4,) * rank, 3)


def test_blurpool_takes_no_pool_size_and_its_own_arguments():
    layer = get_downsampling(
        "blurpool", filter_size=5, strides=2, padding_mode="zero"
    )
    assert (layer.filter_size, layer.padding_mode) == (5, "zero")
    with pytest.raises(ValueError, match="pool_size"):
        get_downsampling("blurpool", pool_size=2)


def test_maxblurpool_arguments():
    layer = get_downsampling(
        "maxblurpool", pool_size=3, strides=2, filter_size=4, padding="same"
    )
    assert (layer.pool_size, layer.strides) == ((3, 3), (2, 2))
    assert layer(np.zeros((1, 8, 8, 2))).shape == (1, 4, 4, 2)
