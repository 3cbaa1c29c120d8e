import itertools
import math

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from keras.src import testing

import kpool
from kpool import layers
from kpool.ops.fractional_max_pool import boundaries

from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)
from .gradients import layer_gradients
from .saving import assert_reloads_from_keras_file
from .torch_reference import from_channels_first, to_channels_first

DATA_FORMATS = ("channels_last", "channels_first")
SPATIAL = {2: (11, 13), 3: (9, 8, 10)}
FRACTIONAL_POOLINGS = {
    2: layers.FractionalMaxPooling2D,
    3: layers.FractionalMaxPooling3D,
}
TORCH_POOLS = {2: F.fractional_max_pool2d, 3: F.fractional_max_pool3d}


def inputs(rng, rank, data_format, batch=2, channels=3):
    x = rng.standard_normal((batch, channels, *SPATIAL[rank]))
    return from_channels_first(x.astype("float32"), data_format)


def torch_samples(samples, rank):
    """torch's `_random_samples` order: width first in 2D, (T, H, W) in 3D."""
    return samples[..., ::-1].copy() if rank == 2 else samples


@pytest.mark.parametrize(
    "rank, data_format, pool, size",
    [
        (2, "channels_last", 2, {"output_size": (6, 7)}),
        (2, "channels_first", 3, {"output_ratio": 0.6}),
        (2, "channels_last", 2, {"output_size": (10, 1)}),
        (3, "channels_first", 2, {"output_ratio": (0.7, 0.5, 0.6)}),
        (3, "channels_last", 3, {"output_size": 4}),
    ],
)
def test_values_indices_and_gradients_match_torch(
    rng, rank, data_format, pool, size
):
    x = inputs(rng, rank, data_format)
    samples = rng.uniform(size=(2, 3, rank)).astype("float32")
    values, indices = kpool.ops.fractional_max_pool(
        x,
        pool_size=pool,
        samples=samples,
        data_format=data_format,
        return_indices=True,
        **size,
    )

    class Pool(keras.layers.Layer):
        def call(self, x):
            return kpool.ops.fractional_max_pool(
                x,
                pool_size=pool,
                samples=samples,
                data_format=data_format,
                **size,
            )

    upstream = rng.uniform(1, 2, values.shape).astype("float32")
    _, gradient, _ = layer_gradients(Pool(), x, upstream)

    x_torch = torch.tensor(to_channels_first(x, data_format).copy())
    x_torch.requires_grad_(True)
    expected, expected_indices = TORCH_POOLS[rank](
        x_torch,
        pool,
        return_indices=True,
        _random_samples=torch.tensor(torch_samples(samples, rank)),
        **{
            key: (value,) * rank if isinstance(value, (int, float)) else value
            for key, value in size.items()
        },
    )
    weights = torch.tensor(to_channels_first(upstream, data_format).copy())
    (expected * weights).sum().backward()
    np.testing.assert_array_equal(
        values, from_channels_first(expected.detach().numpy(), data_format)
    )
    np.testing.assert_array_equal(
        indices, from_channels_first(expected_indices.numpy(), data_format)
    )
    # Where regions overlap, a cell's gradient is a sum, in another order.
    np.testing.assert_allclose(
        gradient,
        from_channels_first(x_torch.grad.numpy(), data_format),
        rtol=1e-6,
    )


def numpy_boundaries(n, m, u):
    """Graham's pseudo-random sequence, float32 as the op computes it."""
    alpha = np.float32(n) / np.float32(m)
    inner = [
        int(np.floor((np.float32(i) + u) * alpha)) - int(np.floor(u * alpha))
        for i in range(1, m)
    ]
    return [0, *inner, n]


def numpy_fractional_max_pool(x, outputs, samples, overlapping):
    """Graham's regions, one window at a time; `x` channels first."""
    batch, channels, *spatial = x.shape
    result = np.zeros((batch, channels, *outputs), x.dtype)
    for b, c in itertools.product(range(batch), range(channels)):
        cuts = [
            numpy_boundaries(n, m, np.float32(samples[b, c, d]))
            for d, (n, m) in enumerate(zip(spatial, outputs, strict=True))
        ]
        for position in itertools.product(*(range(m) for m in outputs)):
            region = tuple(
                slice(
                    cut[i],
                    min(cut[i + 1] + overlapping, n),
                )
                for cut, i, n in zip(cuts, position, spatial, strict=True)
            )
            result[(b, c, *position)] = x[b, c][region].max()
    return result


