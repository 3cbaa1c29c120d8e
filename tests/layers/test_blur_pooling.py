"""BlurPooling1D/2D/3D and MaxBlurPooling1D/2D/3D (Zhang, 2019)."""

import itertools
import math

import keras
import numpy as np
import pytest
from absl.testing import parameterized
from keras.src import testing

from kpool import layers, ops
from kpool.backend.depthwise import depthwise_filter_axis
from kpool.ops.blur_pool import Blur, binomial_filter, sliced_filter_axis

from .assertions import (
    assert_jit_matches_eager,
    assert_keras_file_round_trip,
    channels_last,
    gradients,
    numeric,
    sample,
    to_format,
    windows,
)
from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)

BLURS = {
    1: layers.BlurPooling1D,
    2: layers.BlurPooling2D,
    3: layers.BlurPooling3D,
}
MAX_BLURS = {
    1: layers.MaxBlurPooling1D,
    2: layers.MaxBlurPooling2D,
    3: layers.MaxBlurPooling3D,
}
SPATIAL = {1: (9,), 2: (9, 8), 3: (5, 6, 5)}
NUMPY_PAD_MODES = {
    "reflect": "reflect",  # mirrored about the edge cell, as torch's
    "replicate": "edge",
    "zero": "constant",
    "constant": "constant",
}
FORMATS = ("channels_last", "channels_first")


def binomial(filter_size):
    """Pascal's triangle, row `filter_size - 1`, normalised: the paper's
    [1], [1, 1], [1, 2, 1], [1, 3, 3, 1], ... filters."""
    row = np.array([1.0])
    for _ in range(filter_size - 1):
        row = np.convolve(row, [1.0, 1.0])
    return row / row.sum()


