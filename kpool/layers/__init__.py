"""The kpool pooling layers, registered with Keras under package "kpool"."""

from kpool.layers.blur_pooling import (
    BlurPool1D,
    BlurPool2D,
    BlurPool3D,
    BlurPooling1D,
    BlurPooling2D,
    BlurPooling3D,
)
from kpool.layers.fractional_max_pooling import (
    FractionalMaxPooling2D,
    FractionalMaxPooling3D,
)
from kpool.layers.gem_pooling import (
    GlobalGeMPooling1D,
    GlobalGeMPooling2D,
    GlobalGeMPooling3D,
)
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
from kpool.layers.max_blur_pooling import (
    MaxBlurPool1D,
    MaxBlurPool2D,
    MaxBlurPool3D,
    MaxBlurPooling1D,
    MaxBlurPooling2D,
    MaxBlurPooling3D,
)
from kpool.layers.max_pooling_with_argmax import MaxPoolingWithArgmax2D
from kpool.layers.max_unpooling import MaxUnpooling2D
from kpool.layers.median_pooling import (
    MedianPool1D,
    MedianPool2D,
    MedianPool3D,
    MedianPooling1D,
    MedianPooling2D,
    MedianPooling3D,
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
from kpool.layers.soft_pooling import (
    SoftPool1D,
    SoftPool2D,
    SoftPool3D,
    SoftPooling1D,
    SoftPooling2D,
    SoftPooling3D,
)
from kpool.layers.spatial_pyramid_pooling import SpatialPyramidPooling2D
from kpool.layers.stochastic_pooling import (
    StochasticPool1D,
    StochasticPool2D,
    StochasticPool3D,
    StochasticPooling1D,
    StochasticPooling2D,
    StochasticPooling3D,
)
from kpool.layers.tree_pooling import (
    TreePool1D,
    TreePool2D,
    TreePool3D,
    TreePooling1D,
    TreePooling2D,
    TreePooling3D,
)
from kpool.layers.unit_interval import UnitInterval

__all__ = [
    "BlurPool1D",
    "BlurPool2D",
    "BlurPool3D",
    "BlurPooling1D",
    "BlurPooling2D",
    "BlurPooling3D",
    "FractionalMaxPooling2D",
    "FractionalMaxPooling3D",
    "GlobalGeMPooling1D",
    "GlobalGeMPooling2D",
    "GlobalGeMPooling3D",
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
    "MaxBlurPool1D",
    "MaxBlurPool2D",
    "MaxBlurPool3D",
    "MaxBlurPooling1D",
    "MaxBlurPooling2D",
    "MaxBlurPooling3D",
    "MaxPoolingWithArgmax2D",
    "MaxUnpooling2D",
    "MedianPool1D",
    "MedianPool2D",
    "MedianPool3D",
    "MedianPooling1D",
    "MedianPooling2D",
    "MedianPooling3D",
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
    "SoftPool1D",
    "SoftPool2D",
    "SoftPool3D",
    "SoftPooling1D",
    "SoftPooling2D",
    "SoftPooling3D",
    "SpatialPyramidPooling2D",
    "StochasticPool1D",
    "StochasticPool2D",
    "StochasticPool3D",
    "StochasticPooling1D",
    "StochasticPooling2D",
    "StochasticPooling3D",
    "TreePool1D",
    "TreePool2D",
    "TreePool3D",
    "TreePooling1D",
    "TreePooling2D",
    "TreePooling3D",
    "UnitInterval",
]
