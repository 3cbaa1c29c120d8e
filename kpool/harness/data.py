"""Datasets for the pooling ablation, loaded as plain NumPy arrays.

Sources: CIFAR-10 and CIFAR-100 (a local copy of the python archive or its
extracted folder, the Keras cache, or tensorflow-datasets), any
tensorflow-datasets image-classification set, a folder of images with one
subfolder per class, any image-classification arrays in a .npz file, and a
deterministic synthetic stand-in of CIFAR-10's shape. TensorFlow and
tensorflow-datasets are imported only when tensorflow-datasets is tried, and
Pillow only to read or resize images, so the training path runs without
them.
"""

import dataclasses
import os
import pickle
import posixpath
import sys
import tarfile
import typing

import numpy as np

from kpool.harness.config import DataConfig, check_data

SOURCES = ("cifar10", "cifar100", "tfds", "folder", "synthetic", "npz")
FALLBACKS = (None, "synthetic")
# The synthetic set stands in for CIFAR-10, so it has CIFAR-10's size (and
# `data.subset` / `data.test_subset` select a prefix of it).
SYNTHETIC_SIZES = {"subset": 50000, "test_subset": 10000}
# What keras.utils.image_dataset_from_directory reads.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


class _Labels(typing.NamedTuple):
    """One label set of a CIFAR version."""

    key: bytes  # in the pickled batches
    num_classes: int
    tfds_feature: str


@dataclasses.dataclass(frozen=True)
class _Cifar:
    """Where one CIFAR version lives and how its python archive is laid
    out. `labels` maps each `data.label_mode` it takes to its labels, the
    default first."""

    title: str
    source: str
    archive: str
    folder: str
    train_batches: tuple
    test_batch: str
    labels: dict

    @property
    def url(self):
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"

    @property
    def keras_cache_subdirs(self):
        # Where keras.datasets.<source>.load_data() extracts the archive:
        # Keras 3 under "<folder>-target/", older Keras directly in
        # "datasets/".
        return (f"{self.folder}-target", "")


_CIFAR10 = _Cifar(
    title="CIFAR-10",
    source="cifar10",
    archive="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    train_batches=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_batch="test_batch",
    labels={None: _Labels(b"labels", 10, "label")},
)
_CIFAR100 = _Cifar(
    title="CIFAR-100",
    source="cifar100",
    archive="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    train_batches=("train",),
    test_batch="test",
    labels={
        "fine": _Labels(b"fine_labels", 100, "label"),
        "coarse": _Labels(b"coarse_labels", 20, "coarse_label"),
    },
)
_CIFARS = {cifar.source: cifar for cifar in (_CIFAR10, _CIFAR100)}


def _cifar_how_to(cifar):
    return f"""\
To get {cifar.title}, do one of:
  1. Download {cifar.url}
     and point the config at it: --set data.path=/path/to/{cifar.archive}
     (the archive, its extracted {cifar.folder} folder, or their parent).
  2. Fill the Keras cache (works on any Keras backend, no TensorFlow needed):
     python -c "import keras; keras.datasets.{cifar.source}.load_data()"
  3. Let tensorflow-datasets download and prepare it: --set data.download=true
     (and --set data.data_dir=DIR to choose where; needs tensorflow,
     tensorflow-datasets and importlib_resources:
     pip install 'kpool[experiments]')."""