@pytest.mark.parametrize("overlapping", [False, True])
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("data_format", DATA_FORMATS)
def test_graham_regions_match_numpy_reference(
    rng, rank, data_format, overlapping
):
    x = inputs(rng, rank, data_format)
    samples = rng.uniform(size=(2, 3, rank)).astype("float32")
    outputs = tuple(int(n * 0.7) for n in SPATIAL[rank])
    assert_graham_regions(x, outputs, samples, overlapping, data_format)


def assert_graham_regions(x, outputs, samples, overlapping, data_format):
    """kpool's pooling of `x` to `outputs` equals Graham's regions pooled
    one window at a time (NumPy) for the sequences' `samples`."""
    pooled = kpool.ops.fractional_max_pool(
        x,
        output_size=outputs,
        samples=samples,
        overlapping=overlapping,
        data_format=data_format,
    )
    expected = numpy_fractional_max_pool(
        to_channels_first(x, data_format), outputs, samples, overlapping
    )
    np.testing.assert_array_equal(
        pooled, from_channels_first(expected, data_format)
    )


def test_random_sequences_place_the_large_steps_uniformly():
    # 10 cells in 7 steps: 3 steps of 2 and 4 of 1, in random order.
    rows = 4000
    keys = keras.random.uniform((rows, 7), seed=0)
    cuts = keras.ops.convert_to_numpy(
        boundaries(10, 7, keras.ops.zeros((rows,)), keys)
    )
    assert np.all(cuts[:, 0] == 0) and np.all(cuts[:, -1] == 10)
    steps = np.diff(cuts, axis=1)
    assert set(np.unique(steps)) == {1, 2}
    assert np.all((steps == 2).sum(axis=1) == 3)
    # Each position holds a large step with probability 3/7; 5 standard
    # deviations of a mean of 4000 Bernoulli draws.
    tolerance = 5 * math.sqrt(3 / 7 * 4 / 7 / rows)
    np.testing.assert_allclose((steps == 2).mean(axis=0), 3 / 7, atol=tolerance)


def test_pseudo_random_steps_are_floor_or_ceil_of_alpha(rng):
    u = keras.ops.convert_to_tensor(rng.uniform(size=500).astype("float32"))
    cuts = keras.ops.convert_to_numpy(boundaries(25, 17, u))
    steps = np.diff(cuts, axis=1)
    assert set(np.unique(steps)) <= {1, 2}
    assert np.all(cuts[:, -1] == 25)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("pseudo_random", [True, False])
def test_training_draws_new_regions_and_seeds_reproduce(
    rng, rank, pseudo_random
):
    x = inputs(rng, rank, "channels_last", batch=4)
    layer = FRACTIONAL_POOLINGS[rank](pseudo_random=pseudo_random, seed=3)
    first = keras.ops.convert_to_numpy(layer(x, training=True))
    second = keras.ops.convert_to_numpy(layer(x, training=True))
    assert first.shape == layer.compute_output_shape(x.shape)
    assert not np.array_equal(first, second)
    again = FRACTIONAL_POOLINGS[rank](pseudo_random=pseudo_random, seed=3)
    np.testing.assert_array_equal(again(x, training=True), first)


@pytest.mark.parametrize("data_format", DATA_FORMATS)
def test_inference_is_the_sequence_of_u_one_half(rng, data_format):
    x = inputs(rng, 2, data_format)
    layer = layers.FractionalMaxPooling2D(
        output_ratio=0.7, pseudo_random=False, data_format=data_format
    )
    expected = kpool.ops.fractional_max_pool(
        x,
        output_ratio=0.7,
        samples=np.full((2, 3, 2), 0.5, "float32"),
        data_format=data_format,
    )
    np.testing.assert_array_equal(layer(x), expected)
    np.testing.assert_array_equal(layer(x, training=False), expected)


