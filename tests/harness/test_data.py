import os
import pickle
import tarfile
import time
from unittest import mock

import keras
import numpy as np
import pytest

from kpool.harness.config import ConfigError, config_from_dict
from kpool.harness.data import (
    DataFormatError,
    DataUnavailableError,
    load_dataset,
    synthetic_dataset,
)

BATCH_SIZE = 6  # images per fake CIFAR-10 batch file


def to_cifar_rows(images):
    # The documented layout: 1024 red values in row-major order, then 1024
    # green, then 1024 blue.
    return np.stack(
        [
            np.concatenate([image[:, :, c].ravel() for c in range(3)])
            for image in images
        ]
    )


def original_pickle(batch):
    # The archive was written with protocol 2 by NumPy 1, whose array
    # reconstructor lives in numpy.core (numpy._core in NumPy 2). Protocol 2
    # names globals in text lines, so the name can be swapped in place.
    return pickle.dumps(batch, protocol=2).replace(
        b"numpy._core.", b"numpy.core."
    )


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory):
    """A small CIFAR-10 in the original format: folder, archive, arrays."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    images = rng.integers(0, 256, (6, BATCH_SIZE, 32, 32, 3), dtype="uint8")
    labels = rng.integers(0, 10, (6, BATCH_SIZE))
    for name, batch_images, batch_labels in zip(
        names, images, labels, strict=True
    ):
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(label) for label in batch_labels],
            b"data": to_cifar_rows(batch_images),
            b"filenames": [b"x.png"] * BATCH_SIZE,
        }
        (folder / name).write_bytes(original_pickle(batch))
    (folder / "batches.meta").write_bytes(
        original_pickle({b"label_names": [b"class"] * 10})
    )
    archive = root / "archive" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return {
        "folder": folder,
        "archive": archive,
        "x_train": images[:5].reshape(-1, 32, 32, 3),
        "y_train": labels[:5].ravel(),
        "x_test": images[5],
        "y_test": labels[5],
    }


def assert_is_fake_cifar10(dataset, fake):
    assert dataset.name == "cifar10"
    assert dataset.num_classes == 10
    assert not dataset.fallback
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(dataset, key), fake[key])
    assert dataset.x_train.dtype == np.uint8
    assert dataset.y_train.dtype == np.int32
    assert dataset.x_train.flags.c_contiguous


@pytest.fixture
def nothing_cached(tmp_path, monkeypatch):
    """An empty Keras cache and tfds data_dir: CIFAR-10 is nowhere."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return str(tmp_path / "tfds")


@pytest.mark.parametrize(
    "where,kind",
    [
        ("archive", "archive"),
        ("archive_parent", "archive"),
        ("folder", "folder"),
        ("folder_parent", "folder"),
    ],
)
def test_cifar10_from_a_local_copy(fake_cifar10, where, kind):
    path = {
        "archive": fake_cifar10["archive"],
        "archive_parent": fake_cifar10["archive"].parent,
        "folder": fake_cifar10["folder"],
        "folder_parent": fake_cifar10["folder"].parent,
    }[where]
    dataset = load_dataset("cifar10", path=path)
    assert_is_fake_cifar10(dataset, fake_cifar10)
    assert dataset.source_note.startswith(f"{kind}:")


def test_cifar10_from_the_keras_cache(fake_cifar10, tmp_path, monkeypatch):
    # Where keras.datasets.cifar10.load_data() extracts it in Keras 3.
    target = tmp_path / "datasets" / "cifar-10-batches-py-target"
    target.mkdir(parents=True)
    os.symlink(fake_cifar10["folder"], target / "cifar-10-batches-py")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    dataset = load_dataset("cifar10", data_dir=str(tmp_path / "tfds"))
    assert_is_fake_cifar10(dataset, fake_cifar10)
    assert str(target) in dataset.source_note


