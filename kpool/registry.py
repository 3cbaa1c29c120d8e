"""Downsampling layers by name: Keras's built-in poolings and kpool's."""

import inspect

import keras

from kpool import layers

# name -> ((1D, 2D, 3D class), keyword arguments the name fixes)
_DOWNSAMPLINGS = {
    "max": (
        (
            keras.layers.MaxPooling1D,
            keras.layers.MaxPooling2D,
            keras.layers.MaxPooling3D,
        ),
        {},
    ),
    "avg": (
        (
            keras.layers.AveragePooling1D,
            keras.layers.AveragePooling2D,
            keras.layers.AveragePooling3D,
        ),
        {},
    ),
    "min": (
        (layers.MinPooling1D, layers.MinPooling2D, layers.MinPooling3D),
        {},
    ),
    "mixed": (
        (layers.MixedPooling1D, layers.MixedPooling2D, layers.MixedPooling3D),
        {"mode": "random"},
    ),
    "mixed_learned": (
        (layers.MixedPooling1D, layers.MixedPooling2D, layers.MixedPooling3D),
        {"mode": "learned"},
    ),
    "gated": (
        (layers.MixedPooling1D, layers.MixedPooling2D, layers.MixedPooling3D),
        {"mode": "gated"},
    ),
    "stochastic": (
        (
            layers.StochasticPooling1D,
            layers.StochasticPooling2D,
            layers.StochasticPooling3D,
        ),
        {},
    ),
    "blurpool": (
        (layers.BlurPooling1D, layers.BlurPooling2D, layers.BlurPooling3D),
        {},
    ),
    "maxblurpool": (
        (
            layers.MaxBlurPooling1D,
            layers.MaxBlurPooling2D,
            layers.MaxBlurPooling3D,
        ),
        {},
    ),
    "softpool": (
        (layers.SoftPooling1D, layers.SoftPooling2D, layers.SoftPooling3D),
        {},
    ),
    "tree": (
        (layers.TreePooling1D, layers.TreePooling2D, layers.TreePooling3D),
        {},
    ),
    "median": (
        (
            layers.MedianPooling1D,
            layers.MedianPooling2D,
            layers.MedianPooling3D,
        ),
        {},
    ),
    "lp": (
        (layers.LPPooling1D, layers.LPPooling2D, layers.LPPooling3D),
        {},
    ),
    "fractional": (
        (None, layers.FractionalMaxPooling2D, layers.FractionalMaxPooling3D),
        {},
    ),
    "spp": ((None, layers.SpatialPyramidPooling2D, None), {}),
    "adaptive_avg": (
        (
            keras.layers.AdaptiveAveragePooling1D,
            keras.layers.AdaptiveAveragePooling2D,
            keras.layers.AdaptiveAveragePooling3D,
        ),
        {},
    ),
    "adaptive_max": (
        (
            keras.layers.AdaptiveMaxPooling1D,
            keras.layers.AdaptiveMaxPooling2D,
            keras.layers.AdaptiveMaxPooling3D,
        ),
        {},
    ),
    "gem": (
        (
            layers.GlobalGeMPooling1D,
            layers.GlobalGeMPooling2D,
            layers.GlobalGeMPooling3D,
        ),
        {},
    ),
    "global_max": (
        (
            keras.layers.GlobalMaxPooling1D,
            keras.layers.GlobalMaxPooling2D,
            keras.layers.GlobalMaxPooling3D,
        ),
        {},
    ),
    "global_avg": (
        (
            keras.layers.GlobalAveragePooling1D,
            keras.layers.GlobalAveragePooling2D,
            keras.layers.GlobalAveragePooling3D,
        ),
        {},
    ),
    "global_min": (
        (
            layers.GlobalMinPooling1D,
            layers.GlobalMinPooling2D,
            layers.GlobalMinPooling3D,
        ),
        {},
    ),
}


def downsampling_names():
    """Returns the names `get_downsampling` knows, as a tuple."""
    return tuple(_DOWNSAMPLINGS)


