"""Runs an experiment: the grid of downsampling choices x seeds, one row each.

The grid is expanded in a fixed order, seed-major (every choice with the
first seed, then every choice with the next), so that a partial or sharded
run already compares all choices. Each run is keyed by `run_id`, the hash
of what determines its numbers:

- its single-run config: the experiment's config with `downsampling` and
  `seeds` narrowed to the run's one choice and seed, and
  `downsampling_options` to that choice's options. Keys that cannot change
  the numbers are left out (`NON_RESULT_KEYS`: the experiment's name, where
  results go, whether data may be downloaded or replaced by a fallback, and
  what is logged);
- the data set actually used (`synthetic` after a fallback, so that real
  CIFAR-10 results are not mistaken for synthetic ones later);
- the Keras backend.

A run whose run_id has an "ok" row in the experiment directory is skipped;
failed and unfinished ones are run again. Each finished run is written at
once, atomically (see `kpool.harness.results`), so a killed process loses
at most the run in progress.
"""

import dataclasses
import importlib
import importlib.util
import json
import pathlib
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone

from kpool.harness import report_file, results
from kpool.harness.config import ConfigError, config_hash, resolve_downsampling

NON_RESULT_KEYS = (
    "name",
    "output_dir",
    "data.download",
    "data.fallback",
    "log",
    "report",
)
# Keys added after the first release: left out of a run's key while null
# (their default, today's behaviour), so that the runs of an earlier
# results directory keep their run_ids and are not trained again.
KEYS_ADDED_LATER = (
    "data.name",
    "data.train_split",
    "data.test_split",
    "data.test_path",
    "data.test_fraction",
    "data.image_size",
    "data.label_mode",
)
# Grid keys: an experiment directory may grow along them; every other key
# must match the config its earlier results were produced with.
GRID_KEYS = ("downsampling", "seeds")
# Under the experiment directory: one TensorBoard log directory per run_id.
TENSORBOARD_DIR = "tensorboard"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One cell of the grid; `index` is its place in the grid order."""

    index: int
    downsampling: str
    seed: int


@dataclasses.dataclass
class Outcome:
    directory: pathlib.Path
    trained: list
    skipped: list
    failed: list


def grid(config):
    """Every run of the experiment, seed-major, in a deterministic order."""
    cells = [(d, s) for s in config.seeds for d in config.downsampling]
    return [RunSpec(i, d, s) for i, (d, s) in enumerate(cells)]


def parse_shard(text):
    """`"i/n"` (1-based: shards 1/n ... n/n) -> `(i, n)`."""
    index, sep, count = str(text).partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = 0
    if not sep or not 1 <= index <= count:
        raise ConfigError(
            "`--shard` must be i/n with integers 1 <= i <= n, e.g. 1/4. "
            f"Received: --shard={text!r}"
        )
    return index, count


def select_shard(specs, shard):
    """Shard `(i, n)` takes every n-th run of the grid, starting at run i."""
    if shard is None:
        return list(specs)
    index, count = shard
    return [spec for spec in specs if spec.index % count == index - 1]


def run_config(config, downsampling, seed):
    """The single-run config (plain data) of one cell of the grid."""
    data = config.to_dict()
    data["downsampling"] = [downsampling]
    data["seeds"] = [seed]
    options = config.downsampling_options.get(downsampling)
    data["downsampling_options"] = {downsampling: options} if options else {}
    return data


def _without(data, dotted_keys):
    data = json.loads(json.dumps(data))
    for key in dotted_keys:
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return data


def _null_keys(data, dotted_keys):
    """Those of `dotted_keys` whose value in `data` is null."""
    null = []
    for key in dotted_keys:
        node = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            null.append(key)
    return null


def run_id(single_run_config, dataset_name, backend):
    """The key of a run: see the module docstring."""
    omitted = (
        *NON_RESULT_KEYS,
        *_null_keys(single_run_config, KEYS_ADDED_LATER),
    )
    return config_hash(
        {
            "config": _without(single_run_config, omitted),
            "dataset": dataset_name,
            "backend": backend,
        }
    )


def _flatten(data, prefix=""):
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _check_directory_config(directory, data):
    """Refuses to mix results of different configs in one directory.

    The directory may grow along the grid (more choices or seeds); any other
    difference would put rows of different recipes into one summary.
    Returns the config to write there: `data` with the union of the grids.
    """
    import yaml

    path = directory / results.CONFIG_FILE
    if not path.exists():
        return data
    old = yaml.safe_load(path.read_text()) or {}
    ignored = (*NON_RESULT_KEYS, *GRID_KEYS)
    old_flat = _flatten(_without(old, ignored))
    new_flat = _flatten(_without(data, ignored))
    differences = [
        f"{key}: {old_flat.get(key)!r} -> {new_flat.get(key)!r}"
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key) != new_flat.get(key)
    ]
    if differences:
        raise ConfigError(
            f"{directory} holds results of a different config "
            f"({'; '.join(differences)}). Choose another `name` or "
            "`output_dir`, or remove the directory."
        )
    merged = dict(data)
    for key in GRID_KEYS:
        merged[key] = list(old.get(key, [])) + [
            v for v in data[key] if v not in old.get(key, [])
        ]
    return merged


def _check_downsampling_names(config):
    """The config knows every choice's name; this checks that this install
    of kpool has it."""
    from kpool.harness.models import downsampling_choices

    known = downsampling_choices()
    for i, name in enumerate(config.downsampling):
        choice, _ = resolve_downsampling(name, config.downsampling_options)
        if choice not in known:
            raise ConfigError(
                f"`downsampling[{i}]` must be one of {', '.join(known)}. "
                f"Received: downsampling[{i}]={name!r}"
            )


def _check_models(config, dataset):
    """Builds each choice's model once, so a bad option fails before any
    training rather than after hours of it."""
    import keras

    from kpool.harness.models import build_model

    for name in config.downsampling:
        try:
            build_model(
                config.model,
                name,
                num_classes=dataset.num_classes,
                input_shape=dataset.x_train.shape[1:],
                augment=config.data.augment,
                downsampling_options=config.downsampling_options,
            )
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"Cannot build model `{config.model.family}` with "
                f"downsampling {name!r} (options: "
                f"{config.downsampling_options.get(name) or {}}): {e}"
            ) from e
        finally:
            keras.backend.clear_session()


def load_data(config):
    """The experiment's data set, loaded once and shared by every run."""
    from kpool.harness.data import load_dataset

    data = config.data
    try:
        return load_dataset(
            data.source,
            path=data.path,
            data_dir=data.data_dir,
            name=data.name,
            train_split=data.train_split,
            test_split=data.test_split,
            test_path=data.test_path,
            test_fraction=data.test_fraction,
            image_size=data.image_size,
            label_mode=data.label_mode,
            subset=data.subset,
            test_subset=data.test_subset,
            download=data.download,
            fallback=data.fallback,
            seed=data.seed,
        )
    except ValueError as e:  # a bad `data.*` value, named in the message
        raise ConfigError(str(e)) from e