def downsample(x, filter_size, strides, padding_mode, data_format, pads=None):
    """Zhang's Downsample in NumPy: pad, correlate with the N-d outer
    product filter (one window at a time, no separability), subsample.

    `pads` defaults to the paper's `((f - 1) // 2, ceil((f - 1) / 2))`.
    """
    x = channels_last(x, data_format).astype("float64")
    rank = x.ndim - 2
    f = filter_size
    if pads is None:
        pads = [((f - 1) // 2, math.ceil((f - 1) / 2))] * rank
    x = np.pad(x, [(0, 0), *pads, (0, 0)], mode=NUMPY_PAD_MODES[padding_mode])
    kernel = binomial(f)
    for _ in range(rank - 1):
        kernel = np.multiply.outer(kernel, binomial(f))
    sizes = [
        (n - f) // s + 1 for n, s in zip(x.shape[1:-1], strides, strict=True)
    ]
    out = np.zeros((x.shape[0], *sizes, x.shape[-1]))
    for position in itertools.product(*(range(o) for o in sizes)):
        region = x[
            (
                slice(None),
                *(
                    slice(p * s, p * s + f)
                    for p, s in zip(position, strides, strict=True)
                ),
            )
        ]
        out[(slice(None), *position)] = np.tensordot(
            region, kernel, axes=(list(range(1, rank + 1)), list(range(rank)))
        )
    return to_format(out, data_format)


def integer_sample(rng, rank, data_format, spatial=None):
    """Small integers, negatives included: every blur of them is a dyadic
    fraction exact in float32, so the layer must match the paper bit for bit
    however its backend orders the sums."""
    x = rng.integers(-8, 9, (2, *(spatial or SPATIAL[rank]), 3))
    return to_format(x.astype("float32"), data_format)


BLUR_CASES = [
    pytest.param(rank, f, mode, fmt, id=f"{rank}d-f{f}-{mode}-{fmt}")
    for rank, mode, fmt in itertools.product(
        (1, 2, 3), ("reflect", "replicate", "zero"), FORMATS
    )
    for f in ((1, 2, 3, 4, 5, 7) if rank < 3 else (1, 3, 4))
]


@pytest.mark.parametrize(
    "rank, filter_size, padding_mode, data_format", BLUR_CASES
)
def test_blur_matches_the_papers_filters_exactly(
    rng, rank, filter_size, padding_mode, data_format
):
    x = integer_sample(rng, rank, data_format)
    layer = BLURS[rank](
        filter_size=filter_size,
        padding_mode=padding_mode,
        data_format=data_format,
    )
    outputs = numeric(layer(x))
    expected = downsample(
        x, filter_size, (2,) * rank, padding_mode, data_format
    )
    assert outputs.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_array_equal(outputs, expected)


@pytest.mark.parametrize("strides", [(3, 1), (1, 2), (2, 3)])
@pytest.mark.parametrize("padding_mode", ["reflect", "constant"])
def test_blur_on_normal_values_with_uneven_strides(rng, strides, padding_mode):
    x = sample(rng, 2, "channels_last", (10, 7))
    outputs = ops.blur_pool(x, 4, strides, padding_mode)
    expected = downsample(x, 4, strides, padding_mode, "channels_last")
    # ceil(n / stride) along each dim.
    assert outputs.shape == (
        2,
        math.ceil(10 / strides[0]),
        math.ceil(7 / strides[1]),
        3,
    )
    np.testing.assert_allclose(numeric(outputs), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("filter_size", [3, 5, 7])
@pytest.mark.parametrize("data_format", FORMATS)
def test_odd_filters_match_kornia_and_timm(rng, filter_size, data_format):
    # kornia.filters.blur_pool2d: zero padding of (k - 1) // 2 on each side.
    # timm's BlurPool2d: ((stride - 1) + (k - 1)) // 2 reflected cells on
    # each side. Both are symmetric: Zhang's split when k is odd.
    x = sample(rng, 2, data_format, (9, 8))
    k = filter_size
    kornia = downsample(
        x, k, (2, 2), "zero", data_format, [((k - 1) // 2,) * 2] * 2
    )
    timm = downsample(
        x, k, (2, 2), "reflect", data_format, [((1 + k - 1) // 2,) * 2] * 2
    )
    for mode, peer in (("zero", kornia), ("reflect", timm)):
        outputs = layers.BlurPooling2D(k, 2, mode, data_format)(x)
        np.testing.assert_allclose(numeric(outputs), peer, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("data_format", FORMATS)
def test_filter_size_one_is_plain_subsampling(rng, rank, data_format):
    x = sample(rng, rank, data_format, SPATIAL[rank])
    outputs = numeric(BLURS[rank](1, 2, data_format=data_format)(x))
    subsampled = channels_last(x, data_format)[
        (slice(None), *(slice(None, None, 2),) * rank)
    ]
    np.testing.assert_array_equal(outputs, to_format(subsampled, data_format))


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("filter_size", [1, 2, 3, 4, 7])
def test_depthwise_form_matches_the_sliced_form(rng, filter_size, stride):
    # A backend may run either (kpool.backend.fast_path("blur_filter_axis")).
    x = sample(rng, 2, "channels_first", (9, 7))
    blur = Blur(2, filter_size, stride, "reflect", "channels_first")
    weights = binomial_filter(filter_size)
    for axis in (2, 3):
        np.testing.assert_allclose(
            numeric(sliced_filter_axis(blur, x, axis, stride, weights)),
            numeric(depthwise_filter_axis(blur, x, axis, stride, weights)),
            rtol=1e-6,
            atol=1e-6,
        )


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "zero"])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("filter_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("data_format", FORMATS)
def test_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, data_format, filter_size, stride, padding_mode
):
    # torch blurs every axis at once, one depthwise convolution, and so
    # does TensorFlow's graph mode in 2D with channels last.
    skip_without_fast_path("blur")
    spatial = {1: (9,), 2: (9, 8), 3: (7, 6, 5)}[rank]
    x = sample(rng, rank, data_format, spatial)
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: ops.blur_pool(
            x, filter_size, stride, padding_mode, data_format
        ),
        x,
        rng,
    )


def test_max_blur_fast_path_matches_keras_ops_form(monkeypatch, rng):
    skip_without_fast_path("blur")
    x = sample(rng, 2, "channels_first", (10, 9))
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: ops.max_blur_pool(
            x, 2, 2, 3, padding_mode="zero", data_format="channels_first"
        ),
        x,
        rng,
    )


def shift_change(pooling, x):
    """L2 distance between the pooling of `x` and of `x` shifted by one
    sample (a circular shift; the cells the wrap-around reaches are left
    out)."""
    shifted = np.roll(x, 1, axis=1)
    if x.ndim == 4:
        shifted = np.roll(shifted, 1, axis=2)
    a, b = numeric(pooling(x)), numeric(pooling(shifted))
    inner = (slice(None), *(slice(2, -2),) * (x.ndim - 2))
    return np.linalg.norm(a[inner] - b[inner])


@pytest.mark.parametrize("rank", [1, 2])
def test_blur_changes_less_than_max_pooling_under_a_one_sample_shift(rng, rank):
    # White noise of unit variance, shifted by one sample. For [1, 2, 1] / 4
    # with stride 2 the output's change is (x[2t+1] + x[2t] - x[2t-1] -
    # x[2t-2]) / 4 in 1-D: RMS 1/2. Max pooling 2 changes by max(x[2t],
    # x[2t+1]) - max(x[2t-1], x[2t]), whose RMS is about 0.87 (the windows
    # share one cell, so the two maxima are equal only if it wins both).
    # Their ratio, about 0.57, is estimated within a few percent from 2**12
    # (1-D) or 64**2 (2-D) outputs: well below the 0.75 asserted.
    shape = {1: (2**13,), 2: (128, 128)}[rank]
    x = sample(rng, rank, "channels_last", shape, batch=1, channels=1)
    max_pooling = getattr(keras.layers, f"MaxPooling{rank}D")(2)
    blur = shift_change(BLURS[rank](3, 2), x)
    max_blur = shift_change(MAX_BLURS[rank](2, 2, 3), x)
    max_change = shift_change(max_pooling, x)
    assert blur < 0.75 * max_change
    assert max_blur < 0.75 * max_change


MAX_BLUR_CASES = [
    pytest.param(
        rank, pool, padding, fmt, id=f"{rank}d-p{pool}-{padding}-{fmt}"
    )
    for rank, pool, padding, fmt in itertools.product(
        (1, 2, 3), (2, 3), ("valid", "same"), FORMATS
    )
]


@pytest.mark.parametrize(
    "rank, pool_size, padding, data_format", MAX_BLUR_CASES
)
def test_max_blur_is_dense_max_then_blur(
    rng, rank, pool_size, padding, data_format
):
    x = sample(rng, rank, data_format, SPATIAL[rank])
    layer = MAX_BLURS[rank](pool_size, 2, 3, padding, data_format=data_format)
    outputs = numeric(layer(x))
    maxed = np.nanmax(
        windows(x, (pool_size,) * rank, (1,) * rank, padding, data_format),
        axis=-2,
    )
    expected = downsample(maxed, 3, (2,) * rank, "reflect", "channels_last")
    expected = to_format(expected, data_format)
    assert outputs.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(outputs, expected, rtol=1e-6, atol=1e-6)


def test_max_blur_matches_max_poolings_output_shape():
    # Zhang's MaxBlurPool(2) keeps MaxPooling2D(2)'s shape on even sizes.
    shape = (None, 32, 32, 8)
    expected = keras.layers.MaxPooling2D(2).compute_output_shape(shape)
    assert layers.MaxBlurPooling2D().compute_output_shape(shape) == expected
    assert layers.BlurPooling2D().compute_output_shape(shape) == expected


def test_blur_gradient_is_the_transposed_filter(rng):
    # Blur pooling is linear, y = A x: the input gradient of sum(u * y) is
    # A^T u, with A's columns the reference applied to unit impulses.
    n = 9
    layer = layers.BlurPooling1D(4, 2, "reflect")
    impulses = np.eye(n, dtype="float32").reshape(n, n, 1)
    matrix = downsample(impulses, 4, (2,), "reflect", "channels_last")[..., 0]
    x = sample(rng, 1, "channels_last", (n,), batch=1, channels=1)
    upstream = rng.standard_normal((1, math.ceil(n / 2), 1)).astype("float32")
    _, input_gradient, weight_gradients = gradients(layer, x, upstream)
    assert weight_gradients == []
    # Row i of `matrix` is the response to impulse i: A's column i.
    expected = matrix @ upstream[0, :, 0]
    np.testing.assert_allclose(
        input_gradient[0, :, 0], expected, rtol=1e-6, atol=1e-6
    )


def test_reflect_needs_more_cells_than_it_reflects():
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        layers.BlurPooling2D(filter_size=5)(np.zeros((1, 2, 8, 1)))
    # Replicate and zero padding have no such limit.
    outputs = layers.BlurPooling2D(5, padding_mode="replicate")(
        np.ones((1, 2, 8, 1))
    )
    np.testing.assert_allclose(
        numeric(outputs), np.ones((1, 1, 4, 1)), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"filter_size": 0}, "filter_size"),
        ({"filter_size": 8}, "filter_size"),
        ({"filter_size": 2.5}, "filter_size"),
        ({"filter_size": True}, "filter_size"),
        ({"strides": 0}, "strides"),
        ({"strides": (2, 2, 2)}, "strides"),
        ({"padding_mode": "circular"}, "padding_mode"),
        ({"data_format": "NHWC"}, "data_format"),
    ],
)
def test_blur_errors_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        layers.BlurPooling2D(**kwargs)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"pool_size": 0}, "pool_size"),
        ({"strides": (2,)}, "strides"),
        ({"filter_size": 9}, "filter_size"),
        ({"padding": "full"}, "padding"),
        ({"padding_mode": "wrap"}, "padding_mode"),
        ({"data_format": "channels_middle"}, "data_format"),
    ],
)
def test_max_blur_errors_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        layers.MaxBlurPooling2D(**kwargs)


