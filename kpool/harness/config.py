"""Typed experiment configs: YAML plus dotted overrides, checked up front.

A config is plain data (YAML). `load_config` merges `--set key.sub=value`
overrides into it and converts it into frozen dataclasses. Every key is
checked before anything trains: an unknown or misspelt key, a value of the
wrong type or outside the allowed set fails at once with a `ConfigError`
naming the dotted key and what is allowed.
"""

import dataclasses
import hashlib
import json
import types
import typing
from typing import Literal, Optional, Union

DOWNSAMPLING_CHOICES = (
    "max",
    "avg",
    "min",
    "mixed",
    "mixed_learned",
    "gated",
    "stochastic",
    "blurpool",
    "maxblurpool",
    "softpool",
    "tree",
    "median",
    "lp",
    "fractional",
    "strided",
    "allconv",
    "blurstrided",
    "dilated",
)
MODEL_FAMILIES = ("small_cnn", "model_c", "vgg", "resnet")


class ConfigError(ValueError):
    """A config key is unknown or its value is not allowed."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # One of MODEL_FAMILIES.
    family: str = "small_cnn"
    # Channels of the first stage; `None` takes the family's default.
    width: Optional[int] = None
    # Classifier head: global average pooling, global max pooling,
    # flatten + dense, generalized-mean pooling (GeM) or a spatial pyramid
    # (SPP, bins 1, 2, 4) + dense.
    head: Literal["gap", "gmp", "flatten", "gem", "spp"] = "gap"
    # Where the downsampling op sits relative to the activation before it:
    # min pooling right after a ReLU outputs mostly zeros.
    pool_position: Literal["after_activation", "before_activation"] = (
        "after_activation"
    )
    pool_size: int = 2
    pool_strides: Optional[int] = None
    pool_padding: Literal["valid", "same"] = "same"
    dropout: float = 0.0
    batch_norm: bool = True
    # Weight of the old value in BN's moving mean and variance (Keras's
    # `momentum`; PyTorch's `momentum` is 1 minus it). Keras's default 0.99
    # averages over ~100 steps and still weighs its initial statistics by
    # 0.99**140 = 0.24 after 140 steps, so short runs were evaluated with
    # unsettled statistics; 0.9 (PyTorch's default) leaves 0.9**50 = 0.005
    # after 50 steps.
    batch_norm_momentum: float = 0.9
    # Internal layout; inputs are always channels_last images.
    data_format: Literal["channels_last", "channels_first"] = "channels_last"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # The keys added after the first release default to null, so that a
    # results directory written before them still matches its config.
    source: Literal[
        "cifar10", "cifar100", "tfds", "folder", "synthetic", "npz"
    ] = "cifar10"
    # Archive or extracted folder (cifar10, cifar100), .npz file (npz), or
    # the folder of class subfolders to train on (folder).
    path: Optional[str] = None
    # tensorflow-datasets data_dir (cifar10, cifar100, tfds).
    data_dir: Optional[str] = None
    # tfds: the tensorflow-datasets name, e.g. "svhn_cropped".
    name: Optional[str] = None
    # tfds: the splits to train and test on; null means "train" / "test".
    train_split: Optional[str] = None
    test_split: Optional[str] = None
    # folder: the held-out images, as a second folder of class subfolders
    # or as a seeded, per-class fraction of `path` (exactly one of them).
    test_path: Optional[str] = None
    test_fraction: Optional[float] = None
    # Height and width every image is resized to; null keeps the data's
    # own size (the images of a folder or tfds set must then share one).
    image_size: Optional[int] = None
    # cifar100: the 100 "fine" or the 20 "coarse" classes; null means fine.
    label_mode: Optional[Literal["fine", "coarse"]] = None
    # Train / test subset sizes; `None` uses the whole split. They are also
    # the size of the synthetic set (CIFAR-10's 50000 / 10000 by default,
    # and at most).
    subset: Optional[int] = None
    test_subset: Optional[int] = None
    # Seed of the subsets and of the synthetic set: one data set for every
    # run of the experiment, whatever the run's seed.
    seed: int = 0
    # Let tensorflow-datasets download CIFAR-10 when it is not prepared.
    download: bool = False
    # Used, loudly and recorded in every row, when `source` is unavailable.
    # It covers only the data the config file names: an override of
    # `data.source` or `data.path` turns it off (see `config_from_dict`).
    fallback: Optional[Literal["synthetic"]] = None
    augment: bool = True


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["constant", "cosine", "step", "onecycle"] = "cosine"
    warmup_epochs: float = 0.0
    # "step": multiply the rate by `decay_factor` at these epochs.
    decay_epochs: tuple[int, ...] = ()
    decay_factor: float = 0.1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    label_smoothing: float = 0.0


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # Shift consistency and shifted accuracy (Zhang 2019) after training.
    shift_metrics: bool = True
    # Fixed, so every downsampling choice sees the same shifts.
    seed: int = 0
    # Test images used for the shift metrics; `None` uses all.
    max_images: Optional[int] = 2000
    batch_size: int = 500


@dataclasses.dataclass(frozen=True)
class LogConfig:
    # Keras's TensorBoard logs of each run, in
    # OUTPUT_DIR/NAME/tensorboard/<run_id>.
    tensorboard: bool = False


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    # The choice every other one is compared with, pair by pair over the
    # seeds both have, in summary.csv, `kpool report` and the plots. Null
    # takes max pooling, or the experiment's first choice when it has no
    # max pooling; a name must be one of the experiment's `downsampling`.
    baseline: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = "results"
    model: ModelConfig = ModelConfig()
    downsampling: tuple[str, ...] = ("max",)
    # Extra keyword arguments per choice, e.g.
    # {"mixed": {"alpha": 0.75, "granularity": "channel"}}, or a named
    # variant of a choice: {"maxblurpool_f5": {"choice": "maxblurpool",
    # "filter_size": 5}} (see `resolve_downsampling`).
    downsampling_options: dict = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    jit_compile: Union[bool, Literal["auto"]] = "auto"
    # Turns on deterministic ops (slower on some backends).
    deterministic: bool = False
    # "data_parallel": `keras.distribution.DataParallel` over every local
    # device (JAX backend only); `train.batch_size` is the global batch.
    distribution: Optional[Literal["data_parallel"]] = None
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    report: ReportConfig = ReportConfig()

    def to_dict(self):
        return to_dict(self)


def resolve_downsampling(name, downsampling_options):
    """The choice and keyword arguments of one `downsampling` entry.

    An entry is a choice (`"maxblurpool"`), whose options are
    `downsampling_options[choice]`, or a variant: a name of its own whose
    options name the choice, e.g.
    `downsampling_options["maxblurpool_f5"] = {"choice": "maxblurpool",
    "filter_size": 5}`. A variant's options are all it gets; the choice's
    own options do not apply to it.

    Returns:
        `(choice, kwargs)`.
    """
    kwargs = dict(downsampling_options.get(name) or {})
    return kwargs.pop("choice", name), kwargs


def to_dict(config):
    """Plain, JSON- and YAML-safe data for a config dataclass."""
    data = dataclasses.asdict(config)
    return json.loads(json.dumps(data))


def config_hash(data):
    """A short stable hash of JSON-able data (used to key runs)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _describe(tp):
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value, tp, key):
    """Checks `value` against the annotation `tp`; returns the typed value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {
            type(a) for a in typing.get_args(tp)
        }:
            return value
    elif origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, key)
            except ConfigError:
                pass
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            item_type = typing.get_args(tp)[0]
            return tuple(
                _convert(v, item_type, f"{key}[{i}]")
                for i, v in enumerate(value)
            )
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(
        f"`{key}` must be {_describe(tp)}. Received: {key}={value!r}"
    )


def _build(cls, data, prefix=""):
    if not isinstance(data, dict):
        raise ConfigError(
            f"`{prefix or 'config'}` must be a mapping of keys to values. "
            f"Received: {data!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"`{prefix}`" if prefix else "the config"
        raise ConfigError(
            f"Unknown key `{_join(prefix, unknown[0])}` in {where}. "
            f"Allowed keys: {', '.join(sorted(fields))}"
        )
    values = {
        name: _convert(value, hints[name], _join(prefix, name))
        for name, value in data.items()
    }
    return cls(**values)


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _require(ok, key, allowed, value):
    if not ok:
        raise ConfigError(
            f"`{key}` must be {allowed}. Received: {key}={value!r}"
        )


def _check(config):
    """Cross-field checks that types alone cannot express."""
    require = _require
    model, train, data = config.model, config.train, config.data
    require(
        model.family in MODEL_FAMILIES,
        "model.family",
        f"one of {', '.join(MODEL_FAMILIES)}",
        model.family,
    )
    require(
        len(config.downsampling) > 0,
        "downsampling",
        "a non-empty list",
        list(config.downsampling),
    )
    for name, options in config.downsampling_options.items():
        key = f"downsampling_options.{name}"
        require(
            isinstance(options, dict),
            key,
            "a mapping of keyword arguments",
            options,
        )
        if name in DOWNSAMPLING_CHOICES:
            require(
                "choice" not in options,
                f"{key}.choice",
                "absent for a choice's own options (only a variant, under "
                "a name of its own, names its choice)",
                options.get("choice"),
            )
        else:
            require(
                options.get("choice") in DOWNSAMPLING_CHOICES,
                f"{key}.choice",
                f"one of {', '.join(DOWNSAMPLING_CHOICES)} (the options of "
                f"{name!r}, which is no choice, define a variant)",
                options.get("choice"),
            )
    for i, name in enumerate(config.downsampling):
        require(
            name in DOWNSAMPLING_CHOICES or name in config.downsampling_options,
            f"downsampling[{i}]",
            f"one of {', '.join(DOWNSAMPLING_CHOICES)} or a variant defined "
            "in downsampling_options",
            name,
        )
    require(
        len(set(config.downsampling)) == len(config.downsampling),
        "downsampling",
        "a list without repeats",
        list(config.downsampling),
    )
    require(
        len(config.seeds) > 0, "seeds", "a non-empty list", list(config.seeds)
    )
    # A repeated seed would be one run (the same run_id) counted as two
    # pairs in the paired statistics.
    for seed in dict.fromkeys(config.seeds):
        require(
            config.seeds.count(seed) == 1,
            "seeds",
            f"a list without repeats (seed {seed} is repeated)",
            list(config.seeds),
        )
    require(
        config.report.baseline is None
        or config.report.baseline in config.downsampling,
        "report.baseline",
        "null or one of the experiment's downsampling choices "
        f"({', '.join(config.downsampling)})",
        config.report.baseline,
    )
    positive = {
        "train.epochs": train.epochs,
        "train.batch_size": train.batch_size,
        "model.pool_size": model.pool_size,
        "eval.batch_size": config.eval.batch_size,
    }
    optional_positive = {
        "model.width": model.width,
        "model.pool_strides": model.pool_strides,
        "data.subset": data.subset,
        "data.test_subset": data.test_subset,
        "eval.max_images": config.eval.max_images,
    }
    for key, value in positive.items():
        require(value > 0, key, "a positive integer", value)
    for key, value in optional_positive.items():
        require(value is None or value > 0, key, "null or > 0", value)
    require(
        train.optimizer.learning_rate > 0,
        "train.optimizer.learning_rate",
        "> 0",
        train.optimizer.learning_rate,
    )
    require(
        0.0 <= model.dropout < 1.0, "model.dropout", "in [0, 1)", model.dropout
    )
    require(
        0.0 <= model.batch_norm_momentum < 1.0,
        "model.batch_norm_momentum",
        "in [0, 1)",
        model.batch_norm_momentum,
    )
    require(
        0.0 <= train.label_smoothing < 1.0,
        "train.label_smoothing",
        "in [0, 1)",
        train.label_smoothing,
    )
    check_data(data)
    require(
        config.name and "/" not in config.name,
        "name",
        "a non-empty name without '/'",
        config.name,
    )


# Which keys each source reads beyond the common ones, and what it needs.
_SOURCE_KEYS = {
    "tfds": ("name", "train_split", "test_split"),
    "folder": ("test_path", "test_fraction"),
    "cifar100": ("label_mode",),
}


def check_data(data):
    """Checks a `DataConfig` for what its types cannot express: the keys
    its source needs, and no key of another source.

    Raises:
        ConfigError: naming the key and what it must be.
    """
    source = data.source
    for owner, keys in _SOURCE_KEYS.items():
        if owner == source:
            continue
        for key in keys:
            _require(
                getattr(data, key) is None,
                f"data.{key}",
                f"null unless data.source is '{owner}' (received "
                f"data.source={source!r})",
                getattr(data, key),
            )
    needs_path = {
        "npz": "the path of an .npz file",
        "folder": "a folder holding one subfolder of images per class",
    }
    _require(
        source not in needs_path or data.path is not None,
        "data.path",
        f"{needs_path.get(source)} when data.source is {source!r}",
        data.path,
    )
    if source == "tfds":
        _require(
            isinstance(data.name, str) and data.name.strip() != "",
            "data.name",
            "a tensorflow-datasets name (e.g. 'cifar100', 'svhn_cropped') "
            "when data.source is 'tfds'",
            data.name,
        )
    if source == "folder" and (data.test_path is None) == (
        data.test_fraction is None
    ):
        raise ConfigError(
            "Exactly one of `data.test_path` and `data.test_fraction` must "
            "be set when data.source is 'folder': the held-out images, as a "
            "second folder laid out as data.path or as a fraction of each "
            f"class of data.path. Received: data.test_path={data.test_path!r}"
            f", data.test_fraction={data.test_fraction!r}"
        )
    _require(
        data.test_fraction is None or 0 < data.test_fraction < 1,
        "data.test_fraction",
        "null or in (0, 1)",
        data.test_fraction,
    )
    least = 8 if source == "synthetic" else 1
    _require(
        data.image_size is None or data.image_size >= least,
        "data.image_size",
        f"null or >= {least}",
        data.image_size,
    )


def parse_override(text):
    """Parses `key.sub=value`; the value is read as YAML (`3`, `[1, 2]`)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"An override must look like `key.sub=value`. Received: {text!r}"
        )
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data, overrides):
    """Returns a copy of `data` with the dotted `overrides` applied."""
    data = json.loads(json.dumps(data))
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"Cannot set `{key}`: `{prefix}` is not a mapping."
                )
            node = child
        node[parts[-1]] = value
    return data


# Keys that name the data a user wants.
DATA_CHOICE_KEYS = (
    "data.source",
    "data.path",
    "data.name",
    "data.train_split",
    "data.test_split",
    "data.test_path",
    "data.label_mode",
)


def config_from_dict(data, overrides=()):
    """Builds and checks an `ExperimentConfig` from plain data.

    A `data.fallback` of `data` stands in only for the data that `data`
    names: data named by an override of `DATA_CHOICE_KEYS` must load or
    fail, so such an override turns the fallback off (unless the overrides
    set `data.fallback` themselves).
    """
    merged = apply_overrides(data or {}, overrides)
    overridden = {parse_override(text)[0] for text in overrides}
    if overridden & set(DATA_CHOICE_KEYS) and "data.fallback" not in overridden:
        merged["data"]["fallback"] = None
    config = _build(ExperimentConfig, merged)
    _check(config)
    return config


def load_config(path, overrides=()):
    """Reads a YAML config file, applies overrides, and checks it."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML: {e}") from e
    return config_from_dict(data, overrides)