def test_inference_draws_average_several_poolings(rng):
    x = inputs(rng, 2, "channels_last")
    layer = layers.FractionalMaxPooling2D(inference_draws=8, seed=0)
    outputs = keras.ops.convert_to_numpy(layer(x))
    # A mean of maxima of regions: between the global min and max, and not
    # one of the draws (their regions differ).
    single = keras.ops.convert_to_numpy(layer(x, training=True))
    assert outputs.shape == single.shape
    assert not np.array_equal(outputs, single)
    assert x.min() <= outputs.min() and outputs.max() <= x.max()


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"output_ratio": 1.0}, "output_ratio"),
        ({"output_ratio": 0}, "output_ratio"),
        ({"output_ratio": (0.5,)}, "output_ratio"),
        ({"output_size": 0}, "output_size"),
        ({"output_size": 4, "output_ratio": 0.5}, "output_size"),
        ({"pool_size": 0}, "pool_size"),
        ({"pool_size": 2, "overlapping": True}, "overlapping"),
        ({"pseudo_random": "yes"}, "pseudo_random"),
        ({"inference_draws": 0}, "inference_draws"),
        ({"data_format": "nhwc"}, "data_format"),
    ],
)
def test_bad_arguments_are_named(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        layers.FractionalMaxPooling2D(**kwargs)


def test_too_many_outputs_are_refused():
    x = np.ones((1, 6, 6, 1), "float32")
    with pytest.raises(ValueError, match="`output_size`"):
        kpool.ops.fractional_max_pool(x, output_size=7)
    with pytest.raises(ValueError, match="size - pool_size"):
        kpool.ops.fractional_max_pool(x, output_size=5, pool_size=3)


def test_reloads_from_keras_file(rng, tmp_path):
    x = inputs(rng, 3, "channels_first")
    model_inputs = keras.Input(x.shape[1:])
    layer = layers.FractionalMaxPooling3D(
        output_size=(5, 4, 6),
        overlapping=True,
        data_format="channels_first",
        seed=2,
    )
    model = keras.Model(model_inputs, layer(model_inputs))
    restored = assert_reloads_from_keras_file(model, x, tmp_path)
    assert restored.layers[-1].get_config() == layer.get_config()


class FractionalMaxPoolingContractTest(testing.TestCase):
    def test_layer_contract(self):
        for rank, data_format, kwargs in [
            (2, "channels_last", {"output_ratio": 0.7}),
            (2, "channels_first", {"output_size": 5, "pool_size": 2}),
            (3, "channels_last", {"output_size": 4, "overlapping": True}),
        ]:
            shape = (2, 3, *SPATIAL[rank])
            if data_format == "channels_last":
                shape = (2, *SPATIAL[rank], 3)
            cls = FRACTIONAL_POOLINGS[rank]
            kwargs = {**kwargs, "data_format": data_format, "seed": 1}
            self.run_layer_test(
                cls,
                init_kwargs=kwargs,
                input_shape=shape,
                expected_output_shape=cls(**kwargs).compute_output_shape(shape),
                expected_num_trainable_weights=0,
                expected_num_non_trainable_weights=0,
                expected_num_seed_generators=1,
                assert_built_after_instantiation=True,
            )


def test_ties_give_the_gradient_to_the_first_maximum_as_torch(rng):
    # Few distinct values: most regions hold several maxima. Each step
    # pools the last dim first, so the gradient goes to the first maximal
    # cell in row-major order, as torch's does.
    x = rng.integers(0, 3, (2, 11, 13, 3)).astype("float32")
    samples = rng.uniform(size=(2, 3, 2)).astype("float32")

    class Pool(keras.layers.Layer):
        def call(self, x):
            return kpool.ops.fractional_max_pool(
                x, output_size=(6, 7), pool_size=3, samples=samples
            )

    upstream = rng.uniform(1, 2, (2, 6, 7, 3)).astype("float32")
    values, gradient, _ = layer_gradients(Pool(), x, upstream)
    x_torch = torch.tensor(to_channels_first(x, "channels_last").copy())
    x_torch.requires_grad_(True)
    expected = F.fractional_max_pool2d(
        x_torch,
        3,
        output_size=(6, 7),
        _random_samples=torch.tensor(torch_samples(samples, 2)),
    )
    weights = torch.tensor(to_channels_first(upstream, "channels_last").copy())
    (expected * weights).sum().backward()
    np.testing.assert_array_equal(
        values, from_channels_first(expected.detach().numpy(), "channels_last")
    )
    np.testing.assert_allclose(
        gradient,
        from_channels_first(x_torch.grad.numpy(), "channels_last"),
        rtol=1e-6,
    )


@pytest.mark.parametrize("overlapping", [False, True])
def test_graham_region_gradients_reach_each_first_maximum(rng, overlapping):
    # 25 cells to 9 outputs: regions of 2 or 3 cells (3 or 4 overlapping),
    # each the maximum of 2 stride-1 windows of 2 cells; 22 to 10: regions
    # of 2 or 3 cells (3 or 4 overlapping).
    x = rng.integers(0, 4, (1, 25, 22, 2)).astype("float32")
    samples = rng.uniform(size=(1, 2, 2)).astype("float32")
    outputs = (9, 10)

    class Pool(keras.layers.Layer):
        def call(self, x):
            return kpool.ops.fractional_max_pool(
                x, output_size=outputs, samples=samples, overlapping=overlapping
            )

    upstream = rng.uniform(1, 2, (1, *outputs, 2)).astype("float32")
    values, gradient, _ = layer_gradients(Pool(), x, upstream)
    expected = np.zeros_like(x)
    for c in range(2):
        cuts = [
            numpy_boundaries(n, m, np.float32(samples[0, c, d]))
            for d, (n, m) in enumerate(zip((25, 22), outputs, strict=True))
        ]
        for i, j in itertools.product(*(range(m) for m in outputs)):
            rows = range(cuts[0][i], min(cuts[0][i + 1] + overlapping, 25))
            columns = range(cuts[1][j], min(cuts[1][j + 1] + overlapping, 22))
            region = x[0, rows.start : rows.stop, columns.start : columns.stop]
            r, q = np.unravel_index(np.argmax(region[..., c]), region.shape[:2])
            assert values[0, i, j, c] == region[r, q, c]
            expected[0, rows.start + r, columns.start + q, c] += upstream[
                0, i, j, c
            ]
    np.testing.assert_allclose(gradient, expected, rtol=1e-6)


@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize("pool", [None, 2])
def test_one_sequence_for_all_is_the_same_sequence_for_each(
    rng, data_format, pool
):
    # (1, 1, rank) samples gather whole slices; broadcast to (batch,
    # channels, rank) they gather per example and channel.
    x = inputs(rng, 2, data_format)
    shared = rng.uniform(size=(1, 1, 2)).astype("float32")

    def pool_with(samples):
        class Pool(keras.layers.Layer):
            def call(self, x):
                return kpool.ops.fractional_max_pool(
                    x,
                    output_ratio=0.6,
                    pool_size=pool,
                    samples=samples,
                    data_format=data_format,
                )

        return Pool()

    upstream = rng.uniform(1, 2, pool_with(shared)(x).shape).astype("float32")
    values, gradient, _ = layer_gradients(pool_with(shared), x, upstream)
    each = np.broadcast_to(shared, (2, 3, 2)).copy()
    expected, expected_gradient, _ = layer_gradients(
        pool_with(each), x, upstream
    )
    np.testing.assert_array_equal(values, expected)
    np.testing.assert_array_equal(gradient, expected_gradient)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize(
    "regions",
    [
        {"output_ratio": 0.7},
        {"output_ratio": 0.4},
        {"output_ratio": 0.6, "overlapping": True},
        {"output_ratio": 0.6, "pool_size": 2, "pseudo_random": False},
    ],
)
@pytest.mark.parametrize("ties", [False, True])
def test_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, shared, regions, ties, data_format
):
    # TensorFlow gathers each dim's rows through one batched gather
    # ("take_rows") and, outside XLA, every region's cells before one max
    # pooling ("region_max"); `keras.ops` compares shifted windows. Ties
    # (integer inputs) and repeated cells (regions of two lengths) must
    # give the gradient to the same cell.
    skip_without_fast_path("take_rows")
    x = inputs(rng, rank, data_format)
    if ties:
        x = np.round(x).astype("float32")
    samples = rng.uniform(size=(1, 1, rank) if shared else (2, 3, rank))
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: kpool.ops.fractional_max_pool(
            x,
            samples=samples.astype("float32"),
            seed=keras.random.SeedGenerator(1),
            data_format=data_format,
            **regions,
        ),
        x,
        rng,
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank, pool", [(2, 2), (2, 3), (3, 2)])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_windows_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, pool, shared, ties, data_format
):
    # torch's own fractional max pooling replaces the whole op for its
    # windows; it must give the `keras.ops` form's values, indices and
    # gradients, ties included.
    skip_without_fast_path("fractional_max_pool")
    x = inputs(rng, rank, data_format)
    if ties:
        x = np.round(x).astype("float32")
    samples = rng.uniform(size=(1, 1, rank) if shared else (2, 3, rank))
    samples = samples.astype("float32")

    def pool_with(x, return_indices=False):
        return kpool.ops.fractional_max_pool(
            x,
            output_ratio=0.6,
            pool_size=pool,
            samples=samples,
            data_format=data_format,
            return_indices=return_indices,
        )

    fast = kpool.backend.fast_path("fractional_max_pool")
    assert fast(
        keras.ops.convert_to_tensor(x),
        (pool,) * rank,
        tuple(int(n * 0.6) for n in SPATIAL[rank]),
        keras.ops.convert_to_tensor(samples),
        data_format,
    ), "the fast path declined an eager float32 input"
    # Overlapping windows sum a cell's gradient in another order.
    assert_same_outputs_and_gradients(monkeypatch, pool_with, x, rng)
    values, indices = pool_with(x, return_indices=True)
    with monkeypatch.context() as patch:
        patch.setattr(kpool.backend, "fast_path", lambda *a, **k: None)
        expected, expected_indices = pool_with(x, return_indices=True)
    np.testing.assert_array_equal(values, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    assert keras.backend.standardize_dtype(indices.dtype) == "int32"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_windows_fast_path_keeps_the_dtype_and_the_sequences(
    monkeypatch, rng, dtype
):
    # torch draws its sequences in the input's dtype, kpool in float32: 16
    # bit inputs are pooled in float32, float64 ones by `keras.ops`.
    skip_without_fast_path("fractional_max_pool")
    x = inputs(rng, 2, "channels_first", channels=8).astype(dtype)
    samples = rng.uniform(size=(2, 8, 2)).astype("float32")

    def pool_with(x):
        return kpool.ops.fractional_max_pool(
            x,
            output_ratio=0.55,
            pool_size=2,
            samples=samples,
            data_format="channels_first",
        )

    values = pool_with(keras.ops.convert_to_tensor(x))
    with monkeypatch.context() as patch:
        patch.setattr(kpool.backend, "fast_path", lambda *a, **k: None)
        expected = pool_with(keras.ops.convert_to_tensor(x))
    assert keras.backend.standardize_dtype(values.dtype) == dtype
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.ops.cast(values, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(expected, "float32")),
    )


