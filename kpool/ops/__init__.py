"""kpool's functional pooling ops, in the style of `keras.ops.max_pool`.

Every op takes a backend tensor (or a NumPy array) and works eagerly and
inside `jit` on every backend; the layers of `kpool.layers` call them.
Each one's docstring gives its formula and an example.
"""

from kpool.ops.blur_pool import blur_pool, max_blur_pool
from kpool.ops.fractional_max_pool import fractional_max_pool
from kpool.ops.gem_pool import global_gem_pool
from kpool.ops.lp_pool import lp_pool
from kpool.ops.max_unpool import max_pool_with_argmax, max_unpool
from kpool.ops.median_pool import median_pool
from kpool.ops.min_pool import global_min_pool, min_pool
from kpool.ops.mixed_pool import mixed_pool
from kpool.ops.soft_pool import soft_pool
from kpool.ops.spatial_pyramid_pool import spatial_pyramid_pool
from kpool.ops.stochastic_pool import stochastic_pool
from kpool.ops.tree_pool import tree_pool

__all__ = [
    "blur_pool",
    "fractional_max_pool",
    "global_gem_pool",
    "global_min_pool",
    "lp_pool",
    "max_blur_pool",
    "max_pool_with_argmax",
    "max_unpool",
    "median_pool",
    "min_pool",
    "mixed_pool",
    "soft_pool",
    "spatial_pyramid_pool",
    "stochastic_pool",
    "tree_pool",
]
