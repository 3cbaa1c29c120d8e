"""TreePooling1D/2D/3D (Lee, Gallagher and Tu, 2016)."""

import itertools

import keras
import numpy as np
import pytest
from absl.testing import parameterized
from keras.src import testing

from kpool import backend, layers, ops
from kpool.ops.windows import Window

from .assertions import (
    assert_jit_matches_eager,
    assert_keras_file_round_trip,
    gradients,
    numeric,
    sample,
    to_format,
    windows,
)
from .fast_paths import skip_without_fast_path
from .gradients import layer_gradients

TREES = {
    1: layers.TreePooling1D,
    2: layers.TreePooling2D,
    3: layers.TreePooling3D,
}
SPATIAL = {1: (7,), 2: (7, 6), 3: (5, 6, 5)}
FORMATS = ("channels_last", "channels_first")


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def tree(region, leaves, gates, node=1):
    """The paper's recursion, written as recursion.

    `region` is `(..., K, C)`; `leaves` `(K, L, C)`, `gates` `(K, L - 1, C)`
    (shared kernels broadcast to every channel first). Node `m >= L` is
    leaf `m - L`; otherwise `g_m = sigmoid(w_{m-1} . x)` mixes nodes `2m`
    and `2m + 1`.
    """
    num_leaves = leaves.shape[1]
    if node >= num_leaves:
        return (region * leaves[:, node - num_leaves]).sum(axis=-2)
    gate = sigmoid((region * gates[:, node - 1]).sum(axis=-2))
    left = tree(region, leaves, gates, 2 * node)
    right = tree(region, leaves, gates, 2 * node + 1)
    return gate * left + (1 - gate) * right


def tree_pool(x, leaves, gates, pool_size, strides, padding, data_format):
    """Tree pooling in NumPy: padded cells read as zeros."""
    region = np.nan_to_num(windows(x, pool_size, strides, padding, data_format))
    channels = region.shape[-1]
    if leaves.ndim == 2:
        leaves = np.repeat(leaves[..., None], channels, axis=-1)
        gates = np.repeat(gates[..., None], channels, axis=-1)
    return to_format(tree(region, leaves, gates), data_format)


def random_kernels(rng, cells, depth, channels=None):
    leaves = 2 ** (depth - 1)
    extra = () if channels is None else (channels,)
    leaf = rng.normal(size=(cells, leaves, *extra)).astype("float32")
    gate = rng.normal(size=(cells, leaves - 1, *extra)).astype("float32")
    return leaf, gate


CASES = [
    pytest.param(*case, id="{}d-{}-{}-depth{}-{}".format(*case))
    for case in itertools.product(
        (1, 2, 3), ("valid", "same"), FORMATS, (1, 2, 3), ("layer", "channel")
    )
    if case[0] == 2 or case[3] == 2
]


