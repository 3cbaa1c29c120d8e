"""Stride-1 "same" pooling against scipy.ndimage's rank and uniform filters.

Keras's "same" padding with stride 1 pads `k - 1` cells per axis, `(k - 1)
// 2` before and the rest after, and leaves the padding out of both the max
and the mean. scipy.ndimage centres a size-`k` window on cell `k // 2`;
`origin=o` moves it `o` cells towards the start. The two windows match with
`o = (k - 1) // 2 - k // 2`: 0 for odd `k`, -1 for even `k`.

What holds, by the border handling:
- max: equal with mode "nearest", "reflect", or "constant" with
  cval=-inf, since every value they pad with is already in the window's
  in-bounds part; with "mirror" too for odd windows. Not with "mirror" for
  even windows (its last padded value comes from outside the window), nor
  with "constant" and its default cval=0 where a border window holds only
  negative values.
- mean: equal inside. At the borders, Keras averages the in-bounds cells
  only; "constant" counts the padded zeros, and "nearest", "reflect" and
  "mirror" count copies of cells, which shift the mean. The one exception
  is a window of 2, padded by one cell after the image: its border windows
  hold one in-bounds cell per axis, and "nearest" and "reflect" pad with
  that very cell. The ratio of two "constant" uniform filters, of the input
  and of ones, is Keras's mean everywhere.
"""

import keras
import numpy as np
import pytest

ndimage = pytest.importorskip("scipy.ndimage")

POOL_SIZES = [(2, 2), (3, 3), (3, 2), (4, 5)]


def origin(pool_size):
    """scipy's origin of Keras's stride-1 "same" window, for NHWC arrays."""
    return [0, *((k - 1) // 2 - k // 2 for k in pool_size), 0]


def size(pool_size):
    return [1, *pool_size, 1]


@pytest.fixture
def images(rng):
    # Negative values too: they tell cval=0 apart from the padding Keras
    # leaves out.
    return rng.standard_normal((2, 9, 11, 3)).astype("float32")


def keras_pool(layer, images, pool_size):
    pooled = layer(pool_size=pool_size, strides=1, padding="same")(images)
    return keras.ops.convert_to_numpy(pooled)


def border(shape, pool_size):
    """True where a stride-1 "same" window overhangs the image."""
    mask = np.zeros(shape, bool)
    for axis, k in zip((1, 2), pool_size, strict=True):
        before, after = (k - 1) // 2, k - 1 - (k - 1) // 2
        index = [slice(None)] * 4
        index[axis] = slice(0, before)
        mask[tuple(index)] = True
        index[axis] = slice(shape[axis] - after, shape[axis])
        mask[tuple(index)] = True
    return mask


@pytest.mark.parametrize("pool_size", POOL_SIZES)
@pytest.mark.parametrize(
    "mode, cval", [("nearest", 0.0), ("reflect", 0.0), ("constant", -np.inf)]
)
def test_max_pooling_is_maximum_filter(images, pool_size, mode, cval):
    expected = ndimage.maximum_filter(
        images,
        size=size(pool_size),
        mode=mode,
        cval=cval,
        origin=origin(pool_size),
    )
    np.testing.assert_array_equal(
        keras_pool(keras.layers.MaxPooling2D, images, pool_size), expected
    )


@pytest.mark.parametrize("pool_size", [(3, 3), (5, 3)])
def test_max_pooling_is_mirror_maximum_filter_for_odd_windows(
    images, pool_size
):
    expected = ndimage.maximum_filter(
        images, size=size(pool_size), mode="mirror", origin=origin(pool_size)
    )
    np.testing.assert_array_equal(
        keras_pool(keras.layers.MaxPooling2D, images, pool_size), expected
    )


@pytest.mark.parametrize("pool_size", [(2, 2), (4, 5)])
def test_max_pooling_differs_without_the_origin_or_with_mirror(
    images, pool_size
):
    pooled = keras_pool(keras.layers.MaxPooling2D, images, pool_size)
    centred = ndimage.maximum_filter(
        images, size=size(pool_size), mode="nearest"
    )
    assert not np.array_equal(pooled, centred)
    mirror = ndimage.maximum_filter(
        images, size=size(pool_size), mode="mirror", origin=origin(pool_size)
    )
    assert not np.array_equal(pooled, mirror)
    # Inside, away from the borders, every mode agrees.
    inside = ~border(images.shape, pool_size)
    np.testing.assert_array_equal(pooled[inside], mirror[inside])


def test_max_pooling_differs_from_constant_zero_on_negative_borders():
    # The seed snippet's mode="constant" pads with cval=0: a window over the
    # border of an all-negative image then has maximum 0.
    images = -np.arange(1, 1 + 2 * 6 * 6, dtype="float32").reshape(2, 6, 6, 1)
    pool_size = (3, 3)
    pooled = keras_pool(keras.layers.MaxPooling2D, images, pool_size)
    zero_padded = ndimage.maximum_filter(
        images, size=size(pool_size), mode="constant", origin=origin(pool_size)
    )
    at_border = border(images.shape, pool_size)
    assert (zero_padded[at_border] == 0).all()
    assert (pooled < 0).all()
    np.testing.assert_array_equal(pooled[~at_border], zero_padded[~at_border])


@pytest.mark.parametrize("pool_size", POOL_SIZES)
def test_average_pooling_is_a_normalised_uniform_filter(images, pool_size):
    pooled = keras_pool(keras.layers.AveragePooling2D, images, pool_size)
    options = dict(size=size(pool_size), origin=origin(pool_size))
    total = ndimage.uniform_filter(images, mode="constant", **options)
    cells = ndimage.uniform_filter(
        np.ones_like(images), mode="constant", **options
    )
    # The mean over the in-bounds cells of each window.
    np.testing.assert_allclose(pooled, total / cells, rtol=1e-5, atol=1e-6)

    at_border = border(images.shape, pool_size)
    # The seed snippet's mode="constant" counts the padded zeros: it equals
    # Keras's mean times the in-bounds fraction, differing at the borders.
    np.testing.assert_allclose(total, pooled * cells, rtol=1e-5, atol=1e-6)
    assert (cells[at_border] < 1).all()
    np.testing.assert_allclose(cells[~at_border], 1.0)
    for mode in ("constant", "nearest", "reflect", "mirror"):
        filtered = ndimage.uniform_filter(images, mode=mode, **options)
        np.testing.assert_allclose(
            pooled[~at_border], filtered[~at_border], rtol=1e-5, atol=1e-6
        )
        if mode in ("nearest", "reflect") and set(pool_size) == {2}:
            np.testing.assert_allclose(pooled, filtered, rtol=1e-5, atol=1e-6)
        else:
            assert not np.allclose(
                pooled[at_border], filtered[at_border], rtol=1e-5, atol=1e-6
            ), mode
