"""Datasets for the pooling ablation, loaded as plain NumPy arrays.

Sources: CIFAR-10 (a local copy of the python archive or its extracted
folder, the Keras cache, or tensorflow-datasets), any image-classification
arrays in a .npz file, and a deterministic synthetic stand-in of CIFAR-10's
shape. TensorFlow and tensorflow-datasets are imported only when the tfds
source is tried, so the training path runs without them.
"""

import dataclasses
import os
import pickle
import posixpath
import sys
import tarfile

import numpy as np

SOURCES = ("cifar10", "synthetic", "npz")
FALLBACKS = (None, "synthetic")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_ARCHIVE_NAME = "cifar-10-python.tar.gz"
_BATCHES_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
# Where keras.datasets.cifar10.load_data() extracts the archive: Keras 3
# under "cifar-10-batches-py-target/", older Keras directly in "datasets/".
_KERAS_CACHE_SUBDIRS = ("cifar-10-batches-py-target", "")

CIFAR10_HOW_TO = f"""\
To get CIFAR-10, do one of:
  1. Download {CIFAR10_URL}
     and point the config at it: --set data.path=/path/to/{_ARCHIVE_NAME}
     (the archive, its extracted {_BATCHES_DIR} folder, or their parent).
  2. Fill the Keras cache (works on any Keras backend, no TensorFlow needed):
     python -c "import keras; keras.datasets.cifar10.load_data()"
  3. Let tensorflow-datasets download and prepare it: --set data.download=true
     (and --set data.data_dir=DIR to choose where; needs tensorflow,
     tensorflow-datasets and importlib_resources:
     pip install 'kpool[experiments]')."""
# Closes every unavailability message, but not the fallback banner: a run
# that falls back has declared the fallback already.
_OTHER_SOURCES = """\
Or run on the synthetic stand-in: --set data.source=synthetic, or declare
`fallback: synthetic` under `data:` in the config."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An image-classification dataset held as NumPy arrays.

    Attributes:
        name: str. "cifar10", "synthetic" or "npz:<file name>"; recorded in
            every results row.
        x_train: uint8 array `(N, height, width, channels)`.
        y_train: int32 array `(N,)`.
        x_test: uint8 array `(M, height, width, channels)`.
        y_test: int32 array `(M,)`.
        num_classes: int.
        source_note: str. Where the data came from, e.g. "tfds:/path",
            "archive:/path" or "fallback: cifar10 unavailable (<reason>)".
        fallback: bool. Whether this set stands in for an unavailable one.
    """

    name: str
    x_train: np.ndarray = dataclasses.field(repr=False)
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    num_classes: int
    source_note: str
    fallback: bool = False


class DataUnavailableError(RuntimeError):
    """The requested data is not on this machine.

    The message says what was looked for, how to get the data and how to
    use another source; `reason` holds what was looked for, `how_to` how to
    get it.
    """

    def __init__(self, reason, how_to=""):
        super().__init__(
            "\n".join(filter(None, [reason, how_to, _OTHER_SOURCES]))
        )
        self.reason = reason
        self.how_to = how_to


class DataFormatError(ValueError):
    """A data file is there but is not what its source expects.

    Never replaced by a fallback: the message names the file, the array or
    entry at fault, and what was expected.
    """