@pytest.mark.parametrize(
    "spatial, outputs, pseudo_random, data_format",
    [
        ((12, 10), (6, 5), True, "channels_last"),
        ((12, 10), (6, 5), False, "channels_first"),
        ((12, 9), (4, 3), False, "channels_last"),
        ((8, 6, 4), (4, 2, 2), True, "channels_first"),
    ],
)
def test_whole_factors_are_max_pooling(
    rng, spatial, outputs, pseudo_random, data_format
):
    # Every dim shrinks by a whole factor k: Graham's increments are all
    # k, so each region is k cells whatever is drawn, as max pooling with
    # window and stride k has them; ties (few distinct values) give the
    # gradient to the same cell.
    rank = len(spatial)
    x = rng.integers(0, 3, (2, 3, *spatial)).astype("float32")
    x = from_channels_first(x, data_format)
    factors = tuple(n // m for n, m in zip(spatial, outputs, strict=True))

    class Pool(keras.layers.Layer):
        def call(self, x):
            return kpool.ops.fractional_max_pool(
                x,
                output_size=outputs,
                pseudo_random=pseudo_random,
                seed=keras.random.SeedGenerator(2),
                data_format=data_format,
            )

    class MaxPool(keras.layers.Layer):
        def call(self, x):
            return keras.ops.max_pool(
                x, factors, factors, "valid", data_format=data_format
            )

    shape = (2, *outputs, 3) if data_format == "channels_last" else None
    shape = shape or (2, 3, *outputs)
    upstream = rng.uniform(1, 2, shape).astype("float32")
    values, gradient, _ = layer_gradients(Pool(), x, upstream)
    expected, expected_gradient, _ = layer_gradients(MaxPool(), x, upstream)
    np.testing.assert_array_equal(values, expected)
    np.testing.assert_array_equal(gradient, expected_gradient)
    # Graham's regions, one window at a time (NumPy), for drawn sequences;
    # overlapping ones are k + 1 cells, all but the last.
    samples = rng.uniform(size=(2, 3, rank)).astype("float32")
    for overlapping in (False, True):
        assert_graham_regions(x, outputs, samples, overlapping, data_format)