def test_cifar10_folder_missing_a_batch(fake_cifar10, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        os.symlink(fake_cifar10["folder"] / name, folder / name)
    with pytest.raises(DataUnavailableError, match="lacks data_batch_3"):
        load_dataset("cifar10", path=folder)


class RunsACommand:
    """Unpickling it runs `touch <marker>`, as pickle.load would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_crafted_pickle_is_refused(fake_cifar10, tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        os.symlink(fake_cifar10["folder"] / name, folder / name)
    (folder / "data_batch_3").unlink()
    batch = {b"data": RunsACommand(marker), b"labels": [0]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch))
    # The crafted file does run the command under a plain pickle.load.
    with open(folder / "data_batch_3", "rb") as file:
        pickle.load(file)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(DataFormatError) as raised:
        load_dataset("cifar10", path=folder, fallback="synthetic")
    assert not marker.exists()
    message = str(raised.value)
    assert "data_batch_3 is not a CIFAR-10 batch" in message
    assert f"refused to load `{os.system.__module__}.system`" in message


def test_cifar10_crafted_archive_is_refused(tmp_path):
    marker = tmp_path / "ran"
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps(RunsACommand(marker), protocol=2))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batch, arcname="cifar-10-batches-py/data_batch_1")
    with pytest.raises(DataFormatError, match="refused to load"):
        load_dataset("cifar10", path=archive)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batch_in_any_pickle_protocol(fake_cifar10, tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(fake_cifar10["folder"] / name, "rb") as file:
            batch = pickle.load(file, encoding="bytes")
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    assert_is_fake_cifar10(load_dataset("cifar10", path=folder), fake_cifar10)


@pytest.mark.parametrize(
    "batch, received",
    [
        ([1, 2], "Received: list"),
        ({b"labels": [0]}, "b'data': NoneType"),
        (
            {b"data": np.zeros((1, 3072), "float32"), b"labels": [0]},
            "b'data': array (1, 3072) float32",
        ),
        (
            {b"data": np.zeros((2, 3072), "uint8"), b"labels": [0, 10]},
            "b'labels': list of 2",
        ),
    ],
)
def test_cifar10_batch_of_the_wrong_shape(tmp_path, batch, received):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataFormatError) as raised:
        load_dataset("cifar10", path=folder)
    assert "expected a dict with b'data', a uint8 array (N, 3072)" in str(
        raised.value
    )
    assert received in str(raised.value)


def test_cifar10_unavailable_fails_fast_with_instructions(nothing_cached):
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError) as raised:
        load_dataset("cifar10", data_dir=nothing_cached)
    # No download is attempted: offline, tfds retries for minutes.
    assert time.perf_counter() - start < 60
    message = str(raised.value)
    for how_to in (
        "--set data.path=",
        "keras.datasets.cifar10.load_data()",
        "--set data.download=true",
        "--set data.source=synthetic",
    ):
        assert how_to in message


def test_cifar10_bad_path_names_it(tmp_path):
    with pytest.raises(DataUnavailableError, match="`data.path`="):
        load_dataset("cifar10", path=tmp_path)


def test_cifar10_without_tfds_says_so(nothing_cached, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", None)
    with pytest.raises(DataUnavailableError, match="not importable"):
        load_dataset("cifar10", data_dir=nothing_cached, download=True)


def test_declared_fallback_is_loud_and_recorded(nothing_cached, capsys):
    dataset = load_dataset(
        "cifar10",
        data_dir=nothing_cached,
        fallback="synthetic",
        subset=20,
        test_subset=10,
    )
    assert dataset.name == "synthetic"
    assert dataset.fallback
    assert dataset.source_note.startswith("fallback: cifar10 unavailable (")
    assert dataset.x_train.shape == (20, 32, 32, 3)
    assert dataset.x_test.shape == (10, 32, 32, 3)
    stderr = capsys.readouterr().err
    assert "DATA FALLBACK" in stderr and "SYNTHETIC" in stderr


@pytest.fixture
def tfds():
    pytest.importorskip("tensorflow")
    return pytest.importorskip("tensorflow_datasets")


def test_tfds_download_only_when_asked(tfds, tmp_path, capsys):
    with tfds.testing.mock_data(num_examples=7):
        with pytest.raises(DataUnavailableError, match="data.download"):
            load_dataset("cifar10", path=None, data_dir=str(tmp_path))
        dataset = load_dataset("cifar10", data_dir=str(tmp_path), download=True)
        # Unbatched, through tfds.load: an independent read of the mock.
        expected = list(
            tfds.as_numpy(
                tfds.load(
                    "cifar10",
                    split="test",
                    as_supervised=True,
                    shuffle_files=False,
                )
            )
        )
    assert (
        "Downloading cifar10 with tensorflow-datasets"
        in capsys.readouterr().err
    )
    assert dataset.name == "cifar10"
    assert dataset.source_note.startswith("tfds:")
    assert dataset.num_classes == 10
    assert dataset.x_train.shape == (7, 32, 32, 3)
    assert dataset.x_train.dtype == np.uint8
    assert dataset.y_train.dtype == np.int32
    np.testing.assert_array_equal(
        dataset.x_test, np.stack([image for image, _ in expected])
    )
    np.testing.assert_array_equal(
        dataset.y_test, [label for _, label in expected]
    )


def test_tfds_download_failure_allows_the_fallback(tfds, tmp_path, capsys):
    failing = mock.patch.object(
        tfds.core.DatasetBuilder,
        "download_and_prepare",
        side_effect=ModuleNotFoundError(
            "No module named 'importlib_resources'"
        ),
    )
    with failing:
        dataset = load_dataset(
            "cifar10",
            data_dir=str(tmp_path),
            download=True,
            fallback="synthetic",
            subset=10,
            test_subset=10,
        )
    assert dataset.fallback
    assert (
        "download of cifar10 failed (ModuleNotFoundError" in dataset.source_note
    )
    assert "DATA FALLBACK" in capsys.readouterr().err


def test_tfds_prepared_is_read_without_download(tfds, capsys):
    prepared = mock.patch.object(
        tfds.core.DatasetBuilder, "is_prepared", return_value=True
    )
    with tfds.testing.mock_data(num_examples=5), prepared:
        dataset = load_dataset("cifar10", subset=3)
    assert "Downloading" not in capsys.readouterr().err
    assert dataset.x_train.shape == (3, 32, 32, 3)
    assert dataset.x_test.shape == (5, 32, 32, 3)


def write_npz(path, **changes):
    """A valid npz (8 + 4 RGB images, 7 classes) with `changes` applied."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (8, 16, 16, 3), dtype="uint8"),
        "y_train": np.array([0, 1, 2, 3, 4, 5, 6, 2]).reshape(8, 1),
        "x_test": rng.integers(0, 256, (4, 16, 16, 3), dtype="uint8"),
        "y_test": np.array([5, 6, 0, 1], dtype="int64"),
    }
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_npz_arrays(tmp_path):
    path = tmp_path / "digits.npz"
    arrays = write_npz(path)
    dataset = load_dataset("npz", path=str(path))
    assert dataset.name == "npz:digits.npz"
    assert dataset.source_note == f"npz:{path}"
    assert dataset.num_classes == 7
    np.testing.assert_array_equal(dataset.x_train, arrays["x_train"])
    np.testing.assert_array_equal(dataset.y_train, arrays["y_train"][:, 0])
    assert dataset.y_test.dtype == np.int32