@pytest.mark.parametrize(
    "rank, padding, data_format, depth, granularity", CASES
)
def test_matches_the_recursion(
    rng, rank, padding, data_format, depth, granularity
):
    args = {
        "pool_size": (3,) * rank,
        "strides": (2,) * rank,
        "padding": padding,
        "data_format": data_format,
    }
    x = sample(rng, rank, data_format, SPATIAL[rank])
    layer = TREES[rank](**args, depth=depth, granularity=granularity)
    layer.build(x.shape)
    channels = 3 if granularity == "channel" else None
    leaf, gate = random_kernels(rng, 3**rank, depth, channels)
    layer.leaf_kernels.assign(leaf)
    if depth > 1:
        layer.gate_kernels.assign(gate)
    outputs = numeric(layer(x))
    assert outputs.shape == layer.compute_output_shape(x.shape)
    expected = tree_pool(x, leaf, gate, **args)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_gradients_reach_the_leaves_and_the_gates(rng, granularity):
    # Against central differences of the NumPy recursion in float64.
    args = {
        "pool_size": (2, 2),
        "strides": (2, 2),
        "padding": "same",
        "data_format": "channels_last",
    }
    x = sample(rng, 2, "channels_last", (5, 4))
    layer = layers.TreePooling2D(**args, depth=3, granularity=granularity)
    layer.build(x.shape)
    channels = 3 if granularity == "channel" else None
    leaf, gate = random_kernels(rng, 4, 3, channels)
    layer.leaf_kernels.assign(leaf)
    layer.gate_kernels.assign(gate)
    upstream = rng.uniform(0.5, 1.5, layer.compute_output_shape(x.shape))
    _, _, (leaf_gradient, gate_gradient) = gradients(
        layer, x, upstream.astype("float32")
    )

    def loss(leaf, gate):
        return (upstream * tree_pool(x, leaf, gate, **args)).sum()

    step = 1e-6
    for kernels, gradient, index in (
        ((leaf, gate), leaf_gradient, 0),
        ((leaf, gate), gate_gradient, 1),
    ):
        expected = np.zeros(kernels[index].shape)
        for position in np.ndindex(expected.shape):
            moved = [k.astype("float64") for k in kernels]
            moved[index][position] += step
            up = loss(*moved)
            moved[index][position] -= 2 * step
            expected[position] = (up - loss(*moved)) / (2 * step)
        assert np.abs(expected).max() > 1e-2  # the check is not vacuous
        np.testing.assert_allclose(gradient, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "rank, pool_size, padding, data_format, granularity",
    [
        (1, 3, "same", "channels_first", "layer"),
        (2, 2, "valid", "channels_last", "layer"),
        (2, 3, "same", "channels_last", "channel"),
        (2, 3, "valid", "channels_first", "channel"),
        # 25 cells: past `MAX_SLOTTED_CELLS`, the keras.ops form contracts.
        (2, 5, "same", "channels_first", "layer"),
        (3, 2, "same", "channels_last", "channel"),
    ],
)
def test_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, pool_size, padding, data_format, granularity
):
    # Values and the gradients of the input, the leaves and the gates.
    window = Window(rank, pool_size, 2, padding, data_format)
    skip_without_fast_path("window_responses", window)
    x = sample(rng, rank, data_format, SPATIAL[rank])
    layer = TREES[rank](
        pool_size, 2, padding, data_format, depth=3, granularity=granularity
    )
    layer.build(x.shape)
    channels = 3 if granularity == "channel" else None
    leaf, gate = random_kernels(rng, pool_size**rank, 3, channels)
    layer.leaf_kernels.assign(leaf)
    layer.gate_kernels.assign(gate)
    upstream = rng.uniform(1, 2, layer.compute_output_shape(x.shape))
    upstream = upstream.astype("float32")
    outputs, x_gradient, (leaf_gradient, gate_gradient) = layer_gradients(
        layer, x, upstream
    )
    with monkeypatch.context() as patch:
        patch.setattr(backend, "fast_path", lambda *args, **kwargs: None)
        expected = layer_gradients(layer, x, upstream)
    for got, want in zip(
        (outputs, x_gradient, leaf_gradient, gate_gradient),
        (*expected[:2], *expected[2]),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        outputs,
        tree_pool(
            x,
            leaf,
            gate,
            (pool_size,) * rank,
            (2,) * rank,
            padding,
            data_format,
        ),
        rtol=1e-5,
        atol=1e-5,
    )


def test_op_example_and_depth_one():
    x = np.array([1.0, 3.0, 2.0, 2.0], "float32").reshape(1, 4, 1)
    leaves = np.array([[1.0, 0.5], [0.0, 0.5]], "float32")
    outputs = ops.tree_pool(
        x, 2, leaf_kernels=leaves, gate_kernels=np.zeros((2, 1))
    )
    np.testing.assert_allclose(numeric(outputs).ravel(), [1.5, 2.0], rtol=1e-6)
    # One leaf, no gate: a learned linear pooling filter.
    outputs = ops.tree_pool(x, 2, leaf_kernels=leaves[:, :1])
    np.testing.assert_allclose(numeric(outputs).ravel(), [1.0, 2.0], rtol=1e-6)


def test_initial_weights_and_their_shapes():
    layer = layers.TreePooling2D(3, 2, granularity="channel")
    layer.build((None, 8, 8, 5))
    assert layer.leaf_kernels.shape == (9, 2, 5)
    assert layer.gate_kernels.shape == (9, 1, 5)
    leaves = numeric(layer.leaf_kernels)
    assert leaves.min() >= 0 and leaves.max() <= 2 / 9
    np.testing.assert_array_equal(numeric(layer.gate_kernels), 0)
    shared = layers.TreePooling2D(2, depth=3)
    shared.build((None, 8, 8, 5))
    assert [w.shape for w in shared.weights] == [(4, 4), (4, 3)]
    assert (
        len(layers.TreePooling2D(2, depth=1)(np.ones((1, 4, 4, 1))).shape) == 4
    )


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"pool_size": 0}, "pool_size"),
        ({"strides": (1, 2, 3)}, "strides"),
        ({"padding": "full"}, "padding"),
        ({"data_format": "NHWC"}, "data_format"),
        ({"depth": 0}, "depth"),
        ({"depth": 5}, "depth"),
        ({"depth": 2.0}, "depth"),
        ({"granularity": "region"}, "granularity"),
    ],
)
def test_errors_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        layers.TreePooling2D(**kwargs)