def get_downsampling(name, /, rank=2, **kwargs):
    """Builds the pooling layer called `name`.

    Args:
        name: string, one of `downsampling_names()`: `"max"`, `"avg"`,
            `"min"`, `"mixed"` (`MixedPooling*D`, `mode="random"`),
            `"mixed_learned"` (`mode="learned"`), `"gated"`
            (`mode="gated"`), `"stochastic"`, `"blurpool"`
            (`BlurPooling*D`), `"maxblurpool"` (`MaxBlurPooling*D`),
            `"softpool"`, `"tree"` (`TreePooling*D`), `"median"`, `"lp"`
            (`LPPooling*D`), `"fractional"` (`FractionalMaxPooling2D/3D`),
            `"spp"` (`SpatialPyramidPooling2D`), `"adaptive_avg"` and
            `"adaptive_max"` (Keras's `AdaptiveAveragePooling*D` and
            `AdaptiveMaxPooling*D`), `"gem"` (`GlobalGeMPooling*D`),
            `"global_max"`, `"global_avg"`, `"global_min"`.
        rank: int, 1, 2 or 3. Picks the 1D, 2D or 3D class.
        **kwargs: passed to the class: `pool_size`, `strides`, `padding`,
            `data_format`, `name` (the layer's: the first argument is
            positional-only), ... for the windowed poolings, whose
            `pool_size` defaults to 2;
            `data_format`, `keepdims`, `name`, ... for the global ones; plus
            `alpha`, `granularity`, `seed` for the mixed poolings and `seed`
            for `"stochastic"`; `filter_size`, `strides` (default 2),
            `padding_mode`, `data_format` for `"blurpool"`, which has no
            `pool_size`; `pool_size` (the max window, moved with stride 1),
            `strides` (the blur's, default 2), `filter_size`, `padding`,
            `padding_mode` for `"maxblurpool"`; `depth`, `granularity`,
            the initializers for `"tree"`; `norm_type` for `"lp"`;
            `output_ratio` or `output_size`, `pool_size` (default `None`:
            Graham's regions), `pseudo_random`, `overlapping`,
            `inference_draws`, `seed` for `"fractional"` (no `strides` or
            `padding`); `bins`, `mode` for `"spp"`; `output_size` (required)
            for the adaptive poolings; `p`, `eps`, `granularity`,
            `keepdims` for `"gem"`. The `mode` of a mixed pooling is fixed
            by `name`. `"fractional"` and `"spp"` have no 1D layer (nor
            `"spp"` a 3D one): other ranks raise a `ValueError`.

    Returns:
        A new `keras.layers.Layer`.

    Example:

    >>> kpool.get_downsampling("stochastic", pool_size=3, strides=2, seed=0)
    <StochasticPooling2D name=stochastic_pooling2d, built=False>
    """
    if name not in _DOWNSAMPLINGS:
        raise ValueError(
            f"`name` must be one of {list(_DOWNSAMPLINGS)}. "
            f"Received: name={name!r}"
        )
    if rank not in (1, 2, 3):
        raise ValueError(f"`rank` must be 1, 2 or 3. Received: rank={rank!r}")
    classes, fixed_kwargs = _DOWNSAMPLINGS[name]
    for key, value in fixed_kwargs.items():
        if key in kwargs:
            raise ValueError(
                f"`{key}` is fixed to {value!r} by name={name!r}; drop it. "
                f"Received: {key}={kwargs[key]!r}"
            )
    cls = classes[rank - 1]
    if cls is None:
        ranks = [r for r, c in enumerate(classes, 1) if c is not None]
        raise ValueError(
            f"`rank` must be one of {ranks} for name={name!r}, which has "
            f"no {rank}D layer. Received: rank={rank!r}"
        )
    pool_size = inspect.signature(cls.__init__).parameters.get("pool_size")
    if pool_size is not None and pool_size.default is inspect.Parameter.empty:
        # Keras's AveragePooling*D alone has no default window (blur
        # pooling and the global poolings have none at all, and fractional
        # max pooling's default, None, is Graham's regions).
        kwargs.setdefault("pool_size", 2)
    return cls(**fixed_kwargs, **kwargs)
