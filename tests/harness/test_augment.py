import collections
import itertools
import math

import keras
import numpy as np
import pytest
from keras import ops

from kpool.harness.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_VARIANCE,
    RandomCropFlip,
)


def reference_augmentations(image, padding, flip=True):
    """Maps every crop/flip of a channels_last `image` to its (dy, dx, flip).

    Built the textbook way: zero-pad, slice the window, mirror.
    """
    height, width = image.shape[:2]
    padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)])
    shifts = range(-padding, padding + 1)
    outcomes = {}
    for dy, dx, mirrored in itertools.product(
        shifts, shifts, (False, True) if flip else (False,)
    ):
        top, left = padding + dy, padding + dx
        crop = padded[top : top + height, left : left + width]
        if mirrored:
            crop = crop[:, ::-1]
        outcomes[np.ascontiguousarray(crop).tobytes()] = (dy, dx, mirrored)
    return outcomes


def identify(outputs, images, padding, flip=True):
    """The (dy, dx, flip) of each output; fails if one is no such crop."""
    found = []
    references = {}
    for output, image in zip(outputs, images, strict=True):
        if image.tobytes() not in references:
            references[image.tobytes()] = reference_augmentations(
                image, padding, flip
            )
        outcomes = references[image.tobytes()]
        key = np.ascontiguousarray(output).tobytes()
        assert key in outcomes, "output is not a padded crop/flip of its input"
        found.append(outcomes[key])
    return found


def chi_square_quantile(dof, z):
    """Wilson-Hilferty approximation of the chi-square upper quantile."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def test_offsets_and_flips_are_uniform():
    padding = 4
    # Distinct pixel values make every (dy, dx, flip) give a distinct crop.
    image = np.arange(1, 12 * 12 + 1, dtype="float32").reshape(12, 12, 1)
    outcomes = (2 * padding + 1) ** 2 * 2
    draws_per_outcome = 60
    images = np.repeat(image[None], outcomes * draws_per_outcome, axis=0)
    layer = RandomCropFlip(padding=padding, seed=7)
    outputs = ops.convert_to_numpy(layer(images, training=True))

    counts = collections.Counter(identify(outputs, images, padding))
    assert len(counts) == outcomes
    # Under uniform draws the counts are multinomial and Pearson's statistic
    # is chi-square with outcomes - 1 degrees of freedom; z = 4.75 puts the
    # false-alarm rate at 1e-6 (the threshold is ~261 for 161 dof).
    expected = draws_per_outcome
    statistic = sum((c - expected) ** 2 / expected for c in counts.values())
    assert statistic < chi_square_quantile(outcomes - 1, z=4.75)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("padding,flip", [(4, True), (2, False), (0, True)])
def test_outputs_are_crops_of_their_inputs(data_format, padding, flip):
    images = np.random.default_rng(0).integers(
        0, 256, (32, 10, 9, 3), dtype="uint8"
    )
    layer = RandomCropFlip(
        padding=padding, flip=flip, seed=1, data_format=data_format
    )
    if data_format == "channels_first":
        outputs = layer(np.transpose(images, (0, 3, 1, 2)), training=True)
        outputs = np.transpose(ops.convert_to_numpy(outputs), (0, 2, 3, 1))
    else:
        outputs = ops.convert_to_numpy(layer(images, training=True))
    assert outputs.dtype == np.uint8
    found = identify(outputs, images, padding, flip)
    if padding > 0:
        assert len({(dy, dx) for dy, dx, _ in found}) > 1
    if flip:
        assert {mirrored for *_, mirrored in found} == {False, True}


def test_identity_at_inference():
    images = np.random.default_rng(0).integers(
        0, 256, (4, 8, 8, 3), dtype="uint8"
    )
    layer = RandomCropFlip(seed=0)
    for outputs in (layer(images), layer(images, training=False)):
        np.testing.assert_array_equal(ops.convert_to_numpy(outputs), images)


def test_seeded_draws_are_reproducible_and_advance():
    images = np.random.default_rng(0).integers(
        0, 256, (16, 8, 8, 3), dtype="uint8"
    )

    def two_calls(seed):
        layer = RandomCropFlip(seed=seed)
        return [
            ops.convert_to_numpy(layer(images, training=True)) for _ in range(2)
        ]

    first, second = two_calls(3)
    again_first, again_second = two_calls(3)
    np.testing.assert_array_equal(first, again_first)
    np.testing.assert_array_equal(second, again_second)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, two_calls(4)[0])


def compiled_training_call(layer):
    """`layer(x, training=True)` compiled with the backend's own compiler."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        @jax.jit
        def step(state, images):
            return layer.stateless_call([], state, images, training=True)

        state = [v.value for v in layer.non_trainable_variables]

        def call(images):
            nonlocal state
            outputs, state = step(state, images)
            return outputs

        return call
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(
            lambda images: layer(images, training=True), jit_compile=True
        )
    pytest.skip(f"Keras does not compile by default on {backend}")