def test_npz_missing_arrays(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4, 3), "uint8"))
    with pytest.raises(DataFormatError, match="lacks y_train, x_test, y_test"):
        load_dataset("npz", path=path)


@pytest.mark.parametrize(
    "changes, message",
    [
        # The case: grey images without a channel axis.
        (
            {"x_train": np.zeros((8, 28, 28), "uint8")},
            r"`x_train` .* must be uint8 images \(N, height, width, 3\).*"
            r"shape=\(8, 28, 28\).*repeat them into 3 channels",
        ),
        (
            {"x_test": np.zeros((4, 16, 16, 1), "uint8")},
            r"`x_test` .*shape=\(4, 16, 16, 1\).*repeat them into 3",
        ),
        (
            {"x_train": np.zeros((8, 16, 16, 3), "float32")},
            r"`x_train` .*dtype=float32.*np.round\(x \* 255\)",
        ),
        (
            {"x_train": np.zeros((8, 16, 16, 3), "int64")},
            r"`x_train` .*dtype=int64.*x.astype\(np.uint8\)",
        ),
        (
            {"x_test": np.zeros((4, 12, 16, 3), "uint8")},
            r"same image shape. Received: \(16, 16, 3\) and \(12, 16, 3\)",
        ),
        (
            {"y_train": np.zeros(7, "int64")},
            r"`y_train` .*must be 8 integer labels .*shape=\(7,\)",
        ),
        (
            {"y_test": np.zeros(4, "float32")},
            r"`y_test` .*must be 4 integer labels.*dtype=float32",
        ),
        (
            {"y_train": np.array([0, 1, -1, 2, 3, 4, 5, 6])},
            r"`y_train` .*labels 0..K-1. Received: a label -1",
        ),
        # Labels counted from 1: class 0 is empty.
        (
            {"y_train": np.array([1, 2, 3, 4, 5, 6, 7, 1])},
            r"`y_train` .*every class present.*K=8.*without an example: 0\.",
        ),
        (
            {"y_train": np.zeros(8, "int64"), "y_test": np.zeros(4, "int64")},
            r"K >= 2. Received: K=1",
        ),
        (
            {"y_test": np.array([0, 1, 7, 2])},
            r"`y_test` .*labels 0..6, the classes of `y_train`.*a label 7",
        ),
    ],
)
def test_npz_errors_name_the_array_and_the_format(tmp_path, changes, message):
    path = tmp_path / "bad.npz"
    write_npz(path, **changes)
    with pytest.raises(DataFormatError, match=message):
        load_dataset("npz", path=path)


def test_npz_object_array_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    labels = np.array([0, 1, "two", 3, 4, 5, 6, 2], dtype=object)
    write_npz(path, y_train=labels)
    with pytest.raises(
        DataFormatError, match="`y_train` in .* without pickles"
    ):
        load_dataset("npz", path=path)


def test_npz_that_is_a_pickle_or_one_array(tmp_path):
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"x_train": np.zeros(3)}))
    with pytest.raises(DataFormatError, match="is not a .npz archive"):
        load_dataset("npz", path=pickled)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 4, 4, 3), "uint8"))
    with pytest.raises(DataFormatError, match="holds one array"):
        load_dataset("npz", path=single)


def test_bad_npz_is_not_replaced_by_the_fallback(tmp_path, capsys):
    path = tmp_path / "grey.npz"
    write_npz(path, x_train=np.zeros((8, 28, 28), "uint8"))
    with pytest.raises(DataFormatError):
        load_dataset("npz", path=path, fallback="synthetic")
    assert "DATA FALLBACK" not in capsys.readouterr().err


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataUnavailableError, match="is not a file"):
        load_dataset("npz", path=tmp_path / "absent.npz")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"source": "imagenet"}, "`data.source` must be one of cifar10, "),
        ({"source": "npz"}, "`data.path` must be the path of an .npz file"),
        ({"fallback": "cifar10"}, "`data.fallback` must be None or"),
        ({"download": "yes"}, "`data.download` must be True or False"),
        ({"subset": 0}, "`data.subset` must be a positive int"),
        ({"subset": 2.5}, "`data.subset` must be a positive int"),
        ({"subset": True}, "`data.subset` must be a positive int"),
        ({"test_subset": -3}, "`data.test_subset` must be a positive int"),
        ({"image_size": 0}, "`data.image_size` must be a positive int"),
    ],
)
def test_invalid_arguments(kwargs, message):
    kwargs = {"source": "synthetic", **kwargs}
    with pytest.raises(ValueError, match=message):
        load_dataset(**kwargs)


@pytest.fixture
def indexed_npz(tmp_path):
    """20 images of each of 10 classes, in random order; pixel = index."""
    labels = np.random.default_rng(1).permutation(np.arange(200) % 10)
    images = np.repeat(np.arange(200).reshape(200, 1, 1, 1), 3, axis=-1)
    path = tmp_path / "indexed.npz"
    np.savez(
        path,
        x_train=images.astype("uint8"),
        y_train=labels,
        x_test=images[:100].astype("uint8"),
        y_test=labels[:100],
    )
    return path, labels


