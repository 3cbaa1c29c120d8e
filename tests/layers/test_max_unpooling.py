import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from keras.src import testing

import kpool
from kpool import backend, layers

from .cases import input_shape, random_input
from .fast_paths import (
    assert_same_outputs_and_gradients,
    skip_without_fast_path,
)
from .gradients import layer_gradients
from .saving import assert_reloads_from_keras_file
from .torch_reference import from_channels_first, to_channels_first

DATA_FORMATS = ("channels_last", "channels_first")
# (pool, stride, padding): disjoint, overlapping, and "same" windows.
WINDOWS = [(2, 2, "valid"), (3, 2, "valid"), (3, 2, "same"), (2, 2, "same")]
CASES = [
    pytest.param(*window, data_format, id=f"{data_format}-{window}")
    for window in WINDOWS
    for data_format in DATA_FORMATS
]
TORCH_MAX_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def same_pads(spatial, pool, stride):
    pads = []
    for n in spatial:
        total = max((-(-n // stride) - 1) * stride + pool - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def torch_max_pool_with_indices(x, rank, pool, stride, padding):
    """torch's values and indices, padded as Keras pads, for `x` (N, C, ...).

    torch pads symmetrically only, so "same" pads with -inf explicitly and
    maps the indices of the padded input back to the input's.
    """
    spatial = x.shape[2:]
    pads = same_pads(spatial, pool, stride) if padding == "same" else []
    if pads:
        x = F.pad(
            x, [p for pair in reversed(pads) for p in pair], value=-np.inf
        )
    values, indices = TORCH_MAX_POOLS[rank](
        x, pool, stride, return_indices=True
    )
    if pads:
        coordinates = np.unravel_index(indices.numpy(), x.shape[2:])
        coordinates = [
            c - before for c, (before, _) in zip(coordinates, pads, strict=True)
        ]
        indices = torch.tensor(np.ravel_multi_index(coordinates, spatial))
    return values, indices


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("pool, stride, padding, data_format", CASES)
def test_argmax_values_and_indices_match_torch(
    rng, rank, pool, stride, padding, data_format
):
    x = random_input(rng, rank, data_format)
    values, indices = kpool.ops.max_pool_with_argmax(
        x, pool, stride, padding, data_format
    )
    x_torch = torch.tensor(to_channels_first(x, data_format).copy())
    expected, expected_indices = torch_max_pool_with_indices(
        x_torch, rank, pool, stride, padding
    )
    assert keras.backend.standardize_dtype(indices.dtype) == "int32"
    np.testing.assert_array_equal(
        values, from_channels_first(expected.numpy(), data_format)
    )
    np.testing.assert_array_equal(
        indices, from_channels_first(expected_indices.numpy(), data_format)
    )


@pytest.mark.parametrize("pool, stride, padding, data_format", CASES)
def test_unpooling_values_and_gradients_match_torch(
    rng, pool, stride, padding, data_format
):
    x = random_input(rng, 2, data_format)
    spatial = input_shape(2, "channels_last")[1:-1]
    values, indices = layers.MaxPoolingWithArgmax2D(
        pool, stride, padding, data_format=data_format
    )(x)
    values = keras.ops.convert_to_numpy(values)
    unpooling = layers.MaxUnpooling2D(
        pool, stride, padding, output_size=spatial, data_format=data_format
    )
    upstream = rng.uniform(1, 2, x.shape).astype("float32")
    outputs, gradient = unpool_gradients(unpooling, values, indices, upstream)

    values_torch = torch.tensor(
        to_channels_first(values, data_format).copy(), requires_grad=True
    )
    indices_torch = torch.tensor(
        to_channels_first(keras.ops.convert_to_numpy(indices), data_format)
        .astype("int64")
        .copy()
    )
    # torch's window only checks `output_size`; pick one that makes it the
    # default, as torch accepts sizes within a stride of its default only.
    pooled = values_torch.shape[2:]
    kernel = [
        n - (m - 1) * stride for n, m in zip(spatial, pooled, strict=True)
    ]
    expected = F.max_unpool2d(
        values_torch, indices_torch, kernel, stride, output_size=spatial
    )
    weights = torch.tensor(to_channels_first(upstream, data_format).copy())
    (expected * weights).sum().backward()
    np.testing.assert_allclose(
        gradient, from_channels_first(values_torch.grad.numpy(), data_format)
    )
    expected = from_channels_first(expected.detach().numpy(), data_format)
    if pool == stride:
        np.testing.assert_array_equal(outputs, expected)
    else:
        # A maximum shared by two windows is summed here, kept once by torch.
        np.testing.assert_allclose(
            outputs, numpy_unpool(values, indices, spatial, data_format)
        )


def numpy_unpool(values, indices, spatial, data_format):
    """Scatter-add of `values` at their flat spatial `indices`."""
    values = to_channels_first(values, data_format)
    indices = to_channels_first(
        keras.ops.convert_to_numpy(indices), data_format
    )
    result = np.zeros((*values.shape[:2], int(np.prod(spatial))), "float32")
    for b in range(values.shape[0]):
        for c in range(values.shape[1]):
            np.add.at(result[b, c], indices[b, c].ravel(), values[b, c].ravel())
    result = result.reshape((*values.shape[:2], *spatial))
    return from_channels_first(result, data_format)


def unpool_gradients(layer, values, indices, upstream):
    """`layer(values, indices)` and the gradient of `sum(upstream * it)`
    with respect to `values`, through a layer of two inputs."""

    class Bound(keras.layers.Layer):
        def call(self, inputs):
            return layer(inputs, indices)

    outputs, gradient, _ = layer_gradients(Bound(), values, upstream)
    return outputs, gradient


def test_argmax_gradient_reaches_each_maximum(rng):
    x = random_input(rng, 2, "channels_last")
    upstream = rng.uniform(1, 2, (2, 4, 3, 3)).astype("float32")

    class Values(keras.layers.Layer):
        def call(self, inputs):
            return kpool.ops.max_pool_with_argmax(inputs, 3, 2, "same")[0]

    _, gradient, _ = layer_gradients(Values(), x, upstream)
    x_torch = torch.tensor(np.moveaxis(x, -1, 1).copy(), requires_grad=True)
    expected, _ = torch_max_pool_with_indices(x_torch, 2, 3, 2, "same")
    (
        expected * torch.tensor(np.moveaxis(upstream, -1, 1).copy())
    ).sum().backward()
    np.testing.assert_allclose(
        gradient, np.moveaxis(x_torch.grad.numpy(), 1, -1), rtol=1e-6
    )


def argmax_indices_both_ways(monkeypatch, x, *args):
    """The indices of `max_pool_with_argmax`, by the fast path and by the
    keras.ops form."""
    fast = kpool.ops.max_pool_with_argmax(x, *args)[1]
    with monkeypatch.context() as patch:
        patch.setattr(backend, "fast_path", lambda *args, **kwargs: None)
        generic = kpool.ops.max_pool_with_argmax(x, *args)[1]
    for indices in (fast, generic):
        assert keras.backend.standardize_dtype(indices.dtype) == "int32"
    return keras.ops.convert_to_numpy(fast), keras.ops.convert_to_numpy(generic)


def assert_argmax_fast_path_matches(monkeypatch, rng, x, *args):
    assert_same_outputs_and_gradients(
        monkeypatch,
        lambda x: kpool.ops.max_pool_with_argmax(x, *args)[0],
        x,
        rng,
        rtol=0,
        atol=0,
    )
    np.testing.assert_array_equal(
        *argmax_indices_both_ways(monkeypatch, x, *args)
    )


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("pool, stride, padding, data_format", CASES)
def test_argmax_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, pool, stride, padding, data_format
):
    # torch's max pooling with indices, padded symmetrically (and one cell
    # more after by ceil_mode) where Keras pads "same".
    skip_without_fast_path("max_pool_with_argmax")
    x = random_input(rng, rank, data_format)
    assert_argmax_fast_path_matches(
        monkeypatch, rng, x, pool, stride, padding, data_format
    )


@pytest.mark.parametrize("size", [5, 6, 7, 8])
@pytest.mark.parametrize(
    "pool, stride", [(1, 2), (2, 2), (3, 2), (2, 3), (4, 3), (3, 1), (5, 2)]
)
def test_argmax_fast_path_pads_same_as_keras(
    monkeypatch, rng, size, pool, stride
):
    skip_without_fast_path("max_pool_with_argmax")
    x = rng.standard_normal((2, 3, size, size + 1)).astype("float32")
    assert_argmax_fast_path_matches(
        monkeypatch, rng, x, pool, stride, "same", "channels_first"
    )


def test_argmax_fast_path_takes_the_first_of_tied_maxima(monkeypatch, rng):
    skip_without_fast_path("max_pool_with_argmax")
    x = rng.integers(0, 3, (2, 7, 6, 3)).astype("float32")
    for padding in ("valid", "same"):
        np.testing.assert_array_equal(
            *argmax_indices_both_ways(
                monkeypatch, x, 3, 2, padding, "channels_last"
            )
        )


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("pool, stride, padding, data_format", CASES)
def test_unpool_fast_path_matches_keras_ops_form(
    monkeypatch, rng, rank, pool, stride, padding, data_format
):
    # One scatter_add per example and channel; maxima shared by
    # overlapping windows add up both ways.
    skip_without_fast_path("max_unpool")
    x = rng.integers(0, 4, input_shape(rank, data_format)).astype("float32")
    values, indices = kpool.ops.max_pool_with_argmax(
        x, pool, stride, padding, data_format
    )
    spatial = input_shape(rank, "channels_last")[1:-1]
    outputs = assert_same_outputs_and_gradients(
        monkeypatch,
        lambda values: kpool.ops.max_unpool(
            values,
            indices,
            pool,
            stride,
            padding,
            output_size=spatial,
            data_format=data_format,
        ),
        keras.ops.convert_to_numpy(values) + rng.uniform(0, 1, values.shape),
        rng,
    )
    assert outputs.shape == x.shape


@pytest.mark.parametrize("pool", [2, (3, 2)])
def test_tiled_unpool_fast_path_matches_keras_ops_form(monkeypatch, rng, pool):
    # Windows that tile the output: each value put in place where every
    # index is in its own window.
    skip_without_fast_path("tiled_unpool")
    x = rng.integers(0, 4, (2, 6, 8, 3)).astype("float32")
    values, indices = kpool.ops.max_pool_with_argmax(x, pool)
    moved = keras.ops.convert_to_numpy(values)
    moved = moved + rng.uniform(0, 1, values.shape)
    outputs = assert_same_outputs_and_gradients(
        monkeypatch,
        lambda values: kpool.ops.max_unpool(values, indices, pool),
        moved,
        rng,
    )
    np.testing.assert_allclose(
        outputs,
        numpy_unpool(moved, indices, (6, 8), "channels_last"),
        rtol=1e-6,
    )


def test_tiled_unpool_takes_an_index_outside_its_window():
    # In range but in another window (the op takes any index in range):
    # the sum into the flat output, traced and eagerly.
    values = np.arange(1, 5, dtype="float32").reshape(1, 2, 2, 1)
    indices = np.array([0, 2, 8, 0], "int32").reshape(1, 2, 2, 1)
    expected = numpy_unpool(values, indices, (4, 4), "channels_last")
    eager = kpool.ops.max_unpool(values, indices, 2)
    graph = traced(lambda v, i: kpool.ops.max_unpool(v, i, 2))(values, indices)
    for outputs in (eager, graph):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(outputs), expected
        )


def bad_indices(case):
    """Indices for a 2x2 pooling of a (1, 4, 4, 1) input: flat positions
    in its 16 cells, one of them bad as `case` says."""
    indices = np.array([0, 2, 8, 10], "int32").reshape(1, 2, 2, 1)
    if case == "too large":
        indices[0, 1, 1, 0] = 16
    elif case == "negative":
        indices[0, 0, 1, 0] = -1
    elif case == "float":
        indices = indices.astype("float32")
    return indices


@pytest.mark.parametrize(
    "case, message",
    [
        ("too large", r"`indices` must be in \[0, 16\).*from 0 to 16"),
        ("negative", r"`indices` must be in \[0, 16\).*from -1 to 10"),
        ("float", "`indices` must be an integer tensor.*float32"),
    ],
)
def test_bad_indices_raise_eagerly(case, message):
    values = np.ones((1, 2, 2, 1), "float32")
    indices = keras.ops.convert_to_tensor(bad_indices(case))
    with pytest.raises(ValueError, match=message):
        kpool.ops.max_unpool(values, indices, 2)
    with pytest.raises(ValueError, match=message):
        layers.MaxUnpooling2D(2)(values, indices)


def traced(function):
    """`function` traced as Keras traces a train step (on torch, as its
    ONNX export traces a model)."""
    backend_name = keras.backend.backend()
    if backend_name == "jax":
        import jax

        return jax.jit(function)
    if backend_name == "torch":

        def trace_and_run(*args):
            tensors = [torch.as_tensor(a) for a in args]
            graph = torch.jit.trace(function, tensors, check_trace=False)
            return graph(*tensors)

        return trace_and_run
    import tensorflow as tf

    return tf.function(function)


@pytest.mark.parametrize("case", ["too large", "negative"])
def test_out_of_range_indices_are_dropped_when_traced(case):
    values = np.arange(1, 5, dtype="float32").reshape(1, 2, 2, 1)
    indices = bad_indices(case)
    outputs = traced(lambda v, i: kpool.ops.max_unpool(v, i, 2))(
        values, indices
    )
    expected = np.zeros(16, "float32")
    for value, index in zip(values.ravel(), indices.ravel(), strict=True):
        if 0 <= index < 16:
            expected[index] += value
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(outputs), expected.reshape(1, 4, 4, 1)
    )