def _git(*args):
    # The commit of the kpool source that runs, not of the working directory.
    source = pathlib.Path(__file__).resolve().parent
    output = subprocess.run(
        ["git", "-C", str(source), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return output.stdout.strip()


def environment():
    """Versions and source state recorded with every run.

    `git_dirty` means tracked files differ from the commit; "unknown" when
    kpool does not run from a git checkout.
    """
    import keras

    backend = keras.backend.backend()
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", "unknown"
    return {
        "backend": backend,
        "backend_version": getattr(
            importlib.import_module(backend), "__version__", "unknown"
        ),
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _duration(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    return f"{minutes}m{seconds:02d}s"


def _plan(config, shard, directory, dataset_name, backend):
    """The selected runs as (spec, run_id, single-run config): those to
    train, and those already finished in `directory`."""
    finished = results.finished_run_ids(directory)
    todo, skipped = [], []
    for spec in select_shard(grid(config), shard):
        data = run_config(config, spec.downsampling, spec.seed)
        key = run_id(data, dataset_name, backend)
        (skipped if key in finished else todo).append((spec, key, data))
    return todo, skipped


def run_experiment(config, *, shard=None, verbose=1, out=None):
    """Runs the experiment's grid (or one shard of it); returns an Outcome.

    Everything that can be checked is checked before the first run trains:
    the config, the downsampling names, the data (a missing data set raises
    `kpool.harness.data.DataUnavailableError`) and every choice's model. A
    run that raises is recorded as "failed" and the next one starts; a
    KeyboardInterrupt stops the experiment.
    """
    import yaml

    def say(*parts):
        print(*parts, file=out or sys.stdout, flush=True)

    _check_downsampling_names(config)
    from kpool.harness.training import check_distribution

    check_distribution(config)
    _check_logging(config)
    # The data first: a missing file is the error to see, not a directory
    # that holds another config's results. `load_dataset` prints the
    # fallback banner.
    dataset = load_data(config)
    directory = pathlib.Path(config.output_dir) / config.name
    config_data = _check_directory_config(directory, config.to_dict())
    _check_models(config, dataset)
    env = environment()

    todo, skipped = _plan(
        config, shard, directory, dataset.name, env["backend"]
    )

    directory.mkdir(parents=True, exist_ok=True)
    with results.atomic_open(directory / results.CONFIG_FILE) as f:
        yaml.safe_dump(config_data, f, sort_keys=False)
    where = f"shard {shard[0]}/{shard[1]}: " if shard else ""
    say(
        f"{config.name}: {len(grid(config))} runs in the grid; {where}"
        f"{len(todo) + len(skipped)} selected, "
        f"{len(skipped)} finished already, {len(todo)} to train. "
        f"Results: {directory}"
    )

    shared = {
        "experiment": config.name,
        "dataset": dataset.name,
        "n_train": len(dataset.x_train),
        "n_test": len(dataset.x_test),
        "data_source_note": dataset.source_note,
        "data_fallback": bool(dataset.fallback),
    }
    start = time.monotonic()
    trained, failed = [], []
    for number, (spec, key, data) in enumerate(todo, start=1):
        elapsed = time.monotonic() - start
        done = len(trained) + len(failed)
        left = (
            f"left ~{_duration(elapsed / done * (len(todo) - done))}"
            if done
            else "left ~unknown"
        )
        say(
            f"== run {number} of {len(todo)} (downsampling={spec.downsampling}"
            f", seed={spec.seed}) elapsed {_duration(elapsed)}, {left}"
        )
        callbacks = _run_callbacks(config, directory, key)
        row, epochs = _train_one(config, spec, dataset, verbose, callbacks)
        row = {
            **shared,
            "run_id": key,
            **row,
            **{k: v for k, v in env.items() if k not in row},
            "run_config": json.dumps(data, sort_keys=True),
        }
        results.replace_run(_ordered(row), epochs, directory, shard)
        (trained if row["status"] == "ok" else failed).append(spec)
        if row["status"] != "ok":
            say(f"   run failed: {row['error']}")
    stamp = report_file.fingerprint(directory)
    all_runs, all_epochs = results.read_results([directory])
    if not all_runs.empty:
        _, text = results.write_summary(all_runs, all_epochs, directory, stamp)
        say(text)
    say(
        f"{config.name}: trained {len(trained)}, skipped {len(skipped)}, "
        f"failed {len(failed)} in {_duration(time.monotonic() - start)}. "
        f"Results: {directory}"
    )
    return Outcome(directory, trained, [spec for spec, *_ in skipped], failed)


def _check_logging(config):
    # Keras's TensorBoard callback writes with tf.summary on every backend,
    # and tf.summary needs the tensorboard package, which TensorFlow no
    # longer installs.
    if config.log.tensorboard:
        missing = [
            name
            for name in ("tensorflow", "tensorboard")
            if importlib.util.find_spec(name) is None
        ]
        if missing:
            raise ConfigError(
                "`log.tensorboard` needs TensorFlow and TensorBoard (Keras's "
                "TensorBoard callback writes with tf.summary on any backend): "
                f"pip install {' '.join(missing)}. Received: "
                "log.tensorboard=True"
            )


def _run_callbacks(config, directory, key):
    """Keras callbacks that log one run, as `config.log` asks."""
    if not config.log.tensorboard:
        return []
    import keras

    log_dir = directory / TENSORBOARD_DIR / key
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir))]


def _train_one(config, spec, dataset, verbose, callbacks=()):
    """Trains one run; returns its row values and epoch rows."""
    from kpool.harness.training import train_run

    row = {
        "status": "ok",
        "error": "",
        "model": config.model.family,
        "downsampling": spec.downsampling,
        "head": config.model.head,
        "seed": spec.seed,
        "precision": config.precision,
        "jit_compile": config.jit_compile,
        "epochs": config.train.epochs,
        "started_at": _now(),
    }
    epochs = []
    try:
        result = train_run(
            config,
            spec.downsampling,
            spec.seed,
            dataset,
            verbose=verbose,
            callbacks=list(callbacks),
        )
        row.update(result.metrics)
        epochs = list(result.epochs)
    except Exception as e:  # noqa: BLE001 (one bad run must not end the rest)
        traceback.print_exc()
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
    row["finished_at"] = _now()
    return row, epochs


# Leading columns of runs.csv; the rest follow in the order they arrive.
LEADING_COLUMNS = (
    "experiment",
    "run_id",
    "status",
    "model",
    "downsampling",
    "head",
    "seed",
    "dataset",
    "n_train",
    "n_test",
    "test_accuracy",
    "best_test_accuracy",
    "train_images_per_sec",
)


def _ordered(row):
    first = {k: row[k] for k in LEADING_COLUMNS if k in row}
    return {**first, **{k: v for k, v in row.items() if k not in first}}
