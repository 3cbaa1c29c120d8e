"""Inputs and parameter grids shared by the layer tests."""

import itertools

import pytest

from kpool import layers

# Odd and even lengths, so that "same" pads symmetrically and not.
SPATIAL_SHAPES = {1: (7,), 2: (7, 6), 3: (5, 6, 5)}

# (pool_size, strides): disjoint windows, then overlapping ones.
WINDOWS = [(2, 2), (3, 2)]

WINDOW_CASES = [
    pytest.param(
        rank,
        padding,
        data_format,
        pool,
        stride,
        id=f"{rank}d-{padding}-{data_format}-{pool}s{stride}",
    )
    for rank, padding, data_format, (pool, stride) in itertools.product(
        (1, 2, 3),
        ("valid", "same"),
        ("channels_last", "channels_first"),
        WINDOWS,
    )
]


# Spatial shapes that windows of pool 2, stride 2 tile exactly (no padding,
# no cell left out), where the TensorFlow kernels broadcast gradients over
# each window instead of running TensorFlow's pooling gradients.
TILED_SHAPES = {1: (8,), 2: (8, 6), 3: (4, 6, 2)}
TILED_CASES = [
    pytest.param(
        rank,
        padding,
        data_format,
        2,
        2,
        id=f"{rank}d-{padding}-{data_format}-tiled",
    )
    for rank, padding, data_format in itertools.product(
        (1, 2, 3), ("valid", "same"), ("channels_last", "channels_first")
    )
]


def input_shape(rank, data_format, batch=2, channels=3, spatial=None):
    spatial = SPATIAL_SHAPES[rank] if spatial is None else spatial
    if data_format == "channels_last":
        return (batch, *spatial, channels)
    return (batch, channels, *spatial)


def random_input(rng, rank, data_format, **shape_kwargs):
    """Normal values, about half of them negative, no ties."""
    shape = input_shape(rank, data_format, **shape_kwargs)
    return rng.standard_normal(shape).astype("float32")


def window_args(rank, padding, data_format, pool, stride):
    """The layer arguments of a WINDOW_CASES case, also the reference's."""
    return {
        "pool_size": (pool,) * rank,
        "strides": (stride,) * rank,
        "padding": padding,
        "data_format": data_format,
    }


def layer_cases():
    """One case per layer class and mixed-pooling mode: (class, kwargs)."""
    cases = []
    for rank in (1, 2, 3):
        window = {"pool_size": 3, "strides": 2, "padding": "same"}
        # In this order they stack in a Sequential model: stochastic pooling
        # first, while most windows still hold a positive input (it passes
        # no gradient back from a window without), the global pooling last.
        for cls, kwargs in (
            (f"StochasticPooling{rank}D", {**window, "seed": 1}),
            (f"MinPooling{rank}D", window),
            (
                f"MixedPooling{rank}D",
                {**window, "mode": "random", "alpha": 0.3, "seed": 1},
            ),
            (
                f"MixedPooling{rank}D",
                {**window, "mode": "learned", "granularity": "channel"},
            ),
            (
                f"MixedPooling{rank}D",
                {**window, "mode": "gated", "granularity": "channel"},
            ),
            (f"GlobalMinPooling{rank}D", {}),
        ):
            mode = kwargs.get("mode", "")
            cases.append(
                pytest.param(
                    getattr(layers, cls), kwargs, id=f"{cls}-{mode}".strip("-")
                )
            )
    return cases


LAYER_CASES = layer_cases()


def layers_of_rank(rank):
    """A new layer for each case of LAYER_CASES of that rank, in order."""
    return [
        cls(**kwargs)
        for cls, kwargs in (case.values for case in LAYER_CASES)
        if cls.num_spatial_dims == rank
    ]