@pytest.mark.parametrize("case", ["in range", "too large"])
def test_known_indices_inside_a_traced_function(case):
    # A decoder whose indices are a constant the traced function closes
    # over: their values are known, so a bad one raises and a good one
    # unpools, as eagerly.
    values = np.arange(1, 5, dtype="float32").reshape(1, 2, 2, 1)
    if case == "in range":
        indices = np.array([0, 5, 10, 15], "int32").reshape(1, 2, 2, 1)
    else:
        indices = bad_indices(case)
    indices = keras.ops.convert_to_tensor(indices)
    unpool = traced(lambda v: kpool.ops.max_unpool(v, indices, 2))
    if case == "too large":
        if keras.backend.backend() == "torch":
            pytest.skip(
                "torch's tracer reads no values (an export): there a bad "
                "index is dropped, as test_out_of_range_indices_are_dropped_"
                "when_traced checks"
            )
        with pytest.raises(ValueError, match=r"`indices` must be in \[0, 16\)"):
            unpool(values)
        return
    expected = np.zeros(16, "float32")
    expected[[0, 5, 10, 15]] = [1, 2, 3, 4]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(unpool(values)), expected.reshape(1, 4, 4, 1)
    )


def test_float_indices_raise_when_traced():
    values = np.ones((1, 2, 2, 1), "float32")
    with pytest.raises(ValueError, match="`indices` must be an integer"):
        traced(lambda v, i: kpool.ops.max_unpool(v, i, 2))(
            values, bad_indices("float")
        )