def test_ops_check_the_input_rank():
    with pytest.raises(ValueError, match="`inputs` of blur_pool"):
        ops.blur_pool(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="`inputs` of max_blur_pool"):
        ops.max_blur_pool(np.zeros((1, 2, 3, 4, 5, 6)))
    with pytest.raises(ValueError, match="padding='valid' leaves no window"):
        ops.max_blur_pool(np.zeros((1, 1, 4, 2)), pool_size=2)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("cls", ["BlurPooling", "MaxBlurPooling"])
def test_keras_file_round_trip_and_jit(rng, tmp_path, cls, rank):
    kwargs = {"filter_size": 4, "padding_mode": "replicate"}
    layer = getattr(layers, f"{cls}{rank}D")(**kwargs)
    x = sample(rng, rank, "channels_last", SPATIAL[rank])
    assert_keras_file_round_trip(layer, x, tmp_path)
    assert_jit_matches_eager(getattr(layers, f"{cls}{rank}D")(**kwargs), x)


def test_mixed_precision_matches_float32(rng):
    x = sample(rng, 2, "channels_last", (9, 8))
    for cls in (layers.BlurPooling2D, layers.MaxBlurPooling2D):
        mixed = cls(dtype="mixed_float16")(x)
        assert keras.backend.standardize_dtype(mixed.dtype) == "float16"
        np.testing.assert_allclose(
            numeric(mixed).astype("float32"),
            numeric(cls()(x)),
            rtol=2e-3,
            atol=2e-3,
        )


