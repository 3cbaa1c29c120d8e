"""The kpool pooling layers, registered with Keras under package "kpool"."""

from kpool.layers.global_min_pooling import (
    GlobalMinPool1D,
    GlobalMinPool2D,
    GlobalMinPool3D,
    GlobalMinPooling1D,
    GlobalMinPooling2D,
    GlobalMinPooling3D,
)
from kpool.layers.lp_pooling import (
    LPPool1D,
    LPPool2D,
    LPPool3D,
    LPPooling1D,
    LPPooling2D,
    LPPooling3D,
)
from kpool.layers.min_pooling import (
    MinPool1D,
    MinPool2D,
    MinPool3D,
    MinPooling1D,
    MinPooling2D,
    MinPooling3D,
)
from kpool.layers.mixed_pooling import (
    MixedPool1D,
    MixedPool2D,
    MixedPool3D,
    MixedPooling1D,
    MixedPooling2D,
    MixedPooling3D,
)
from kpool.layers.stochastic_pooling import (
    StochasticPool1D,
    StochasticPool2D,
    StochasticPool3D,
    StochasticPooling1D,
    StochasticPooling2D,
    StochasticPooling3D,
)
from kpool.layers.unit_interval import UnitInterval

__all__ = [
    "GlobalMinPool1D",
    "GlobalMinPool2D",
    "GlobalMinPool3D",
    "GlobalMinPooling1D",
    "GlobalMinPooling2D",
    "GlobalMinPooling3D",
    "LPPool1D",
    "LPPool2D",
    "LPPool3D",
    "LPPooling1D",
    "LPPooling2D",
    "LPPooling3D",
    "MinPool1D",
    "MinPool2D",
    "MinPool3D",
    "MinPooling1D",
    "MinPooling2D",
    "MinPooling3D",
    "MixedPool1D",
    "MixedPool2D",
    "MixedPool3D",
    "MixedPooling1D",
    "MixedPooling2D",
    "MixedPooling3D",
    "StochasticPool1D",
    "StochasticPool2D",
    "StochasticPool3D",
    "StochasticPooling1D",
    "StochasticPooling2D",
    "StochasticPooling3D",
    "UnitInterval",
]