def test_default_output_size_inverts_the_pooling():
    values = np.ones((1, 3, 4, 2), "float32")
    indices = np.zeros((1, 3, 4, 2), "int32")
    assert layers.MaxUnpooling2D(2)(values, indices).shape == (1, 6, 8, 2)
    assert layers.MaxUnpooling2D(3, 2)(values, indices).shape == (1, 7, 9, 2)
    assert layers.MaxUnpooling2D(3, 2, "same")(values, indices).shape == (
        1,
        6,
        8,
        2,
    )
    unpooling = layers.MaxUnpooling2D(2, output_size=(7, 9))
    assert unpooling(values, indices).shape == (1, 7, 9, 2)


def test_bad_output_size_and_indices_are_named():
    values = np.ones((1, 3, 4, 2), "float32")
    indices = np.zeros((1, 3, 4, 2), "int32")
    with pytest.raises(ValueError, match="`output_size` must be a size"):
        layers.MaxUnpooling2D(2, output_size=(8, 8))(values, indices)
    with pytest.raises(ValueError, match="`output_size`"):
        layers.MaxUnpooling2D(2, output_size=(0, 8))
    with pytest.raises(ValueError, match="`indices` must have the shape"):
        kpool.ops.max_unpool(values, indices[:, :2], 2)
    with pytest.raises(ValueError, match="`padding`"):
        layers.MaxPoolingWithArgmax2D(2, padding="full")
    with pytest.raises(ValueError, match="`inputs`"):
        kpool.ops.max_pool_with_argmax(np.ones((2, 4)), 2)