class BlurPoolingContractTest(testing.TestCase):
    @parameterized.parameters(
        (1, "channels_last", (2, 9, 3), (2, 5, 3)),
        (2, "channels_first", (2, 3, 9, 8), (2, 3, 5, 4)),
        (3, "channels_last", (2, 5, 6, 5, 3), (2, 3, 3, 3, 3)),
    )
    def test_blur_pooling(self, rank, data_format, input_shape, output_shape):
        self.run_layer_test(
            BLURS[rank],
            init_kwargs={
                "filter_size": 3,
                "strides": 2,
                "padding_mode": "reflect",
                "data_format": data_format,
            },
            input_shape=input_shape,
            expected_output_shape=output_shape,
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=False,
            assert_built_after_instantiation=True,
        )

    @parameterized.parameters(
        (1, "channels_first", (2, 3, 9), (2, 3, 4)),
        (2, "channels_last", (2, 9, 8, 3), (2, 4, 4, 3)),
        (3, "channels_first", (2, 3, 5, 6, 5), (2, 3, 2, 3, 2)),
    )
    def test_max_blur_pooling(
        self, rank, data_format, input_shape, output_shape
    ):
        self.run_layer_test(
            MAX_BLURS[rank],
            init_kwargs={
                "pool_size": 2,
                "strides": 2,
                "filter_size": 3,
                "padding": "valid",
                "padding_mode": "zero",
                "data_format": data_format,
            },
            input_shape=input_shape,
            expected_output_shape=output_shape,
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=False,
            assert_built_after_instantiation=True,
        )