def test_subsets_are_seeded_and_class_balanced(indexed_npz):
    path, labels = indexed_npz
    dataset = load_dataset("npz", path=path, subset=50, test_subset=20, seed=3)
    assert np.bincount(dataset.y_train, minlength=10).tolist() == [5] * 10
    # Each kept image keeps its own label.
    index = dataset.x_train[:, 0, 0, 0]
    np.testing.assert_array_equal(dataset.y_train, labels[index])
    assert len(set(index)) == 50
    assert dataset.x_test.shape[0] == 20

    again = load_dataset("npz", path=path, subset=50, seed=3)
    np.testing.assert_array_equal(again.x_train, dataset.x_train)
    assert again.x_test.shape[0] == 100
    other = load_dataset("npz", path=path, subset=50, seed=4)
    assert not np.array_equal(other.x_train, dataset.x_train)


def test_subset_larger_than_the_data(indexed_npz):
    path, _ = indexed_npz
    with pytest.raises(ValueError, match="`data.subset` must be at most"):
        load_dataset("npz", path=path, subset=201)


def test_synthetic_is_deterministic_balanced_and_nested():
    dataset = synthetic_dataset(n_train=600, n_test=300, seed=5)
    assert dataset.name == "synthetic"
    assert dataset.num_classes == 10
    assert dataset.x_train.shape == (600, 32, 32, 3)
    assert dataset.x_train.dtype == np.uint8
    assert dataset.y_train.dtype == np.int32
    counts = np.bincount(dataset.y_train, minlength=10)
    assert counts.min() >= 55 and counts.max() <= 65

    again = synthetic_dataset(n_train=600, n_test=300, seed=5)
    np.testing.assert_array_equal(again.x_train, dataset.x_train)
    shorter = synthetic_dataset(n_train=100, n_test=300, seed=5)
    np.testing.assert_array_equal(shorter.x_train, dataset.x_train[:100])
    np.testing.assert_array_equal(shorter.x_test, dataset.x_test)
    other = synthetic_dataset(n_train=600, n_test=300, seed=6)
    assert not np.array_equal(other.x_train, dataset.x_train)

    loaded = load_dataset("synthetic", subset=600, test_subset=300, seed=5)
    np.testing.assert_array_equal(loaded.x_train, dataset.x_train)
    assert not loaded.fallback


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"n_train": 0}, "`n_train` must be an int >= 1"),
        ({"image_size": 4}, "`image_size` must be an int >= 8"),
        ({"num_classes": 1.0}, "`num_classes` must be an int >= 2"),
    ],
)
def test_synthetic_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_dataset(**kwargs)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="a property of the data, checked once on the backend that trains "
    "a CNN fastest on CPU (torch took ~30 s per epoch here)",
)
def test_synthetic_needs_a_cnn():
    dataset = synthetic_dataset(n_train=3000, n_test=1000, seed=0)
    x_train = dataset.x_train.reshape(3000, -1).astype("float32")
    x_test = dataset.x_test.reshape(1000, -1).astype("float32")

    # Not linearly trivial: the nearest class mean of the raw pixels is near
    # chance (0.1; 0.2 is ~10 binomial standard deviations above it).
    means = np.stack([x_train[dataset.y_train == c].mean(0) for c in range(10)])
    distances = ((x_test[:, None, :] - means[None]) ** 2).sum(-1)
    assert (distances.argmin(1) == dataset.y_test).mean() < 0.2

    # Learnable: a tiny CNN gets far above chance in a few epochs.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 64, offset=-2),
            keras.layers.Conv2D(16, 5, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        dataset.x_train.astype("float32"),
        dataset.y_train,
        batch_size=64,
        epochs=4,
        verbose=0,
    )
    logits = model(dataset.x_test.astype("float32"))
    predictions = np.argmax(keras.ops.convert_to_numpy(logits), axis=1)
    assert (predictions == dataset.y_test).mean() > 0.4


# CIFAR-100 from its python archive.

CIFAR100_TRAIN, CIFAR100_TEST = 12, 5  # images in the fake train / test


def cifar100_batch(images, fine, coarse, name):
    # The keys, types and order of the original archive's pickled dicts.
    return {
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
        b"batch_label": name.encode(),
        b"fine_labels": [int(label) for label in fine],
        b"coarse_labels": [int(label) for label in coarse],
        b"data": to_cifar_rows(images),
    }