def load_dataset(
    source,
    *,
    path=None,
    data_dir=None,
    subset=None,
    test_subset=None,
    download=False,
    fallback=None,
    seed=0,
):
    """Loads a dataset as NumPy arrays.

    CIFAR-10 is looked for, in order: at `path` if given (nowhere else
    then); in the Keras cache (`$KERAS_HOME` or `~/.keras`); prepared by
    tensorflow-datasets in `data_dir`; downloaded by tensorflow-datasets if
    `download`. Nothing is ever downloaded unless `download` is true.

    Args:
        source: str. One of "cifar10", "synthetic", "npz".
        path: str or `None`. For "cifar10", a `cifar-10-python.tar.gz`
            archive, its extracted `cifar-10-batches-py` folder, or a folder
            holding either. For "npz" (required), a .npz file with arrays
            `x_train`, `y_train`, `x_test`, `y_test`.
        data_dir: str or `None`. The tensorflow-datasets data directory;
            `None` means tfds's default.
        subset: int or `None`. Keep this many training examples, a seeded,
            class-balanced selection. The synthetic set generates only these.
        test_subset: int or `None`. The same for the test set.
        download: bool. Whether tensorflow-datasets may download CIFAR-10.
        fallback: `None` or "synthetic". What to return, loudly and marked
            `fallback=True`, when the requested data is unavailable.
        seed: int. Seeds the subset selection and the synthetic images.

    Returns:
        A `Dataset`.

    Raises:
        DataUnavailableError: the data is not here and no fallback is set.
        DataFormatError: a file is there but does not hold what `source`
            expects (never replaced by the fallback).
        ValueError: an argument is invalid.
    """
    if source not in SOURCES:
        raise ValueError(
            f"`data.source` must be one of {', '.join(SOURCES)}. "
            f"Received: data.source={source!r}"
        )
    if fallback not in FALLBACKS:
        raise ValueError(
            "`data.fallback` must be None or 'synthetic'. "
            f"Received: data.fallback={fallback!r}"
        )
    for key, value in (("subset", subset), ("test_subset", test_subset)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(
                f"`data.{key}` must be a positive int or None. "
                f"Received: data.{key}={value!r}"
            )
    if not isinstance(download, bool):
        raise ValueError(
            "`data.download` must be True or False. "
            f"Received: data.download={download!r}"
        )
    if source == "npz" and path is None:
        raise ValueError(
            "`data.path` must name a .npz file when data.source='npz'. "
            "Received: data.path=None"
        )

    if source == "synthetic":
        return _synthetic(subset, test_subset, seed)
    try:
        if source == "npz":
            dataset = _load_npz(path)
        else:
            dataset = _load_cifar10(path, data_dir, download)
    except DataUnavailableError as error:
        if fallback is None:
            raise
        _warn_fallback(source, error)
        return dataclasses.replace(
            _synthetic(subset, test_subset, seed),
            source_note=f"fallback: {source} unavailable ({error.reason})",
            fallback=True,
        )
    return _take_subsets(dataset, subset, test_subset, seed)


def synthetic_dataset(
    n_train=50000, n_test=10000, image_size=32, num_classes=10, seed=0
):
    """A deterministic, learnable stand-in of CIFAR-10's shape.

    Each image is a random background colour plus a Gaussian-windowed
    grating at a random position and phase, plus uniform pixel noise. The
    class sets the grating's orientation, spatial frequency and colour; the
    colour is jittered per image. A small CNN learns it well above chance
    while linear models on raw pixels stay near chance, and translations
    (random crops) keep the class. Classes are balanced; `n` images are the
    first `n` of any larger set with the same seed, and the test set does
    not depend on `n_train`.

    Args:
        n_train: int. Number of training images.
        n_test: int. Number of test images.
        image_size: int. Height and width.
        num_classes: int. Number of classes.
        seed: int. Seed of numpy's default generator.

    Returns:
        A `Dataset` named "synthetic" of uint8 `(n, image_size, image_size,
        3)` images and int32 labels.
    """
    for key, value, least in (
        ("n_train", n_train, 1),
        ("n_test", n_test, 1),
        ("image_size", image_size, 8),
        ("num_classes", num_classes, 2),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < least
        ):
            raise ValueError(
                f"`{key}` must be an int >= {least}. Received: {key}={value!r}"
            )
    templates = _class_templates(num_classes)
    x_train, y_train = _synthetic_split(
        n_train, image_size, templates, np.random.default_rng([seed, 0])
    )
    x_test, y_test = _synthetic_split(
        n_test, image_size, templates, np.random.default_rng([seed, 1])
    )
    return Dataset(
        name="synthetic",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        source_note=f"synthetic(seed={seed})",
    )


# Images per vectorised step: small enough that the float32 temporaries stay
# in cache. 60,000 images took 0.8-1.0 s of CPU time with 256 or 1024 and
# 1.7-1.9 s with 4096.
_SYNTHETIC_CHUNK = 256


def _class_templates(num_classes):
    classes = np.arange(num_classes)
    # Neighbouring classes differ in frequency, and in orientation and
    # colour; hues step by the golden ratio so that no two classes share one.
    hue = 2 * np.pi * ((classes * 0.6180340) % 1.0)
    colour = np.stack(
        [np.cos(hue), np.cos(hue - 2 * np.pi / 3), np.cos(hue + 2 * np.pi / 3)],
        axis=-1,
    )
    return {
        "angle": np.pi * classes / num_classes,
        "cycles_per_pixel": np.where(classes % 2 == 0, 0.12, 0.24),
        "colour": colour,
    }


def _synthetic_split(n, image_size, templates, rng):
    num_classes = len(templates["angle"])
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    labels = np.empty(n, np.int32)
    for start in range(0, n, _SYNTHETIC_CHUNK):
        # Every chunk is drawn whole, so a shorter set is a prefix of a
        # longer one.
        chunk_labels = rng.permutation(
            np.arange(start, start + _SYNTHETIC_CHUNK) % num_classes
        )
        chunk = _synthetic_images(chunk_labels, image_size, templates, rng)
        stop = min(start + _SYNTHETIC_CHUNK, n)
        labels[start:stop] = chunk_labels[: stop - start]
        # To channels last; the float to uint8 cast rounds towards zero.
        images[start:stop] = chunk[: stop - start].transpose(0, 2, 3, 1)
    return images, labels


def _synthetic_images(labels, image_size, templates, rng):
    # Float images in 0..255, channels first: numpy broadcasts faster over a
    # trailing axis of 32 pixels than over one of 3 channels.
    count = len(labels)
    f32 = np.float32
    centre = rng.uniform(0.25, 0.75, (count, 2, 1, 1)) * image_size
    phase = rng.uniform(0, 2 * np.pi, (count, 1, 1, 1))
    amplitude = rng.uniform(40, 90, (count, 1, 1, 1))
    colour = templates["colour"][labels][:, :, None, None] + rng.normal(
        0, 0.5, (count, 3, 1, 1)
    )
    background = rng.uniform(60, 190, (count, 3, 1, 1))
    noise = np.frombuffer(rng.bytes(count * 3 * image_size**2), np.uint8)

    grid = np.arange(image_size, dtype=f32)
    rows = grid[None, None, :, None] - centre[:, :1].astype(f32)
    cols = grid[None, None, None, :] - centre[:, 1:].astype(f32)
    angle = templates["angle"][labels][:, None, None, None].astype(f32)
    frequency = templates["cycles_per_pixel"][labels][:, None, None, None]
    along = cols * np.cos(angle) + rows * np.sin(angle)
    grating = np.cos(f32(2 * np.pi) * f32(frequency) * along + f32(phase))
    width = f32(0.22 * image_size)
    window = np.exp(-(rows * rows + cols * cols) / (2 * width * width))

    # Uniform noise of standard deviation ~24 from random bytes: several
    # times cheaper than normal draws, which dominated the generation time.
    images = noise.reshape(count, 3, image_size, image_size).astype(f32)
    images *= f32(0.33)
    images += (background - 0.33 * 127.5).astype(f32)
    images += grating * window * (amplitude * colour).astype(f32)
    return np.clip(images, 0, 255, out=images)


def _synthetic(subset, test_subset, seed):
    return synthetic_dataset(
        n_train=subset or 50000, n_test=test_subset or 10000, seed=seed
    )


def _take_subsets(dataset, subset, test_subset, seed):
    x_train, y_train = _balanced_subset(
        dataset.x_train, dataset.y_train, subset, "subset", seed, 0
    )
    x_test, y_test = _balanced_subset(
        dataset.x_test, dataset.y_test, test_subset, "test_subset", seed, 1
    )
    return dataclasses.replace(
        dataset, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test
    )


def _balanced_subset(images, labels, size, key, seed, stream):
    if size is None:
        return images, labels
    if size > len(labels):
        raise ValueError(
            f"`data.{key}` must be at most the {len(labels)} examples "
            f"available. Received: data.{key}={size}"
        )
    order = np.random.default_rng([seed, stream]).permutation(len(labels))
    shuffled = labels[order]
    # Rank of each example among those of its class in the shuffled order;
    # taking the lowest ranks first takes the classes in turn.
    by_class = np.argsort(shuffled, kind="stable")
    sorted_labels = shuffled[by_class]
    rank = np.empty(len(labels), np.int64)
    rank[by_class] = np.arange(len(labels)) - np.searchsorted(
        sorted_labels, sorted_labels
    )
    chosen = np.sort(order[np.argsort(rank, kind="stable")[:size]])
    return images[chosen], labels[chosen]


def _warn_fallback(source, error):
    bar = "!" * 78
    lines = [
        f"DATA FALLBACK: {source} is not available; using the SYNTHETIC set.",
        f"The results of this run are NOT on {source}: every row records "
        "dataset 'synthetic' and data_fallback=True.",
        "",
        error.reason,
        *error.how_to.splitlines(),
    ]
    body = "\n".join(f"!! {line}".rstrip() for line in lines)
    print(f"\n{bar}\n{body}\n{bar}\n", file=sys.stderr, flush=True)


def _load_cifar10(path, data_dir, download):
    if path is not None:
        location = _find_cifar10(os.fspath(path))
        if location is None:
            raise DataUnavailableError(
                f"`data.path`={os.fspath(path)!r} holds no CIFAR-10: expected "
                f"{_ARCHIVE_NAME}, a {_BATCHES_DIR} folder, or a folder "
                "holding either.",
                CIFAR10_HOW_TO,
            )
        return _read_cifar10(location)

    cache = os.path.join(_keras_home(), "datasets")
    for subdir in _KERAS_CACHE_SUBDIRS:
        location = _find_cifar10(os.path.join(cache, subdir))
        if location is not None:
            return _read_cifar10(location)
    try:
        return _load_tfds(data_dir, download)
    except DataUnavailableError as error:
        raise DataUnavailableError(
            f"CIFAR-10 is not available: no data.path given; not in the Keras "
            f"cache {cache}; {error.reason}",
            CIFAR10_HOW_TO,
        ) from None


def _keras_home():
    # As keras.datasets does, without importing Keras.
    return os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )


def _find_cifar10(path):
    """The CIFAR-10 folder or archive at or directly under `path`, or None."""
    for candidate in (
        path,
        os.path.join(path, _BATCHES_DIR),
        os.path.join(path, _ARCHIVE_NAME),
    ):
        if os.path.isfile(os.path.join(candidate, _TRAIN_BATCHES[0])):
            return candidate
        if os.path.isfile(candidate) and tarfile.is_tarfile(candidate):
            return candidate
    return None


def _read_cifar10(location):
    wanted = (*_TRAIN_BATCHES, _TEST_BATCH)
    batches = {}
    if os.path.isdir(location):
        kind = "folder"
        for name in wanted:
            member = os.path.join(location, name)
            if os.path.isfile(member):
                with open(member, "rb") as file:
                    batches[name] = _read_batch(file, member)
    else:
        kind = "archive"
        # One streaming pass: random access into a .tar.gz decompresses it
        # again from the start for every member.
        with tarfile.open(location, "r|*") as archive:
            for member in archive:
                folder, name = posixpath.split(member.name)
                if (
                    member.isfile()
                    and name in wanted
                    and posixpath.basename(folder) == _BATCHES_DIR
                ):
                    batches[name] = _read_batch(
                        archive.extractfile(member),
                        f"{location}:{member.name}",
                    )
    missing = [name for name in wanted if name not in batches]
    if missing:
        raise DataUnavailableError(
            f"The CIFAR-10 {kind} {location} lacks {', '.join(missing)}.",
            CIFAR10_HOW_TO,
        )
    train = [batches[name] for name in _TRAIN_BATCHES]
    return Dataset(
        name="cifar10",
        x_train=np.concatenate([images for images, _ in train]),
        y_train=np.concatenate([labels for _, labels in train]),
        x_test=batches[_TEST_BATCH][0],
        y_test=batches[_TEST_BATCH][1],
        num_classes=10,
        source_note=f"{kind}:{os.path.abspath(location)}",
    )