def test_compiled_call_draws_fresh_crops():
    images = np.random.default_rng(0).integers(
        0, 256, (16, 8, 8, 3), dtype="uint8"
    )
    layer = RandomCropFlip(seed=0)
    layer.build(images.shape)
    call = compiled_training_call(layer)
    first, second = (ops.convert_to_numpy(call(images)) for _ in range(2))
    identify(first, images, padding=4)
    identify(second, images, padding=4)
    # A seed frozen at trace time would repeat the same crops.
    assert not np.array_equal(first, second)


def test_trains_saves_and_loads_in_a_model(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 16, 16, 3), dtype="uint8")
    labels = rng.integers(0, 10, 32)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3), dtype="uint8"),
            RandomCropFlip(padding=2, seed=0),
            keras.layers.Normalization(
                mean=CIFAR10_MEAN, variance=CIFAR10_VARIANCE
            ),
            keras.layers.Conv2D(4, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile="auto",
    )
    history = model.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        restored.predict(images, verbose=0),
        model.predict(images, verbose=0),
        rtol=1e-6,
    )


def test_config_round_trip_and_symbolic_call():
    layer = RandomCropFlip(
        padding=3, flip=False, seed=5, data_format="channels_first"
    )
    config = layer.get_config()
    restored = RandomCropFlip.from_config(config)
    assert restored.get_config() == config
    assert (config["padding"], config["flip"], config["seed"]) == (3, False, 5)
    outputs = restored(keras.Input((3, 32, 32)))
    assert outputs.shape == (None, 3, 32, 32)


def test_float_inputs_keep_the_mixed_precision_dtype():
    layer = RandomCropFlip(seed=0, dtype="mixed_float16")
    images = np.random.default_rng(0).random((4, 8, 8, 3), dtype="float32")
    outputs = layer(images, training=True)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float16"


def test_normalization_constants_give_unit_scale():
    # `CIFAR10_VARIANCE` is what keras.layers.Normalization needs to divide
    # by CIFAR10_STD.
    layer = keras.layers.Normalization(
        mean=CIFAR10_MEAN, variance=CIFAR10_VARIANCE
    )
    pixel = (CIFAR10_MEAN + CIFAR10_STD).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(pixel)), 1.0, 1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"padding": -1}, "`padding` must be a non-negative int"),
        ({"padding": 2.0}, "`padding` must be a non-negative int"),
        ({"padding": True}, "`padding` must be a non-negative int"),
        ({"flip": "yes"}, "`flip` must be True or False"),
        ({"data_format": "NHWC"}, "`data_format` must be 'channels_last'"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomCropFlip(**kwargs)


def test_rejects_unbatched_inputs():
    with pytest.raises(ValueError, match="expects 4D inputs"):
        RandomCropFlip()(np.zeros((8, 8, 3), "uint8"), training=True)
