import itertools

import numpy as np
import pytest

from kpool import layers

from .cases import random_input

GLOBAL_MIN_POOLINGS = {
    1: layers.GlobalMinPooling1D,
    2: layers.GlobalMinPooling2D,
    3: layers.GlobalMinPooling3D,
}


@pytest.mark.parametrize(
    "rank, data_format, keepdims",
    itertools.product(
        (1, 2, 3), ("channels_last", "channels_first"), (False, True)
    ),
)
def test_matches_numpy_min(rng, rank, data_format, keepdims):
    x = random_input(rng, rank, data_format)
    layer = GLOBAL_MIN_POOLINGS[rank](
        data_format=data_format, keepdims=keepdims
    )
    first = 1 if data_format == "channels_last" else 2
    spatial_axes = tuple(range(first, first + rank))
    expected = x.min(axis=spatial_axes, keepdims=keepdims)
    np.testing.assert_array_equal(layer(x), expected)