def segnet(data_format="channels_last"):
    """A SegNet-style encoder-decoder: pool indices go to the decoder."""
    shape = (9, 10, 3) if data_format == "channels_last" else (3, 9, 10)
    conv = {"padding": "same", "activation": "relu", "data_format": data_format}
    images = keras.Input(shape)
    x = keras.layers.Conv2D(8, 3, **conv)(images)
    x, indices = layers.MaxPoolingWithArgmax2D(2, data_format=data_format)(x)
    x = keras.layers.Conv2D(8, 3, **conv)(x)
    # The odd encoder map (9x10 pooled to 4x5) needs its size back.
    x = layers.MaxUnpooling2D(2, output_size=(9, 10), data_format=data_format)(
        x, indices
    )
    scores = keras.layers.Conv2D(4, 1, data_format=data_format)(x)
    return keras.Model(images, scores)


@pytest.mark.parametrize("data_format", DATA_FORMATS)
def test_segnet_trains_a_step_and_reloads(rng, tmp_path, data_format):
    if data_format == "channels_first" and keras.backend.backend() == (
        "tensorflow"
    ):
        pytest.skip("TensorFlow's CPU convolutions are channels_last only")
    model = segnet(data_format)
    x = rng.standard_normal((4, *model.input_shape[1:])).astype("float32")
    labels = np.eye(4, dtype="float32")[rng.integers(0, 4, (4, 9, 10))]
    if data_format == "channels_first":
        labels = np.moveaxis(labels, -1, 1)
    # Keras's torch sparse_categorical_crossentropy fails on maps (its
    # nll_loss gradient is not contiguous), and cross-entropies take the
    # classes last: a squared error on one-hot maps, in either layout.
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = [w.numpy() for w in model.trainable_weights]
    history = model.fit(x, labels, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(
        not np.array_equal(old, new.numpy())
        for old, new in zip(before, model.trainable_weights, strict=True)
    )
    assert_reloads_from_keras_file(model, x, tmp_path)


def test_jit_matches_eager(rng):
    model = segnet()
    x = rng.standard_normal((2, 9, 10, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    model.compile(jit_compile=True)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6
    )


class MaxUnpoolingContractTest(testing.TestCase):
    def test_argmax_layer_contract(self):
        for data_format, padding in [
            ("channels_last", "valid"),
            ("channels_first", "same"),
        ]:
            shape = input_shape(2, data_format)
            kwargs = {
                "pool_size": 3,
                "strides": 2,
                "padding": padding,
                "data_format": data_format,
            }
            output_shape, _ = layers.MaxPoolingWithArgmax2D(
                **kwargs
            ).compute_output_shape(shape)
            self.run_layer_test(
                layers.MaxPoolingWithArgmax2D,
                init_kwargs=kwargs,
                input_shape=shape,
                expected_output_shape=(output_shape, output_shape),
                expected_output_dtype=None,
                expected_num_trainable_weights=0,
                expected_num_non_trainable_weights=0,
                run_training_check=False,
                assert_built_after_instantiation=True,
            )


# run_layer_test builds a layer of several inputs with `build(**shapes)`,
# which a layer built at instantiation does not take: the same checks here.
@pytest.mark.parametrize(
    "data_format, padding",
    [("channels_last", "valid"), ("channels_first", "same")],
)
def test_unpooling_layer_contract(rng, data_format, padding):
    x = random_input(rng, 2, data_format)
    window = {"pool_size": 3, "strides": 2, "padding": padding}
    spatial = x.shape[1:-1] if data_format == "channels_last" else x.shape[2:]
    kwargs = {**window, "output_size": spatial, "data_format": data_format}
    layer = layers.MaxUnpooling2D(**kwargs)
    assert layer.built and not layer.weights
    config = layer.get_config()
    assert layers.MaxUnpooling2D.from_config(config).get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert restored.get_config() == config

    values, indices = layers.MaxPoolingWithArgmax2D(
        **window, data_format=data_format
    )(x)
    symbolic = [
        keras.Input(batch_shape=(None, *values.shape[1:])),
        keras.Input(batch_shape=(None, *values.shape[1:]), dtype="int32"),
    ]
    outputs = layer(*symbolic)
    assert tuple(outputs.shape) == (None, *x.shape[1:])
    assert layer.compute_output_shape(values.shape) == x.shape
    for policy in ("mixed_float16", "mixed_bfloat16"):
        half = layers.MaxUnpooling2D(**kwargs, dtype=policy)
        outputs = half(values, indices)
        assert keras.backend.standardize_dtype(outputs.dtype) == (
            half.compute_dtype
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(keras.ops.cast(outputs, "float32")),
            keras.ops.convert_to_numpy(layer(values, indices)),
            rtol=0.01,
        )