def write_cifar100(root, drop=None):
    """A small CIFAR-100 in the original layout: `cifar-100-python/` with
    `train`, `test` and `meta`, and its .tar.gz. `drop`: a key left out of
    the `train` batch."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for split, count in (("train", CIFAR100_TRAIN), ("test", CIFAR100_TEST)):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype="uint8")
        fine = rng.integers(0, 100, count)
        coarse = rng.integers(0, 20, count)
        batch = cifar100_batch(images, fine, coarse, split)
        if split == "train" and drop is not None:
            del batch[drop]
        (folder / split).write_bytes(original_pickle(batch))
        arrays[split] = images, fine, coarse
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(original_pickle(meta))
    archive = root / "archive" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    return {"folder": folder, "archive": archive, **arrays}


@pytest.fixture(scope="module")
def fake_cifar100(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar100"))


def assert_is_fake_cifar100(dataset, fake, label_mode):
    column = {"fine": 1, "coarse": 2}[label_mode]
    assert dataset.name == f"cifar100-{label_mode}"
    assert dataset.num_classes == {"fine": 100, "coarse": 20}[label_mode]
    assert not dataset.fallback
    np.testing.assert_array_equal(dataset.x_train, fake["train"][0])
    np.testing.assert_array_equal(dataset.x_test, fake["test"][0])
    np.testing.assert_array_equal(dataset.y_train, fake["train"][column])
    np.testing.assert_array_equal(dataset.y_test, fake["test"][column])
    assert dataset.y_train.dtype == np.int32


@pytest.mark.parametrize("label_mode", [None, "fine", "coarse"])
@pytest.mark.parametrize("where", ["archive", "folder", "folder_parent"])
def test_cifar100_from_a_local_copy(fake_cifar100, where, label_mode):
    path = {
        "archive": fake_cifar100["archive"],
        "folder": fake_cifar100["folder"],
        "folder_parent": fake_cifar100["folder"].parent,
    }[where]
    dataset = load_dataset("cifar100", path=path, label_mode=label_mode)
    assert_is_fake_cifar100(dataset, fake_cifar100, label_mode or "fine")
    kind = "archive" if where == "archive" else "folder"
    assert dataset.source_note.startswith(f"{kind}:")


def test_cifar100_from_the_keras_cache(fake_cifar100, tmp_path, monkeypatch):
    # Where keras.datasets.cifar100.load_data() extracts it in Keras 3.
    target = tmp_path / "datasets" / "cifar-100-python-target"
    target.mkdir(parents=True)
    os.symlink(fake_cifar100["folder"], target / "cifar-100-python")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    dataset = load_dataset(
        "cifar100", data_dir=str(tmp_path / "tfds"), label_mode="coarse"
    )
    assert_is_fake_cifar100(dataset, fake_cifar100, "coarse")
    assert str(target) in dataset.source_note


@pytest.mark.parametrize(
    "drop, label_mode", [(b"fine_labels", None), (b"coarse_labels", "coarse")]
)
def test_cifar100_archive_missing_its_labels(tmp_path, drop, label_mode):
    fake = write_cifar100(tmp_path, drop=drop)
    with pytest.raises(DataFormatError) as raised:
        load_dataset("cifar100", path=fake["archive"], label_mode=label_mode)
    message = str(raised.value)
    assert "cifar-100-python/train is not a CIFAR-100 batch" in message
    assert f"{drop!r}, a list of N ints" in message
    assert f"{drop!r}: NoneType" in message


def test_cifar100_crafted_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    batch = {b"data": RunsACommand(marker), b"fine_labels": [0]}
    (folder / "train").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataFormatError, match="refused to load"):
        load_dataset("cifar100", path=folder, fallback="synthetic")
    assert not marker.exists()


def test_cifar100_unavailable_names_its_own_instructions(nothing_cached):
    with pytest.raises(DataUnavailableError) as raised:
        load_dataset("cifar100", data_dir=nothing_cached)
    message = str(raised.value)
    assert message.startswith("CIFAR-100 is not available")
    assert "keras.datasets.cifar100.load_data()" in message
    assert "cifar-100-python.tar.gz" in message


def test_cifar100_bad_path_names_it(fake_cifar10):
    with pytest.raises(DataUnavailableError, match="holds no CIFAR-100"):
        load_dataset("cifar100", path=fake_cifar10["folder"].parent)


# tensorflow-datasets: any image-classification set.


@pytest.fixture
def prepared(tfds):
    """tfds.testing.mock_data's sets, seen as prepared: read, never
    downloaded."""
    return mock.patch.object(
        tfds.core.DatasetBuilder, "is_prepared", return_value=True
    )


def read_unbatched(tfds, name, split):
    """An independent read of a mocked split, through tfds.load."""
    examples = tfds.as_numpy(tfds.load(name, split=split, shuffle_files=False))
    pairs = [(example["image"], example["label"]) for example in examples]
    return np.stack([i for i, _ in pairs]), np.array([lb for _, lb in pairs])


@pytest.mark.parametrize(
    "name, num_classes", [("cifar100", 100), ("svhn_cropped", 10)]
)
def test_tfds_image_set(tfds, prepared, tmp_path, name, num_classes):
    with tfds.testing.mock_data(num_examples=6):
        with pytest.raises(DataUnavailableError, match="data.download is"):
            load_dataset("tfds", name=name, data_dir=str(tmp_path))
        with prepared:
            dataset = load_dataset("tfds", name=name, subset=4)
        x_test, y_test = read_unbatched(tfds, name, "test")
    assert dataset.name == f"tfds:{name}"
    assert dataset.source_note.startswith("tfds:")
    assert dataset.num_classes == num_classes
    assert dataset.x_train.shape == (4, 32, 32, 3)
    assert dataset.x_train.dtype == np.uint8
    assert dataset.y_train.dtype == np.int32
    np.testing.assert_array_equal(dataset.x_test, x_test)
    np.testing.assert_array_equal(dataset.y_test, y_test)


def test_tfds_grey_images_become_rgb(tfds, prepared):
    with tfds.testing.mock_data(num_examples=3), prepared:
        dataset = load_dataset("tfds", name="mnist")
        x_test, _ = read_unbatched(tfds, "mnist", "test")
    assert dataset.x_test.shape == (3, 28, 28, 3)
    for channel in range(3):
        np.testing.assert_array_equal(
            dataset.x_test[..., channel], x_test[..., 0]
        )
    assert "grey images repeated into 3 channels" in dataset.source_note


def test_tfds_images_of_many_sizes_need_an_image_size(tfds, prepared):
    with tfds.testing.mock_data(num_examples=3), prepared:
        with pytest.raises(ValueError, match="`data.image_size` must be set"):
            load_dataset("tfds", name="tf_flowers")
        dataset = load_dataset("tfds", name="tf_flowers", image_size=12)
    assert dataset.name == "tfds:tf_flowers"
    assert dataset.num_classes == 5
    assert dataset.x_train.shape == (3, 12, 12, 3)


def test_tfds_unknown_name_fails_at_once(tfds, tmp_path):
    start = time.perf_counter()
    with pytest.raises(ValueError) as raised:
        load_dataset(
            "tfds", name="no_such_set", data_dir=str(tmp_path), download=True
        )
    # No download is attempted: offline, tfds retries for minutes.
    assert time.perf_counter() - start < 60
    message = str(raised.value)
    assert "`data.name` must name a tensorflow-datasets dataset" in message
    assert "no_such_set not found" in message
    assert "Received: data.name='no_such_set'" in message


def test_tfds_set_without_image_and_label_is_refused(tfds, tmp_path):
    with pytest.raises(ValueError) as raised:
        load_dataset(
            "tfds", name="imdb_reviews", data_dir=str(tmp_path), download=True
        )
    message = str(raised.value)
    assert "must name an image-classification dataset" in message
    assert "text (Text)" in message


@pytest.fixture(scope="module")
def train_only_tfds(tmp_path_factory):
    """A real tensorflow-datasets set, prepared on disk without network: 8
    images of 3 classes, a `train` split only."""
    pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")

    class KpoolTrainOnly(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(6, 5, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            )
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(8):
                image = np.full((6, 5, 3), 10 * i, dtype=np.uint8)
                yield i, {"image": image, "label": i % 3}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    KpoolTrainOnly(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_missing_test_split_names_the_splits(train_only_tfds):
    with pytest.raises(ValueError) as raised:
        load_dataset("tfds", name="kpool_train_only", data_dir=train_only_tfds)
    message = str(raised.value)
    assert (
        "`data.test_split` must be a split of tfds:kpool_train_only" in message
    )
    assert "which has train" in message
    assert "Received: data.test_split='test'" in message

    dataset = load_dataset(
        "tfds",
        name="kpool_train_only",
        data_dir=train_only_tfds,
        train_split="train[:6]",
        test_split="train[6:]",
    )
    assert dataset.x_train.shape == (6, 6, 5, 3)
    assert dataset.x_test.shape == (2, 6, 5, 3)
    # tfds stores the examples shuffled: the two slices split the 8.
    values = np.concatenate([dataset.x_train, dataset.x_test])[:, 0, 0, 0]
    assert sorted(values.tolist()) == list(range(0, 80, 10))
    np.testing.assert_array_equal(
        dataset.y_train, dataset.x_train[:, 0, 0, 0] // 10 % 3
    )


# A folder of images, one subfolder per class.

FOLDER_CLASSES = ("cat", "dog", "emu")


def write_png(path, array, mode=None):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def write_folder(root, counts=(3, 4, 5), size=(10, 12), seed=0):
    """PNGs in class subfolders (one nested deeper), with their pixels."""
    rng = np.random.default_rng(seed)
    images = {}
    for name, count in zip(FOLDER_CLASSES, counts, strict=True):
        for i in range(count):
            array = rng.integers(0, 256, (*size, 3), dtype="uint8")
            nested = "deeper/" if i == 0 else ""
            path = root / name / f"{nested}{i:02d}.png"
            write_png(path, array)
            images[str(path)] = array, FOLDER_CLASSES.index(name)
    return images


def by_pixels(dataset_images, dataset_labels, written):
    """Maps each loaded image to the written one it equals."""
    lookup = {array.tobytes(): label for array, label in written.values()}
    return [
        lookup.get(image.tobytes()) == label
        for image, label in zip(dataset_images, dataset_labels, strict=True)
    ]


def test_folder_with_a_test_folder(tmp_path):
    train = write_folder(tmp_path / "train")
    test = write_folder(tmp_path / "test", counts=(1, 1, 2), seed=1)
    # Not images: skipped, as image_dataset_from_directory skips them.
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    dataset = load_dataset(
        "folder", path=tmp_path / "train", test_path=tmp_path / "test"
    )
    assert dataset.name == "folder:train"
    assert dataset.num_classes == 3
    assert dataset.x_train.shape == (12, 10, 12, 3)
    assert dataset.x_test.shape == (4, 10, 12, 3)
    assert dataset.y_train.tolist() == [0] * 3 + [1] * 4 + [2] * 5
    assert all(by_pixels(dataset.x_train, dataset.y_train, train))
    assert all(by_pixels(dataset.x_test, dataset.y_test, test))
    assert dataset.source_note == (
        f"folder:{tmp_path / 'train'}; test: folder:{tmp_path / 'test'}"
    )


def test_folder_grey_palette_and_rgba_images_become_rgb(tmp_path):
    grey = np.arange(20, dtype="uint8").reshape(4, 5)
    write_png(tmp_path / "a" / "grey.png", grey, "L")
    write_png(tmp_path / "a" / "palette.png", grey, "L")
    from PIL import Image

    Image.open(tmp_path / "a" / "palette.png").convert("P").save(
        tmp_path / "a" / "palette.png"
    )
    rgba = np.dstack([np.repeat(grey[..., None], 3, -1), np.zeros_like(grey)])
    write_png(tmp_path / "b" / "rgba.png", rgba, "RGBA")
    write_png(tmp_path / "b" / "rgb.png", np.repeat(grey[..., None], 3, -1))
    dataset = load_dataset("folder", path=tmp_path, test_fraction=0.5)
    for image in [*dataset.x_train, *dataset.x_test]:
        for channel in range(3):
            np.testing.assert_array_equal(image[..., channel], grey)


def test_folder_held_out_fraction_is_seeded_and_per_class(tmp_path):
    written = write_folder(tmp_path, counts=(4, 6, 10))
    dataset = load_dataset("folder", path=tmp_path, test_fraction=0.25, seed=3)
    # round(0.25 * n) of each class: 1, 2 (1.5 rounds to even) and 2.
    assert np.bincount(dataset.y_test).tolist() == [1, 2, 2]
    assert np.bincount(dataset.y_train).tolist() == [3, 4, 8]
    assert all(by_pixels(dataset.x_train, dataset.y_train, written))
    assert all(by_pixels(dataset.x_test, dataset.y_test, written))
    kept = {image.tobytes() for image in [*dataset.x_train, *dataset.x_test]}
    assert len(kept) == 20
    assert "test: 0.25 of each class (seed 3)" in dataset.source_note

    again = load_dataset("folder", path=tmp_path, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.x_test, dataset.x_test)
    other = load_dataset("folder", path=tmp_path, test_fraction=0.25, seed=4)
    assert not np.array_equal(other.x_test, dataset.x_test)


def test_folder_images_of_many_sizes(tmp_path):
    write_png(tmp_path / "a" / "small.png", np.zeros((6, 6, 3), "uint8"))
    write_png(tmp_path / "a" / "x.png", np.zeros((6, 6, 3), "uint8"))
    write_png(tmp_path / "b" / "large.png", np.full((20, 16, 3), 200, "uint8"))
    write_png(tmp_path / "b" / "y.png", np.full((20, 16, 3), 200, "uint8"))
    with pytest.raises(DataFormatError) as raised:
        load_dataset("folder", path=tmp_path, test_fraction=0.5)
    message = str(raised.value)
    assert "must share one size, or set `data.image_size`" in message
    assert "(6, 6)" in message and "(20, 16)" in message
    assert "large.png" in message or "y.png" in message

    dataset = load_dataset(
        "folder", path=tmp_path, test_fraction=0.5, image_size=8
    )
    assert dataset.x_train.shape == (2, 8, 8, 3)
    # A constant image stays constant through the resize.
    assert set(np.unique(dataset.x_train).tolist()) == {0, 200}


def test_folder_is_read_without_tensorflow(tmp_path, monkeypatch):
    written = write_folder(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)
    dataset = load_dataset("folder", path=tmp_path, test_fraction=0.3)
    assert all(by_pixels(dataset.x_train, dataset.y_train, written))


def test_folder_reads_as_keras_image_dataset_from_directory(tmp_path):
    pytest.importorskip("tensorflow")
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "test", counts=(2, 1, 1), seed=1)
    dataset = load_dataset(
        "folder", path=tmp_path / "train", test_path=tmp_path / "test"
    )
    reference = keras.utils.image_dataset_from_directory(
        tmp_path / "train",
        image_size=(10, 12),
        shuffle=False,
        batch_size=None,
        verbose=False,
    )
    assert reference.class_names == list(FOLDER_CLASSES)
    pairs = [(np.asarray(x), int(y)) for x, y in reference]
    np.testing.assert_array_equal(
        dataset.x_train, np.stack([x for x, _ in pairs]).astype("uint8")
    )
    np.testing.assert_array_equal(dataset.y_train, [y for _, y in pairs])


def test_folder_without_class_subfolders(tmp_path):
    for i in range(3):
        write_png(tmp_path / f"{i}.png", np.zeros((4, 4, 3), "uint8"))
    with pytest.raises(DataFormatError) as raised:
        load_dataset("folder", path=tmp_path, test_fraction=0.5)
    message = str(raised.value)
    assert f"`data.path`={str(tmp_path)!r} must hold one subfolder" in message
    assert "holds no subfolders (and image files: 3)" in message


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"a": 2, "b": 0}, r"at least 2 class subfolders.*without images: b"),
        ({"a": 2}, r"at least 2 class subfolders.*Received: 1 subfolders"),
        ({"a": 2, "b": 1}, r"at least 2 images in each class.*1 in class 'b'"),
    ],
)
def test_folder_with_too_few_images(tmp_path, layout, message):
    for name, count in layout.items():
        (tmp_path / name).mkdir()
        for i in range(count):
            write_png(
                tmp_path / name / f"{i}.png", np.zeros((4, 4, 3), "uint8")
            )
    with pytest.raises(DataFormatError, match=message):
        load_dataset("folder", path=tmp_path, test_fraction=0.5)


def test_folder_unreadable_image_names_the_file(tmp_path):
    write_folder(tmp_path)
    broken = tmp_path / "dog" / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataFormatError) as raised:
        load_dataset("folder", path=tmp_path, test_fraction=0.3)
    assert f"{broken} (under `data.path`) cannot be read as an image" in str(
        raised.value
    )


def test_folder_test_path_with_other_classes(tmp_path):
    write_folder(tmp_path / "train")
    write_png(
        tmp_path / "test" / "cat" / "0.png", np.zeros((10, 12, 3), "uint8")
    )
    write_png(
        tmp_path / "test" / "cow" / "0.png", np.zeros((10, 12, 3), "uint8")
    )
    with pytest.raises(DataFormatError) as raised:
        load_dataset(
            "folder", path=tmp_path / "train", test_path=tmp_path / "test"
        )
    message = str(raised.value)
    assert "must hold images in the class subfolders of data.path" in message
    assert "(cat, dog, emu)" in message and "subfolders cat, cow" in message


def test_folder_test_images_of_another_size(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "test", counts=(1, 1, 1), size=(8, 8))
    folders = {"path": tmp_path / "train", "test_path": tmp_path / "test"}
    with pytest.raises(DataFormatError) as raised:
        load_dataset("folder", **folders)
    message = str(raised.value)
    assert "or set `data.image_size` to resize them" in message
    assert "(10, 12) (" in message and "(8, 8) (" in message
    dataset = load_dataset("folder", **folders, image_size=9)
    assert dataset.x_train.shape[1:] == dataset.x_test.shape[1:] == (9, 9, 3)


def test_folder_missing_is_unavailable(tmp_path):
    with pytest.raises(DataUnavailableError, match="is not a folder"):
        load_dataset("folder", path=tmp_path / "absent", test_fraction=0.5)


# Keys that belong to one source, and sizes.


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"source": "folder", "path": "x"},
            "Exactly one of `data.test_path` and `data.test_fraction` must "
            "be set when data.source is 'folder'",
        ),
        (
            {
                "source": "folder",
                "path": "x",
                "test_path": "y",
                "test_fraction": 0.5,
            },
            "Exactly one of `data.test_path` and `data.test_fraction`.*"
            "Received: data.test_path='y', data.test_fraction=0.5",
        ),
        (
            {"source": "folder", "path": "x", "test_fraction": 1.0},
            r"`data.test_fraction` must be null or in \(0, 1\)",
        ),
        (
            {"source": "folder", "test_fraction": 0.5},
            "`data.path` must be a folder",
        ),
        ({"source": "tfds"}, "`data.name` must be a tensorflow-datasets name"),
        (
            {"source": "cifar10", "name": "cifar100"},
            "`data.name` must be null unless data.source is 'tfds'",
        ),
        (
            {"source": "cifar10", "label_mode": "coarse"},
            "`data.label_mode` must be null unless data.source is 'cifar100'",
        ),
        (
            {"source": "npz", "path": "x.npz", "test_path": "y"},
            "`data.test_path` must be null unless data.source is 'folder'",
        ),
        (
            {"source": "cifar100", "test_split": "test"},
            "`data.test_split` must be null unless data.source is 'tfds'",
        ),
        ({"image_size": 4}, "`data.image_size` must be null or >= 8"),
    ],
)
def test_keys_of_another_source_are_refused(kwargs, message):
    kwargs = {"source": "synthetic", **kwargs}
    with pytest.raises(ValueError, match=message):
        load_dataset(**kwargs)
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"data": kwargs})


@pytest.mark.parametrize(
    "key, value, available",
    [("subset", 999999999, 50000), ("test_subset", 10001, 10000)],
)
def test_synthetic_larger_than_cifar10_is_refused(key, value, available):
    # 999,999,999 images asked numpy for 2.79 TiB before this check.
    start = time.perf_counter()
    message = (
        f"`data.{key}` must be at most the {available} examples available: "
        "the synthetic set has CIFAR-10's 50000 training and 10000 test "
        f"images. Received: data.{key}={value}"
    )
    with pytest.raises(ValueError, match=message):
        load_dataset("synthetic", **{key: value})
    assert time.perf_counter() - start < 1


def test_synthetic_fallback_larger_than_cifar10_is_refused(nothing_cached):
    with pytest.raises(ValueError, match="`data.subset` must be at most"):
        load_dataset(
            "cifar10",
            data_dir=nothing_cached,
            fallback="synthetic",
            subset=50001,
        )


def test_oversized_subset_stops_the_run_before_training(tmp_path):
    from kpool.harness.experiment import load_data

    config = config_from_dict(
        {"data": {"source": "synthetic", "subset": 999999999}},
    )
    with pytest.raises(ConfigError, match="`data.subset` must be at most"):
        load_data(config)


def test_image_size_resizes_every_source(tmp_path):
    synthetic = load_dataset(
        "synthetic", subset=20, test_subset=10, image_size=16
    )
    assert synthetic.x_train.shape == (20, 16, 16, 3)
    path = tmp_path / "flat.npz"
    flat = np.full((8, 16, 16, 3), 77, "uint8")
    write_npz(path, x_train=flat, x_test=flat[:4])
    dataset = load_dataset("npz", path=path, image_size=24, subset=7)
    assert dataset.x_train.shape == (7, 24, 24, 3)
    assert dataset.x_test.shape == (4, 24, 24, 3)
    assert np.all(dataset.x_train == 77)


@pytest.mark.slow
def test_a_folder_run_takes_its_classes_and_size_from_the_data(tmp_path):
    """One short run on a folder of 3 classes of 12x10 images: the model
    is built for them, and the row names the folder."""
    from kpool.harness import results
    from kpool.harness.experiment import run_experiment

    write_folder(tmp_path / "flowers", counts=(6, 6, 6), size=(12, 10))
    config = config_from_dict(
        {
            "output_dir": str(tmp_path / "results"),
            "model": {"family": "small_cnn", "width": 4},
            "data": {
                "source": "folder",
                "path": str(tmp_path / "flowers"),
                "test_fraction": 0.25,
            },
            "train": {"epochs": 1, "batch_size": 6},
            "eval": {"shift_metrics": False},
        }
    )
    outcome = run_experiment(config, verbose=0)
    assert len(outcome.trained) == 1 and not outcome.failed
    runs, _ = results.read_results([outcome.directory])
    row = runs.iloc[0]
    assert row["dataset"] == "folder:flowers"
    assert (row["n_train"], row["n_test"]) == (12, 6)
    assert str(tmp_path / "flowers") in row["data_source_note"]