def test_op_checks_its_kernels():
    x = np.zeros((1, 4, 4, 2), "float32")
    with pytest.raises(ValueError, match="`leaf_kernels`"):
        ops.tree_pool(x, 2)
    with pytest.raises(ValueError, match="`leaf_kernels`"):
        ops.tree_pool(x, 2, leaf_kernels=np.zeros((4, 3)))  # not a power of 2
    with pytest.raises(ValueError, match="`leaf_kernels`"):
        ops.tree_pool(x, 2, leaf_kernels=np.zeros((9, 2)))
    with pytest.raises(ValueError, match="`gate_kernels`"):
        ops.tree_pool(x, 2, leaf_kernels=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="`gate_kernels`"):
        ops.tree_pool(
            x,
            2,
            leaf_kernels=np.zeros((4, 2, 2)),
            gate_kernels=np.zeros((4, 1)),
        )


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_keras_file_round_trip_and_jit(rng, tmp_path, rank):
    kwargs = {"pool_size": 3, "strides": 2, "padding": "same", "depth": 3}
    x = sample(rng, rank, "channels_last", SPATIAL[rank])
    layer = TREES[rank](
        **kwargs, granularity="channel", gate_initializer="ones"
    )
    assert_keras_file_round_trip(layer, x, tmp_path, rtol=1e-5)
    assert_jit_matches_eager(layer, x)


def test_mixed_precision_matches_float32(rng):
    x = sample(rng, 2, "channels_last", (7, 6))
    mixed = layers.TreePooling2D(3, 2, "same", dtype="mixed_float16")
    float32 = layers.TreePooling2D(3, 2, "same")
    outputs = mixed(x)
    float32.build(x.shape)
    for source, target in zip(mixed.weights, float32.weights, strict=True):
        assert keras.backend.standardize_dtype(source.dtype) == "float32"
        target.assign(source)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float16"
    np.testing.assert_allclose(
        numeric(outputs).astype("float32"),
        numeric(float32(x)),
        rtol=2e-3,
        atol=2e-3,
    )


class TreePoolingContractTest(testing.TestCase):
    @parameterized.parameters(
        (1, 2, "layer", "channels_last", (2, 7, 3), (2, 3, 3), 2),
        (2, 2, "channel", "channels_first", (2, 3, 7, 6), (2, 3, 3, 3), 2),
        (2, 3, "layer", "channels_last", (2, 7, 6, 3), (2, 3, 3, 3), 2),
        (2, 1, "layer", "channels_last", (2, 7, 6, 3), (2, 3, 3, 3), 1),
        (3, 2, "channel", "channels_last", (2, 5, 6, 5, 3), (2, 2, 3, 2, 3), 2),
    )
    def test_tree_pooling(
        self,
        rank,
        depth,
        granularity,
        data_format,
        shape,
        output_shape,
        weights,
    ):
        self.run_layer_test(
            TREES[rank],
            init_kwargs={
                "pool_size": 2,
                "strides": 2,
                "padding": "valid",
                "data_format": data_format,
                "depth": depth,
                "granularity": granularity,
            },
            input_shape=shape,
            expected_output_shape=output_shape,
            expected_num_trainable_weights=weights,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=False,
        )


def test_a_fit_step_moves_the_leaves_and_the_gates(rng):
    x = sample(rng, 2, "channels_last", (8, 8), batch=16, channels=2)
    target = rng.normal(size=(16, 4, 4, 2)).astype("float32")
    layer = layers.TreePooling2D(2, granularity="channel")
    model = keras.Sequential([keras.Input((8, 8, 2)), layer])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = [numeric(w).copy() for w in layer.weights]
    model.fit(x, target, epochs=1, batch_size=16, verbose=0)
    for start, weight in zip(before, layer.weights, strict=True):
        assert not np.allclose(start, numeric(weight))
