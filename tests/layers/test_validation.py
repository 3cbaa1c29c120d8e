"""Each bad argument gets a ValueError naming it and what is allowed."""

import keras
import numpy as np
import pytest

from kpool import layers

WINDOWED = [
    layers.MinPooling2D,
    layers.MixedPooling2D,
    layers.StochasticPooling2D,
]
ALL = [*WINDOWED, layers.GlobalMinPooling2D]


@pytest.mark.parametrize("cls", WINDOWED)
@pytest.mark.parametrize("pool_size", [0, -1, (2, 0), (2, 2, 2), 1.5, "2"])
def test_pool_size_must_be_positive_ints(cls, pool_size):
    with pytest.raises(ValueError, match="`pool_size` must be a positive int"):
        cls(pool_size=pool_size)


@pytest.mark.parametrize("cls", WINDOWED)
@pytest.mark.parametrize("strides", [0, (1, -1), (1,)])
def test_strides_must_be_positive_ints(cls, strides):
    with pytest.raises(ValueError, match="`strides` must be a positive int"):
        cls(pool_size=2, strides=strides)


@pytest.mark.parametrize("cls", WINDOWED)
def test_padding_must_be_valid_or_same(cls):
    with pytest.raises(
        ValueError, match="`padding` must be 'valid' or 'same'.*'full'"
    ):
        cls(pool_size=2, padding="full")


@pytest.mark.parametrize("cls", ALL)
def test_data_format_must_be_known(cls):
    with pytest.raises(ValueError, match="`data_format` must be"):
        cls(data_format="channels_middle")


def test_mode_must_be_known():
    with pytest.raises(
        ValueError,
        match=r"`mode` must be one of \['random', 'learned', 'gated'\]",
    ):
        layers.MixedPooling2D(mode="median")


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "half"])
def test_alpha_must_be_in_the_unit_interval(alpha):
    with pytest.raises(
        ValueError, match=r"`alpha` must be a float in \[0, 1\]"
    ):
        layers.MixedPooling2D(alpha=alpha)


@pytest.mark.parametrize(
    "mode, granularity", [("random", "batch"), ("learned", "region")]
)
def test_granularity_must_fit_the_mode(mode, granularity):
    with pytest.raises(
        ValueError, match=f"`granularity` must be one of .*{mode}"
    ):
        layers.MixedPooling2D(mode=mode, granularity=granularity)


@pytest.mark.parametrize("cls", ALL)
def test_input_rank_must_match(cls):
    # Keras's own check, as for its built-in poolings (an `InputSpec`).
    with pytest.raises(ValueError, match="expected ndim=4, found ndim=2"):
        cls()(keras.Input((8,)))
    with pytest.raises(ValueError, match="`inputs` of .* must have rank 4"):
        cls().compute_output_shape((None, 8, 3))


@pytest.mark.parametrize("cls", WINDOWED)
def test_window_must_fit_in_the_input_under_valid(cls):
    with pytest.raises(
        ValueError, match="`pool_size`=\\(3, 3\\) of .* is larger"
    ):
        cls(pool_size=3)(np.zeros((1, 2, 5, 1), "float32"))
    # "same" pads instead.
    assert cls(pool_size=3, padding="same")(keras.Input((2, 5, 1))).shape == (
        None,
        1,
        2,
        1,
    )
