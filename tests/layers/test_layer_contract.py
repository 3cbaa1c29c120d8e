"""The Keras layer contract, for every kpool layer on the current backend."""

import inspect

import keras
import numpy as np
import pytest
from absl.testing import parameterized
from keras.src import testing

from kpool import layers

from .cases import LAYER_CASES, input_shape, layers_of_rank


def keras_counterpart(cls, kwargs):
    """The built-in pooling whose output shape the layer must share."""
    rank = cls.num_spatial_dims
    if cls.__name__.startswith("Global"):
        return getattr(keras.layers, f"GlobalMaxPooling{rank}D")(**kwargs)
    window_kwargs = {
        key: kwargs[key]
        for key in ("pool_size", "strides", "padding", "data_format")
        if key in kwargs
    }
    return getattr(keras.layers, f"MaxPooling{rank}D")(**window_kwargs)


def inputs_for(cls, data_format="channels_last"):
    """4 examples of normal values for `cls`."""
    shape = input_shape(cls.num_spatial_dims, data_format, batch=4)
    return np.random.default_rng(0).standard_normal(shape).astype("float32")


@pytest.mark.parametrize("cls, kwargs", LAYER_CASES)
def test_config_round_trip(cls, kwargs):
    layer = cls(**kwargs, name="pooling")
    config = layer.get_config()
    init_arguments = set(inspect.signature(cls.__init__).parameters)
    assert init_arguments - {"self", "kwargs"} <= set(config)
    assert cls.from_config(config).get_config() == config
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is cls
    assert restored.get_config() == config


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("cls, kwargs", LAYER_CASES)
def test_symbolic_call_shape_matches_keras_builtin(
    cls, kwargs, data_format, padding
):
    kwargs = {**kwargs, "data_format": data_format}
    if "padding" in kwargs:
        kwargs["padding"] = padding
    shape = (None, *input_shape(cls.num_spatial_dims, data_format)[1:])
    outputs = cls(**kwargs)(keras.Input(batch_shape=shape))
    expected = keras_counterpart(cls, kwargs).compute_output_shape(shape)
    assert tuple(outputs.shape) == tuple(expected)
    assert cls(**kwargs).compute_output_shape(shape) == tuple(expected)


@pytest.mark.parametrize("cls, kwargs", LAYER_CASES)
def test_eager_call_honours_training_flag(cls, kwargs):
    x = inputs_for(cls)
    layer = cls(**kwargs)
    inference = keras.ops.convert_to_numpy(layer(x))
    assert inference.shape == layer.compute_output_shape(x.shape)
    outputs = keras.ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_array_equal(outputs, inference)
    training = keras.ops.convert_to_numpy(layer(x, training=True))
    assert training.shape == inference.shape
    assert np.all(np.isfinite(training))
    if "seed" in kwargs:  # Random layers sample in training only.
        assert not np.allclose(training, inference)
    else:
        np.testing.assert_allclose(training, inference)


def fit_one_step(model, x, jit_compile):
    """Fits one epoch and checks that every trainable weight moved."""
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit_compile)
    before = [w.numpy() for w in model.trainable_weights]
    # 4 examples in batches of 3: the second batch has another size.
    targets = np.ones((4, 2), "float32")
    history = model.fit(x, targets, batch_size=3, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for old, new in zip(before, model.trainable_weights, strict=True):
        assert not np.array_equal(old, new.numpy()), new


# One model per rank holding all its layers keeps the compile time down.
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fit_step_in_sequential_model(rank):
    # "same" windows with stride 2 shrink 17 to 9, 5, 3, 2, 1: each layer
    # stacks on the previous one, and the learned and gated poolings still
    # see windows of several cells, where max and average differ.
    x = np.random.default_rng(0).standard_normal((4, *(17,) * rank, 3))
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            *layers_of_rank(rank),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    fit_one_step(model, x.astype("float32"), jit_compile="auto")


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fit_step_in_jit_compiled_functional_model(rank):
    if keras.backend.backend() == "torch" and rank > 1:
        # The layers share their code across ranks, so the 1D model covers
        # torch.compile; compiling the 2D and 3D ones takes minutes on CPU.
        pytest.skip("torch.compile is tested on the 1D layers only")
    x = inputs_for(getattr(layers, f"MinPooling{rank}D"))
    inputs = keras.Input(x.shape[1:])
    branches = [
        keras.layers.Flatten()(pooling(inputs))
        for pooling in layers_of_rank(rank)
    ]
    outputs = keras.layers.Dense(2)(keras.layers.Concatenate()(branches))
    fit_one_step(keras.Model(inputs, outputs), x, jit_compile=True)


# The Keras poolings a layer runs in the compute dtype, and those that
# TensorFlow and torch have no CPU kernel for in a half-precision dtype.
BUILTINS_USED = {
    "MinPooling": ("MaxPooling",),
    "MixedPooling": ("MaxPooling", "AveragePooling"),
}
CPU_KERNEL_GAPS = {
    ("tensorflow", "mixed_float16", "MaxPooling3D"),
    ("torch", "mixed_float16", "AveragePooling3D"),
    ("torch", "mixed_bfloat16", "AveragePooling3D"),
}


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("cls, kwargs", LAYER_CASES)
def test_mixed_precision_output_dtype(cls, kwargs, policy):
    x = inputs_for(cls)
    for builtin in BUILTINS_USED.get(cls.__name__[:-2], ()):
        builtin = f"{builtin}{cls.num_spatial_dims}D"
        if (keras.backend.backend(), policy, builtin) in CPU_KERNEL_GAPS:
            pytest.skip(
                f"keras.layers.{builtin} fails under {policy} on this "
                "backend's CPU too: it has no kernel for that dtype"
            )
    layer = cls(**kwargs, dtype=policy)
    reference = cls(**kwargs)(x)
    for training in (False, True):
        outputs = layer(x, training=training)
        dtype = keras.backend.standardize_dtype(outputs.dtype)
        assert dtype == layer.compute_dtype
    outputs = keras.ops.convert_to_numpy(keras.ops.cast(layer(x), "float32"))
    np.testing.assert_allclose(
        outputs, keras.ops.convert_to_numpy(reference), rtol=0.05, atol=0.05
    )


LAYER_CASES_PLAIN = [tuple(case.values) for case in LAYER_CASES]


class KerasLayerTest(testing.TestCase):
    """Keras's own layer test, as Keras runs it on `MaxPooling2D`."""

    @parameterized.parameters(*LAYER_CASES_PLAIN)
    def test_run_layer_test(self, cls, kwargs):
        stateless = kwargs.get("mode") not in ("learned", "gated")
        rank = cls.num_spatial_dims
        shape = input_shape(rank, "channels_last", batch=2)
        outputs = cls(**kwargs).compute_output_shape(shape)
        weights = {"learned": 1, "gated": 1}.get(kwargs.get("mode"), 0)
        self.run_layer_test(
            cls,
            init_kwargs=kwargs,
            input_shape=shape,
            expected_output_shape=outputs,
            expected_num_trainable_weights=weights,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=1 if "seed" in kwargs else 0,
            supports_masking=False,
            # Random layers: Keras's check compares two calls in training.
            run_training_check=not stateless or "seed" not in kwargs,
            assert_built_after_instantiation=stateless,
            # TensorFlow and torch lack float16 3D pooling kernels on CPU
            # (CPU_KERNEL_GAPS); test_mixed_precision_output_dtype covers
            # the rest.
            run_mixed_precision_check=rank < 3,
        )