_TFDS_HOW_TO = """\
Let tensorflow-datasets download and prepare it: --set data.download=true
(and --set data.data_dir=DIR to choose where), or prepare it beforehand on a
machine with internet access and point --set data.data_dir at the copy."""
_FOLDER_LAYOUT = (
    "one subfolder per class, named after it, holding that class's images "
    f"({', '.join(IMAGE_EXTENSIONS)}, at any depth), as "
    "keras.utils.image_dataset_from_directory reads them"
)
# Closes every unavailability message, but not the fallback banner: a run
# that falls back has declared the fallback already.
_OTHER_SOURCES = """\
Or run on the synthetic stand-in: --set data.source=synthetic, or declare
`fallback: synthetic` under `data:` in the config."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An image-classification dataset held as NumPy arrays.

    Attributes:
        name: str. Names the data in every results row: "cifar10",
            "cifar100-fine", "cifar100-coarse", "tfds:<name>",
            "folder:<folder name>", "npz:<file name>" or "synthetic".
        x_train: uint8 array `(N, height, width, 3)`.
        y_train: int32 array `(N,)`.
        x_test: uint8 array `(M, height, width, 3)`.
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
    name=None,
    train_split=None,
    test_split=None,
    test_path=None,
    test_fraction=None,
    image_size=None,
    label_mode=None,
    subset=None,
    test_subset=None,
    download=False,
    fallback=None,
    seed=0,
):
    """Loads a dataset as NumPy arrays.

    CIFAR-10 and CIFAR-100 are looked for, in order: at `path` if given
    (nowhere else then); in the Keras cache (`$KERAS_HOME` or `~/.keras`);
    prepared by tensorflow-datasets in `data_dir`; downloaded by
    tensorflow-datasets if `download`. Nothing is ever downloaded unless
    `download` is true.

    Args:
        source: str. One of "cifar10", "cifar100", "tfds", "folder",
            "synthetic", "npz".
        path: str or `None`. For "cifar10" and "cifar100", the python
            archive (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`),
            its extracted folder (`cifar-10-batches-py`,
            `cifar-100-python`), or a folder holding either. For "npz"
            (required), a .npz file with arrays `x_train`, `y_train`,
            `x_test`, `y_test`. For "folder" (required), the training
            images: one subfolder per class.
        data_dir: str or `None`. The tensorflow-datasets data directory;
            `None` means tfds's default.
        name: str or `None`. For "tfds" (required), the tensorflow-datasets
            name of an image-classification set with an `image` and a
            `label` feature, e.g. "svhn_cropped".
        train_split: str or `None`. For "tfds", the split to train on, in
            tfds's split syntax ("train", "train[:90%]"); `None`: "train".
        test_split: str or `None`. The same for the test set; `None`:
            "test".
        test_path: str or `None`. For "folder", the held-out images, laid
            out as `path` with the same class subfolders.
        test_fraction: float or `None`. For "folder", instead of
            `test_path`: hold out this fraction of each class of `path`,
            chosen with `seed`.
        image_size: int or `None`. Resize every image to `image_size` x
            `image_size` with Pillow's bilinear filter (antialiased when
            shrinking); `None` keeps the data's size, which the images of a
            folder or tfds set must then share.
        label_mode: "fine", "coarse" or `None`. For "cifar100", its 100 fine
            or its 20 coarse classes; `None` means "fine".
        subset: int or `None`. Keep this many training examples, a seeded,
            class-balanced selection. The synthetic set generates only these
            (at most 50000, CIFAR-10's size).
        test_subset: int or `None`. The same for the test set (synthetic:
            at most 10000).
        download: bool. Whether tensorflow-datasets may download the data.
        fallback: `None` or "synthetic". What to return, loudly and marked
            `fallback=True`, when the requested data is unavailable.
        seed: int. Seeds the subset selection, the held-out fraction and
            the synthetic images.

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
    for key, value in (
        ("subset", subset),
        ("test_subset", test_subset),
        ("image_size", image_size),
    ):
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
    check_data(
        DataConfig(
            source=source,
            path=None if path is None else os.fspath(path),
            name=name,
            train_split=train_split,
            test_split=test_split,
            test_path=None if test_path is None else os.fspath(test_path),
            test_fraction=test_fraction,
            image_size=image_size,
            label_mode=label_mode,
        )
    )

    if source == "synthetic":
        return _synthetic(subset, test_subset, seed, image_size)
    try:
        if source == "npz":
            dataset = _load_npz(path)
        elif source == "folder":
            dataset = _load_folder(
                path, test_path, test_fraction, image_size, seed
            )
        elif source == "tfds":
            dataset = _load_tfds(
                name,
                data_dir,
                download,
                splits=(train_split or "train", test_split or "test"),
                image_size=image_size,
            )
        else:
            dataset = _load_cifar(
                _CIFARS[source], label_mode, path, data_dir, download
            )
    except DataUnavailableError as error:
        if fallback is None:
            raise
        _warn_fallback(source, error)
        return dataclasses.replace(
            _synthetic(subset, test_subset, seed, image_size),
            source_note=f"fallback: {source} unavailable ({error.reason})",
            fallback=True,
        )
    dataset = _take_subsets(dataset, subset, test_subset, seed)
    return dataclasses.replace(
        dataset,
        x_train=_resized(dataset.x_train, image_size),
        x_test=_resized(dataset.x_test, image_size),
    )


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


def _synthetic(subset, test_subset, seed, image_size):
    # Checked before generating: an unchecked size asked for terabytes.
    for key, value in (("subset", subset), ("test_subset", test_subset)):
        if value is not None and value > SYNTHETIC_SIZES[key]:
            raise ValueError(
                f"`data.{key}` must be at most the {SYNTHETIC_SIZES[key]} "
                "examples available: the synthetic set has CIFAR-10's "
                f"{SYNTHETIC_SIZES['subset']} training and "
                f"{SYNTHETIC_SIZES['test_subset']} test images. Received: "
                f"data.{key}={value}"
            )
    return synthetic_dataset(
        n_train=subset or SYNTHETIC_SIZES["subset"],
        n_test=test_subset or SYNTHETIC_SIZES["test_subset"],
        image_size=image_size or 32,
        seed=seed,
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


def _load_cifar(cifar, label_mode, path, data_dir, download):
    mode = label_mode or next(iter(cifar.labels))
    labels = cifar.labels[mode]
    name = cifar.source if mode is None else f"{cifar.source}-{mode}"
    if path is not None:
        location = _find_cifar(os.fspath(path), cifar)
        if location is None:
            raise DataUnavailableError(
                f"`data.path`={os.fspath(path)!r} holds no {cifar.title}: "
                f"expected {cifar.archive}, a {cifar.folder} folder, or a "
                "folder holding either.",
                _cifar_how_to(cifar),
            )
        return _read_cifar(location, cifar, labels, name)

    cache = os.path.join(_keras_home(), "datasets")
    for subdir in cifar.keras_cache_subdirs:
        location = _find_cifar(os.path.join(cache, subdir), cifar)
        if location is not None:
            return _read_cifar(location, cifar, labels, name)
    try:
        return _load_tfds(
            cifar.source,
            data_dir,
            download,
            label_key=labels.tfds_feature,
            dataset_name=name,
        )
    except DataUnavailableError as error:
        raise DataUnavailableError(
            f"{cifar.title} is not available: no data.path given; not in the "
            f"Keras cache {cache}; {error.reason}",
            _cifar_how_to(cifar),
        ) from None


def _keras_home():
    # As keras.datasets does, without importing Keras.
    return os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )


def _find_cifar(path, cifar):
    """The CIFAR folder or archive at or directly under `path`, or None."""
    for candidate in (
        path,
        os.path.join(path, cifar.folder),
        os.path.join(path, cifar.archive),
    ):
        if os.path.isfile(os.path.join(candidate, cifar.train_batches[0])):
            return candidate
        if os.path.isfile(candidate) and tarfile.is_tarfile(candidate):
            return candidate
    return None


def _read_cifar(location, cifar, labels, name):
    wanted = (*cifar.train_batches, cifar.test_batch)
    batches = {}
    if os.path.isdir(location):
        kind = "folder"
        for member_name in wanted:
            member = os.path.join(location, member_name)
            if os.path.isfile(member):
                with open(member, "rb") as file:
                    batches[member_name] = _read_batch(
                        file, member, cifar, labels
                    )
    else:
        kind = "archive"
        # One streaming pass: random access into a .tar.gz decompresses it
        # again from the start for every member.
        with tarfile.open(location, "r|*") as archive:
            for member in archive:
                folder, member_name = posixpath.split(member.name)
                if (
                    member.isfile()
                    and member_name in wanted
                    and posixpath.basename(folder) == cifar.folder
                ):
                    batches[member_name] = _read_batch(
                        archive.extractfile(member),
                        f"{location}:{member.name}",
                        cifar,
                        labels,
                    )
    missing = [
        member_name for member_name in wanted if member_name not in batches
    ]
    if missing:
        raise DataUnavailableError(
            f"The {cifar.title} {kind} {location} lacks {', '.join(missing)}.",
            _cifar_how_to(cifar),
        )
    train = [batches[member_name] for member_name in cifar.train_batches]
    return Dataset(
        name=name,
        x_train=np.concatenate([images for images, _ in train]),
        y_train=np.concatenate([labels for _, labels in train]),
        x_test=batches[cifar.test_batch][0],
        y_test=batches[cifar.test_batch][1],
        num_classes=labels.num_classes,
        source_note=f"{kind}:{os.path.abspath(location)}",
    )


# What the batches of the CIFAR python archives need, and no more: their
# dicts, lists, bytes and ints are pickle opcodes; NumPy arrays and dtypes
# are rebuilt by these functions. `numpy.core` is the NumPy 1 name the
# original archives use, `numpy._core` NumPy 2's. Protocol 2 pickles made
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
                f"refused to load `{module}.{name}`: a CIFAR batch holds "
                "only dicts, lists, bytes, ints and NumPy arrays"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id")


_IMAGE_BYTES = 3 * 32 * 32


def _read_batch(file, where, cifar, labels):
    # The format of the original archives: a pickled dict whose b"data"
    # holds one image per row as 3x32x32 uint8, channels first, and whose
    # `labels.key` (b"labels"; CIFAR-100: b"fine_labels", b"coarse_labels")
    # holds one int per row.
    try:
        batch = _BatchUnpickler(file, encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 (any failure: not a batch)
        raise DataFormatError(
            f"{where} is not a {cifar.title} batch: unpickling it failed "
            f"({type(error).__name__}: {error}). kpool never runs code from "
            "a data file; if this file is not the original archive's, it "
            "may be malicious."
        ) from None
    is_dict = isinstance(batch, dict)
    images = batch.get(b"data") if is_dict else None
    values = batch.get(labels.key) if is_dict else None
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 2
        or images.shape[1] != _IMAGE_BYTES
        or not isinstance(values, list)
        or len(values) != len(images)
        or not all(
            type(label) is int and 0 <= label < labels.num_classes
            for label in values
        )
    ):
        raise DataFormatError(
            f"{where} is not a {cifar.title} batch: expected a dict with "
            f"b'data', a uint8 array (N, {_IMAGE_BYTES}), and "
            f"{labels.key!r}, a list of N ints in "
            f"0..{labels.num_classes - 1}. Received: "
            f"{_describe_batch(batch, labels.key)}"
        )
    images = images.reshape(-1, 3, 32, 32)
    return (
        np.ascontiguousarray(images.transpose(0, 2, 3, 1)),
        np.asarray(values, np.int32),
    )


def _describe_batch(batch, label_key):
    if not isinstance(batch, dict):
        return type(batch).__name__
    parts = []
    for key in (b"data", label_key):
        value = batch.get(key)
        if isinstance(value, np.ndarray):
            parts.append(f"{key!r}: array {value.shape} {value.dtype}")
        elif isinstance(value, list):
            parts.append(f"{key!r}: list of {len(value)}")
        else:
            parts.append(f"{key!r}: {type(value).__name__}")
    return ", ".join(parts)


def _load_tfds(
    name,
    data_dir,
    download,
    *,
    splits=("train", "test"),
    label_key="label",
    image_size=None,
    dataset_name=None,
):
    """An image-classification set of tensorflow-datasets: its `image`
    feature and its `label_key` feature (a ClassLabel)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataUnavailableError(
            f"tensorflow-datasets is not importable ({error})",
            "pip install tensorflow tensorflow-datasets",
        ) from None
    where = f"tfds:{name}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError as error:  # tfds's DatasetNotFoundError among them
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(
            f"`data.name` must name a tensorflow-datasets dataset "
            f"(tfds.list_builders() lists them): {first_line} Received: "
            f"data.name={name!r}"
        ) from None
    image_shape = _tfds_image_shape(tfds, builder, label_key, name)
    if image_size is None and None in image_shape[:2]:
        raise ValueError(
            f"`data.image_size` must be set for {where}: its images vary in "
            f"size (feature shape {image_shape}). Received: "
            "data.image_size=None"
        )
    if not builder.is_prepared():
        if not download:
            raise DataUnavailableError(
                f"tensorflow-datasets has not prepared {name} in "
                f"{builder.data_dir} and data.download is false",
                _TFDS_HOW_TO,
            )
        print(
            f"Downloading {name} with tensorflow-datasets to "
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
                f"the tensorflow-datasets download of {name} failed "
                f"({type(error).__name__}: {error})"
            ) from error
    try:
        import tensorflow  # noqa: F401
    except ImportError as error:
        raise DataUnavailableError(
            f"tensorflow-datasets holds {name} in {builder.data_dir}, but "
            f"reading it needs tensorflow ({error})",
            "pip install tensorflow",
        ) from None
    _check_tfds_splits(builder, splits, where)
    num_classes = builder.info.features[label_key].num_classes
    arrays = []
    for split in splits:
        images, labels = _tfds_split(
            tfds, builder, split, label_key, image_size, where
        )
        _check_labels(labels, num_classes, split, where)
        arrays.append((images, labels))
    note = f"tfds:{builder.data_dir}"
    if image_shape[2] == 1:
        note += " (grey images repeated into 3 channels)"
    return Dataset(
        name=dataset_name or where,
        x_train=arrays[0][0],
        y_train=arrays[0][1],
        x_test=arrays[1][0],
        y_test=arrays[1][1],
        num_classes=num_classes,
        source_note=note,
    )


def _tfds_image_shape(tfds, builder, label_key, name):
    """The shape of the `image` feature, once the set is known to be one
    of images and class labels."""
    features = builder.info.features
    image = features["image"] if "image" in features else None
    label = features[label_key] if label_key in features else None
    shape = getattr(image, "shape", ())
    if (
        not isinstance(image, tfds.features.Image)
        or not isinstance(label, tfds.features.ClassLabel)
        or len(shape) != 3
        or shape[2] not in (1, 3)
    ):
        found = ", ".join(
            f"{key} ({type(feature).__name__}"
            f"{f' {feature.shape}' if key == 'image' else ''})"
            for key, feature in features.items()
        )
        raise ValueError(
            "`data.name` must name an image-classification dataset: one "
            "with an `image` feature (an Image of shape (height, width, 1 "
            f"or 3)) and a `{label_key}` feature (a ClassLabel). Received: "
            f"data.name={name!r}, whose features are {found}"
        )
    return shape


def _check_tfds_splits(builder, splits, where):
    available = builder.info.splits
    # Empty only under tfds.testing.mock_data, which makes up any split.
    if not available:
        return
    for key, split in zip(("train_split", "test_split"), splits, strict=True):
        try:
            available[split]
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"`data.{key}` must be a split of {where}, which has "
                f"{', '.join(available)} ({error}). Name both splits in "
                "tfds's syntax, e.g. --set data.train_split='train[:90%]' "
                "--set data.test_split='train[90%:]'. Received: "
                f"data.{key}={split!r}"
            ) from None


def _tfds_split(tfds, builder, split, label_key, image_size, where):
    dataset = builder.as_dataset(split=split, shuffle_files=False).map(
        lambda example: (example["image"], example[label_key])
    )
    varying = None in builder.info.features["image"].shape[:2]
    images, labels = [], []
    # Images of one size in batches (tfds.load(batch_size=-1) aborted the
    # process under tfds.testing.mock_data); of many sizes one by one, each
    # resized before they are stacked.
    for image, label in tfds.as_numpy(
        dataset if varying else dataset.batch(10000)
    ):
        if varying:
            image = _resized(_rgb(image[None]), image_size)
        images.append(_rgb(image))
        labels.append(np.reshape(label, -1))
    if not images:
        raise DataFormatError(
            f"The split {split!r} of {where} in {builder.data_dir} holds no "
            "examples."
        )
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def _check_labels(labels, num_classes, split, where):
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise DataFormatError(
            f"The split {split!r} of {where} must hold labels "
            f"0..{num_classes - 1}. Received: a label {bad[0]} (-1 marks an "
            "unlabelled example in tensorflow-datasets: choose labelled "
            "splits with data.train_split and data.test_split)"
        )


def _rgb(images):
    """Grey images `(N, height, width, 1)` repeated into 3 channels."""
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    return images


def _load_folder(path, test_path, test_fraction, image_size, seed):
    """Images in class subfolders, read with Pillow on every backend.

    keras.utils.image_dataset_from_directory returns a tf.data.Dataset
    (or, with `format="grain"`, a Grain dataset): it needs TensorFlow or
    Grain whatever the Keras backend, and TensorFlow's resize gives other
    pixels than Pillow's. One reader keeps the data, and so each run's
    numbers, the same with or without TensorFlow. The layout and the class
    order (sorted folder names) are Keras's.
    """
    path = os.fspath(path)
    class_names, files = _index_folder(path, "path")
    empty = [
        name
        for name, found in zip(class_names, files, strict=True)
        if not found
    ]
    if empty or len(class_names) < 2:
        raise DataFormatError(
            f"`data.path`={path!r} must hold at least 2 class subfolders, "
            f"each with images ({', '.join(IMAGE_EXTENSIONS)}). Received: "
            f"{len(class_names)} subfolders; without images: "
            f"{_some(empty)}"
        )
    if test_path is not None:
        test_path = os.fspath(test_path)
        test_class_names, test_files = _index_folder(test_path, "test_path")
        if test_class_names != class_names or not any(test_files):
            raise DataFormatError(
                f"`data.test_path`={test_path!r} must hold images in the "
                f"class subfolders of data.path ({_some(class_names)}). "
                f"Received: subfolders {_some(test_class_names)}, "
                f"{sum(map(len, test_files))} images"
            )
        train = _labelled(files)
        test = _labelled(test_files)
        held_out = f"test: folder:{os.path.abspath(test_path)}"
    else:
        train, test = _hold_out(files, class_names, test_fraction, seed, path)
        held_out = f"test: {test_fraction} of each class (seed {seed})"
    x_train = _read_images(train, image_size, "path")
    x_test = _read_images(
        test, image_size, "test_path" if test_path else "path"
    )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise _sizes_differ(x_train[0], train[0][0], x_test[0], test[0][0])
    return Dataset(
        name=f"folder:{os.path.basename(os.path.normpath(path))}",
        x_train=x_train,
        y_train=np.array([label for _, label in train], np.int32),
        x_test=x_test,
        y_test=np.array([label for _, label in test], np.int32),
        num_classes=len(class_names),
        source_note=f"folder:{os.path.abspath(path)}; {held_out}",
    )


def _index_folder(path, key):
    """The sorted class subfolders of `path` and, per class, its image
    files in sorted order."""
    if not os.path.isdir(path):
        raise DataUnavailableError(
            f"`data.{key}`={path!r} is not a folder.",
            f"Point it at a folder of images laid out as {_FOLDER_LAYOUT}.",
        )
    with os.scandir(path) as entries:
        class_names = sorted(
            entry.name
            for entry in entries
            if entry.is_dir() and not entry.name.startswith(".")
        )
    if not class_names:
        loose = [name for name in os.listdir(path) if _is_image_file(name)]
        raise DataFormatError(
            f"`data.{key}`={path!r} must hold one subfolder per class; it "
            f"holds no subfolders (and image files: {len(loose)}). "
            f"Expected: {_FOLDER_LAYOUT}."
        )
    files = []
    for name in class_names:
        found = []
        for root, _, names in sorted(os.walk(os.path.join(path, name))):
            found += [
                os.path.join(root, file)
                for file in sorted(names)
                if _is_image_file(file)
            ]
        files.append(found)
    return class_names, files


def _is_image_file(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _labelled(files):
    return [
        (file, label) for label, found in enumerate(files) for file in found
    ]


def _hold_out(files, class_names, fraction, seed, path):
    """Seeded per-class split: `fraction` of each class (rounded, at least
    one image on each side) is held out for testing."""
    rng = np.random.default_rng([seed, 2])
    train, test = [], []
    for label, (name, found) in enumerate(zip(class_names, files, strict=True)):
        if len(found) < 2:
            raise DataFormatError(
                f"`data.test_fraction` needs at least 2 images in each "
                f"class of `data.path`={path!r}, one to train on and one to "
                f"test. Received: {len(found)} in class {name!r}"
            )
        count = min(max(round(fraction * len(found)), 1), len(found) - 1)
        held = set(rng.permutation(len(found))[:count].tolist())
        for index, file in enumerate(found):
            (test if index in held else train).append((file, label))
    return train, test


def _read_images(items, image_size, key):
    image_module = _pillow()
    images = []
    for file, _ in items:
        try:
            with image_module.open(file) as image:
                # As image_dataset_from_directory's color_mode="rgb":
                # grey, palette and RGBA images become RGB.
                images.append(
                    np.asarray(_resize(image.convert("RGB"), image_size))
                )
        except Exception as error:  # noqa: BLE001 (any failure: no image)
            raise DataFormatError(
                f"{file} (under `data.{key}`) cannot be read as an image "
                f"({type(error).__name__}: {error})."
            ) from None
        if images[-1].shape != images[0].shape:
            raise _sizes_differ(images[0], items[0][0], images[-1], file)
    return np.stack(images)


def _sizes_differ(image, file, other_image, other_file):
    return DataFormatError(
        "The images of a folder must share one size, or set "
        "`data.image_size` to resize them. Received: "
        f"{image.shape[:2]} ({file}) and {other_image.shape[:2]} "
        f"({other_file})"
    )


def _pillow():
    try:
        from PIL import Image
    except ImportError as error:
        raise DataUnavailableError(
            f"Reading and resizing images needs Pillow ({error}).",
            "pip install pillow",
        ) from None
    return Image


def _resize(image, image_size):
    """A Pillow image at `image_size` x `image_size`: bilinear, which
    Pillow antialiases when it shrinks."""
    if image_size is None or image.size == (image_size, image_size):
        return image
    return image.resize((image_size, image_size), _pillow().Resampling.BILINEAR)


def _resized(images, image_size):
    """uint8 images `(N, height, width, 3)` at `image_size`."""
    if image_size is None or images.shape[1:3] == (image_size, image_size):
        return images
    image_module = _pillow()
    return np.stack(
        [
            np.asarray(_resize(image_module.fromarray(image), image_size))
            for image in images
        ]
    )


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