# What the batches of the CIFAR-10 python archive need, and no more: their
# dicts, lists, bytes and ints are pickle opcodes; NumPy arrays and dtypes
# are rebuilt by these functions. `numpy.core` is the NumPy 1 name the
# original archive uses, `numpy._core` NumPy 2's. Protocol 2 pickles made
# by Python 3 spell bytes as `_codecs.encode(str, "latin1")`.
_PICKLE_GLOBALS = frozenset(
    [
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    ]
)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only plain data and NumPy arrays.

    `pickle.load` calls whatever a file names (`os.system`, `eval`, ...);
    this unpickler refuses every global outside `_PICKLE_GLOBALS`, as
    `torch.load(weights_only=True)` does.
    """

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused to load `{module}.{name}`: a CIFAR-10 batch holds "
                "only dicts, lists, bytes, ints and NumPy arrays"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id")


_IMAGE_BYTES = 3 * 32 * 32


def _read_batch(file, where):
    # The format of the original archive: a pickled dict whose b"data" holds
    # one image per row as 3x32x32 uint8, channels first.
    try:
        batch = _BatchUnpickler(file, encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 (any failure: not a batch)
        raise DataFormatError(
            f"{where} is not a CIFAR-10 batch: unpickling it failed "
            f"({type(error).__name__}: {error}). kpool never runs code from "
            "a data file; if this file is not the original archive's, it "
            "may be malicious."
        ) from None
    images = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 2
        or images.shape[1] != _IMAGE_BYTES
        or not isinstance(labels, list)
        or len(labels) != len(images)
        or not all(type(label) is int and 0 <= label < 10 for label in labels)
    ):
        raise DataFormatError(
            f"{where} is not a CIFAR-10 batch: expected a dict with b'data', "
            f"a uint8 array (N, {_IMAGE_BYTES}), and b'labels', a list of N "
            f"ints in 0..9. Received: {_describe_batch(batch)}"
        )
    images = images.reshape(-1, 3, 32, 32)
    labels = np.asarray(labels, np.int32)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels


def _describe_batch(batch):
    if not isinstance(batch, dict):
        return type(batch).__name__
    parts = []
    for key in (b"data", b"labels"):
        value = batch.get(key)
        if isinstance(value, np.ndarray):
            parts.append(f"{key!r}: array {value.shape} {value.dtype}")
        elif isinstance(value, list):
            parts.append(f"{key!r}: list of {len(value)}")
        else:
            parts.append(f"{key!r}: {type(value).__name__}")
    return ", ".join(parts)


def _load_tfds(data_dir, download):
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataUnavailableError(
            f"tensorflow-datasets is not importable ({error})"
        ) from None
    builder = tfds.builder("cifar10", data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise DataUnavailableError(
                f"tensorflow-datasets has not prepared it in {builder.data_dir}"
                " and data.download is false"
            )
        print(
            f"Downloading CIFAR-10 with tensorflow-datasets to "
            f"{builder.data_dir} (needs network access) ...",
            file=sys.stderr,
            flush=True,
        )
        try:
            builder.download_and_prepare()
        except Exception as error:
            # Offline, or a dependency tfds does not declare is missing:
            # either way the data cannot be had, and a fallback may apply.
            raise DataUnavailableError(
                f"the tensorflow-datasets download failed "
                f"({type(error).__name__}: {error})"
            ) from error
    try:
        import tensorflow  # noqa: F401
    except ImportError as error:
        raise DataUnavailableError(
            f"tensorflow-datasets holds it in {builder.data_dir}, but reading "
            f"it needs tensorflow ({error})"
        ) from None
    x_train, y_train = _tfds_split(tfds, builder, "train")
    x_test, y_test = _tfds_split(tfds, builder, "test")
    return Dataset(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=builder.info.features["label"].num_classes,
        source_note=f"tfds:{builder.data_dir}",
    )


def _tfds_split(tfds, builder, split):
    # Batched iteration: tfds.load(batch_size=-1) aborted the process under
    # tfds.testing.mock_data.
    dataset = builder.as_dataset(
        split=split, as_supervised=True, shuffle_files=False
    ).batch(10000)
    images, labels = zip(*tfds.as_numpy(dataset), strict=True)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# The models normalise with CIFAR-10's per-channel statistics.
_NPZ_CHANNELS = 3
_NPZ_FORMAT = (
    "x_train and x_test: uint8 images (N, height, width, 3), channels last; "
    "y_train and y_test: N integer labels 0..K-1, shape (N,) or (N, 1), "
    "every class in y_train"
)


def _load_npz(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataUnavailableError(
            f"`data.path`={path!r} is not a file.",
            "Pass a .npz file holding arrays x_train, y_train, x_test, y_test.",
        )
    try:
        # No pickles: an object array could run code when loaded.
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataFormatError(
            f"`data.path`={path!r} is not a .npz archive ({error}). "
            f"Expected: {_NPZ_FORMAT}."
        ) from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise DataFormatError(
            f"`data.path`={path!r} holds one array, not a .npz archive of "
            f"x_train, y_train, x_test, y_test. Expected: {_NPZ_FORMAT}."
        )
    with arrays:
        missing = [key for key in _NPZ_KEYS if key not in arrays.files]
        if missing:
            raise DataFormatError(
                f"`data.path`={path!r} must hold arrays "
                f"{', '.join(_NPZ_KEYS)}; it lacks {', '.join(missing)}. "
                f"Found: {', '.join(arrays.files)}"
            )
        loaded = {key: _npz_array(arrays, key, path) for key in _NPZ_KEYS}
    x_train = _npz_images(loaded["x_train"], "x_train", path)
    x_test = _npz_images(loaded["x_test"], "x_test", path)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataFormatError(
            f"`x_train` and `x_test` in {path} must have the same image "
            f"shape. Received: {x_train.shape[1:]} and {x_test.shape[1:]}"
        )
    y_train = _npz_labels(loaded["y_train"], "y_train", len(x_train), path)
    y_test = _npz_labels(loaded["y_test"], "y_test", len(x_test), path)
    num_classes = _npz_num_classes(y_train, y_test, path)
    return Dataset(
        name=f"npz:{os.path.basename(path)}",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        source_note=f"npz:{os.path.abspath(path)}",
    )


def _npz_array(arrays, key, path):
    try:
        return arrays[key]
    except ValueError as error:
        # NumPy's words for an object array under allow_pickle=False.
        raise DataFormatError(
            f"`{key}` in {path} cannot be loaded: {error}. kpool loads .npz "
            "files without pickles; save plain numeric arrays (e.g. "
            f"np.asarray({key}, np.uint8) for images)."
        ) from None


def _npz_images(images, key, path):
    if (
        images.ndim != 4
        or images.dtype != np.uint8
        or images.shape[-1] != _NPZ_CHANNELS
        or len(images) == 0
    ):
        hint = ""
        if images.ndim == 3 or images.ndim == 4 and images.shape[-1] == 1:
            hint = (
                " Grey images: repeat them into 3 channels, e.g. "
                "np.repeat(x.reshape(*x.shape[:3], 1), 3, axis=-1)."
            )
        elif images.dtype != np.uint8:
            hint = (
                " Images in 0..255: save x.astype(np.uint8); in 0..1: "
                "save np.round(x * 255).astype(np.uint8)."
            )
        raise DataFormatError(
            f"`{key}` in {path} must be uint8 images (N, height, width, "
            f"{_NPZ_CHANNELS}), channels last, N >= 1. Received: "
            f"shape={images.shape}, dtype={images.dtype}.{hint}"
        )
    return images


def _npz_labels(labels, key, count, path):
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(
            f"`{key}` in {path} must be {count} integer labels (one per "
            f"image of `x{key[1:]}`), shape ({count},) or ({count}, 1). "
            f"Received: shape={labels.shape}, dtype={labels.dtype}"
        )
    if labels.min() < 0:
        raise DataFormatError(
            f"`{key}` in {path} must hold labels 0..K-1. Received: a label "
            f"{labels.min()}"
        )
    return labels.astype(np.int32)


def _npz_num_classes(y_train, y_test, path):
    """K from the training labels, which must use every class 0..K-1."""
    num_classes = int(y_train.max()) + 1
    counts = np.bincount(y_train, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if num_classes < 2 or len(empty):
        raise DataFormatError(
            f"`y_train` in {path} must hold labels 0..K-1 with every class "
            f"present and K >= 2. Received: K={num_classes} (largest label "
            f"{num_classes - 1}), classes without an example: "
            f"{_some(empty)}. Labels must count from 0 without gaps."
        )
    if y_test.max() >= num_classes:
        raise DataFormatError(
            f"`y_test` in {path} must hold labels 0..{num_classes - 1}, the "
            f"classes of `y_train`. Received: a label {y_test.max()}"
        )
    return num_classes


def _some(values, limit=10):
    text = ", ".join(str(v) for v in values[:limit])
    return f"{text}, ..." if len(values) > limit else text or "none"
