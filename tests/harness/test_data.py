import os
import pickle
import tarfile
import time
from unittest import mock

import keras
import numpy as np
import pytest

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
    assert "Downloading CIFAR-10" in capsys.readouterr().err
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
    assert "download failed (ModuleNotFoundError" in dataset.source_note
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
        ({"source": "npz"}, "`data.path` must name a .npz file"),
        ({"fallback": "cifar10"}, "`data.fallback` must be None or"),
        ({"download": "yes"}, "`data.download` must be True or False"),
        ({"subset": 0}, "`data.subset` must be a positive int"),
        ({"subset": 2.5}, "`data.subset` must be a positive int"),
        ({"subset": True}, "`data.subset` must be a positive int"),
        ({"test_subset": -3}, "`data.test_subset` must be a positive int"),
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
