import importlib.util
import json

import pytest

from kpool.harness import experiment
from kpool.harness.config import ConfigError, config_from_dict


@pytest.fixture
def config():
    return config_from_dict(
        {
            "downsampling": ["max", "avg", "stochastic"],
            "seeds": [0, 1],
            "downsampling_options": {"stochastic": {"seed": 3}},
        }
    )


def test_grid_is_seed_major(config):
    cells = [(s.downsampling, s.seed) for s in experiment.grid(config)]
    assert cells == [
        ("max", 0),
        ("avg", 0),
        ("stochastic", 0),
        ("max", 1),
        ("avg", 1),
        ("stochastic", 1),
    ]
    assert [s.index for s in experiment.grid(config)] == list(range(6))


@pytest.mark.parametrize("count", [1, 2, 4, 6, 7])
def test_shards_partition_the_grid(config, count):
    specs = experiment.grid(config)
    shards = [
        experiment.select_shard(specs, (i, count)) for i in range(1, count + 1)
    ]
    chosen = [spec for shard in shards for spec in shard]
    assert sorted(chosen, key=lambda s: s.index) == specs
    assert len(chosen) == len(specs)
    # Shard i takes runs i, i + n, ... (1-based).
    assert [s.index for s in shards[0]] == list(range(0, len(specs), count))


@pytest.mark.parametrize(
    "text, expected", [("1/1", (1, 1)), ("2/4", (2, 4)), ("4/4", (4, 4))]
)
def test_parse_shard(text, expected):
    assert experiment.parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2"])
def test_parse_shard_errors(text):
    with pytest.raises(ConfigError, match="`--shard` must be i/n"):
        experiment.parse_shard(text)


def run_ids(config, dataset="synthetic", backend="jax"):
    return [
        experiment.run_id(
            experiment.run_config(config, s.downsampling, s.seed),
            dataset,
            backend,
        )
        for s in experiment.grid(config)
    ]


def test_run_config_is_a_single_run(config):
    data = experiment.run_config(config, "stochastic", 1)
    assert data["downsampling"] == ["stochastic"]
    assert data["seeds"] == [1]
    assert data["downsampling_options"] == {"stochastic": {"seed": 3}}
    assert experiment.run_config(config, "max", 1)["downsampling_options"] == {}
    # The single-run config is itself a valid experiment config.
    single = config_from_dict(data)
    assert experiment.grid(single)[0].downsampling == "stochastic"


def test_run_ids_are_distinct_and_stable(config):
    ids = run_ids(config)
    assert len(set(ids)) == len(ids)
    assert run_ids(config) == ids


def test_run_id_ignores_what_cannot_change_results(config):
    ids = run_ids(config)
    renamed = config_from_dict(
        {
            **config.to_dict(),
            "name": "other",
            "output_dir": "/elsewhere",
            "data": {"download": True, "fallback": "synthetic"},
            "log": {"tensorboard": True},
        }
    )
    assert run_ids(renamed) == ids
    # The grid around a run does not change it either.
    wider = config_from_dict(
        {**config.to_dict(), "downsampling": ["min", "avg"], "seeds": [1]}
    )
    assert run_ids(wider)[1] == ids[4]


@pytest.mark.parametrize(
    "change",
    [
        {"train": {"epochs": 99}},
        {"model": {"width": 8}},
        {"data": {"subset": 100}},
        {"downsampling_options": {"max": {"padding": "valid"}}},
    ],
)
def test_run_id_changes_with_what_changes_results(config, change):
    changed = config_from_dict({**config.to_dict(), **change})
    assert run_ids(changed)[0] != run_ids(config)[0]


def test_run_id_of_a_config_from_before_the_later_keys(config):
    # A results directory written before the later data keys existed keeps
    # its run_ids: those keys at null are left out of the key, and a value
    # given to one of them changes it.
    single = experiment.run_config(config, "max", 0)
    for key in experiment.KEYS_ADDED_LATER:
        assert single["data"][key.split(".")[1]] is None
    earlier = json.loads(json.dumps(single))
    for key in experiment.KEYS_ADDED_LATER:
        del earlier["data"][key.split(".")[1]]
    assert experiment.run_id(single, "synthetic", "jax") == experiment.run_id(
        earlier, "synthetic", "jax"
    )
    sized = json.loads(json.dumps(single))
    sized["data"]["image_size"] = 16
    assert experiment.run_id(sized, "synthetic", "jax") != experiment.run_id(
        single, "synthetic", "jax"
    )


def test_run_id_depends_on_data_and_backend(config):
    ids = run_ids(config)
    assert run_ids(config, dataset="cifar10") != ids
    assert run_ids(config, backend="torch") != ids


def test_directory_refuses_a_different_config(tmp_path, config):
    import yaml

    data = config.to_dict()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    # Growing the grid is fine; the written config holds both grids.
    grown = {**data, "downsampling": ["min"], "seeds": [2]}
    merged = experiment._check_directory_config(tmp_path, grown)
    assert merged["downsampling"] == ["max", "avg", "stochastic", "min"]
    assert merged["seeds"] == [0, 1, 2]
    changed = {**data, "train": {**data["train"], "epochs": 3}}
    with pytest.raises(ConfigError, match=r"train\.epochs: 10 -> 3"):
        experiment._check_directory_config(tmp_path, changed)


def test_failed_run_is_recorded_and_the_rest_continue(tmp_path, monkeypatch):
    """A stand-in trainer (no training) fails one run, then succeeds."""
    import types

    import pandas as pd

    import kpool.harness.training

    config = config_from_dict(
        {
            "output_dir": str(tmp_path),
            "downsampling": ["max", "avg"],
            "data": {
                "source": "synthetic",
                "subset": 32,
                "test_subset": 16,
            },
            "train": {"epochs": 1},
        }
    )
    calls = []

    def train_run(config, downsampling, seed, dataset, **kwargs):
        calls.append(downsampling)
        if downsampling == "avg" and broken:
            raise RuntimeError("boom")
        metrics = {"test_accuracy": 0.5, "epoch_seconds": 1.0}
        epochs = [{"epoch": 1, "test_accuracy": 0.5}]
        return types.SimpleNamespace(metrics=metrics, epochs=epochs)

    monkeypatch.setattr(kpool.harness.training, "train_run", train_run)
    broken = True
    outcome = experiment.run_experiment(config, verbose=0)
    assert calls == ["max", "avg"]
    assert [s.downsampling for s in outcome.failed] == ["avg"]
    runs = pd.read_csv(tmp_path / "experiment" / "runs.csv")
    failed = runs.set_index("downsampling").loc["avg"]
    assert failed["status"] == "failed"
    assert failed["error"] == "RuntimeError: boom"
    assert pd.isna(failed["test_accuracy"])

    broken = False
    outcome = experiment.run_experiment(config, verbose=0)
    assert calls == ["max", "avg", "avg"]
    assert [s.downsampling for s in outcome.skipped] == ["max"]
    runs = pd.read_csv(tmp_path / "experiment" / "runs.csv")
    assert sorted(runs["status"]) == ["ok", "ok"] and len(runs) == 2


def test_fallback_is_loud_and_recorded(tmp_path, monkeypatch, capsys):
    import types

    import pandas as pd

    import kpool.harness.training

    def train_run(config, downsampling, seed, dataset, **kwargs):
        return types.SimpleNamespace(metrics={"test_accuracy": 0.5}, epochs=[])

    monkeypatch.setattr(kpool.harness.training, "train_run", train_run)
    config = config_from_dict(
        {
            "output_dir": str(tmp_path),
            "data": {
                "source": "cifar10",
                "path": str(tmp_path / "missing"),
                "fallback": "synthetic",
                "subset": 20,
                "test_subset": 10,
            },
        }
    )
    experiment.run_experiment(config, verbose=0)
    err = capsys.readouterr().err
    # One banner, and no advice to declare the fallback the config declares.
    assert err.count("DATA FALLBACK") == 1
    assert "using the SYNTHETIC set" in err
    assert "`fallback: synthetic`" not in err
    row = pd.read_csv(tmp_path / "experiment" / "runs.csv").iloc[0]
    assert row["dataset"] == "synthetic"
    assert bool(row["data_fallback"]) is True
    assert "cifar10 unavailable" in row["data_source_note"]
    assert (row["n_train"], row["n_test"]) == (20, 10)


def stand_in_trainer(monkeypatch, calls):
    """Replaces training with a call recorder; returns nothing useful."""
    import types

    import kpool.harness.training

    def train_run(config, downsampling, seed, dataset, **kwargs):
        calls.append(kwargs)
        return types.SimpleNamespace(metrics={"test_accuracy": 0.5}, epochs=[])

    monkeypatch.setattr(kpool.harness.training, "train_run", train_run)


def test_data_is_checked_before_the_directory(tmp_path, monkeypatch):
    """A missing file is the error a user sees, even where the directory
    holds another config's results."""
    import yaml

    from kpool.harness.data import DataUnavailableError

    stand_in_trainer(monkeypatch, [])
    directory = tmp_path / "experiment"
    directory.mkdir()
    (directory / "config.yaml").write_text(
        yaml.safe_dump(config_from_dict({"train": {"epochs": 7}}).to_dict())
    )
    config = config_from_dict(
        {
            "output_dir": str(tmp_path),
            "data": {"source": "npz", "path": str(tmp_path / "absent.npz")},
        }
    )
    with pytest.raises(DataUnavailableError, match="absent.npz"):
        experiment.run_experiment(config, verbose=0)
    # With the data there, the directory check still refuses the mix.
    config = config_from_dict(
        {
            "output_dir": str(tmp_path),
            "data": {"source": "synthetic", "subset": 20, "test_subset": 10},
        }
    )
    with pytest.raises(ConfigError, match="holds results of a different"):
        experiment.run_experiment(config, verbose=0)


def test_tensorboard_without_its_package_stops_before_training(
    tmp_path, monkeypatch
):
    calls = []
    stand_in_trainer(monkeypatch, calls)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else find_spec(name, *a),
    )
    config = config_from_dict(
        {
            "output_dir": str(tmp_path),
            "downsampling": ["max"],
            "data": {"source": "synthetic", "subset": 20, "test_subset": 10},
        },
        ["log.tensorboard=true"],
    )
    with pytest.raises(ConfigError, match="`log.tensorboard` needs") as error:
        experiment.run_experiment(config, verbose=0)
    assert "pip install tensorboard" in str(error.value)
    assert calls == []


def test_tensorboard_callback_per_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    calls = []
    stand_in_trainer(monkeypatch, calls)
    data = {
        "output_dir": str(tmp_path),
        "downsampling": ["max", "avg"],
        "data": {"source": "synthetic", "subset": 20, "test_subset": 10},
    }
    experiment.run_experiment(config_from_dict(data), verbose=0)
    assert [call["callbacks"] for call in calls] == [[], []]

    calls.clear()
    logged = config_from_dict(
        {**data, "name": "logged"}, ["log.tensorboard=true"]
    )
    outcome = experiment.run_experiment(logged, verbose=0)
    import keras
    import pandas as pd

    runs = pd.read_csv(outcome.directory / "runs.csv", dtype={"run_id": str})
    log_dirs = []
    for call in calls:
        (callback,) = call["callbacks"]
        assert isinstance(callback, keras.callbacks.TensorBoard)
        log_dirs.append(callback.log_dir)
    assert log_dirs == [
        str(outcome.directory / "tensorboard" / key) for key in runs["run_id"]
    ]


@pytest.mark.slow
def test_tensorboard_logs_are_written(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorboard")
    config = config_from_dict(
        {
            "output_dir": str(tmp_path),
            "model": {"width": 4},
            "data": {"source": "synthetic", "subset": 64, "test_subset": 32},
            "train": {"epochs": 1, "batch_size": 32},
            "eval": {"shift_metrics": False},
            "log": {"tensorboard": True},
        }
    )
    outcome = experiment.run_experiment(config, verbose=0)
    assert not outcome.failed
    events = list((outcome.directory / "tensorboard").glob("*/*/events.*"))
    # Keras writes train/ and validation/ event files.
    assert {path.parent.name for path in events} == {"train", "validation"}


def test_tensorboard_without_the_package_fails_before_training(
    tmp_path, monkeypatch
):
    calls = []
    stand_in_trainer(monkeypatch, calls)
    real_find_spec = experiment.importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "tensorboard" else real_find_spec(name, *args)

    monkeypatch.setattr(experiment.importlib.util, "find_spec", find_spec)
    config = config_from_dict(
        {"output_dir": str(tmp_path), "log": {"tensorboard": True}}
    )
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        experiment.run_experiment(config, verbose=0)
    assert not calls and not (tmp_path / "experiment").exists()


def test_run_id_ignores_the_report_section(config):
    """The baseline of the statistics changes no number of a run, and
    results written before the `report` section keep their run_ids."""
    ids = run_ids(config)
    data = {**config.to_dict(), "report": {"baseline": "avg"}}
    assert run_ids(config_from_dict(data)) == ids
    del data["report"]
    assert run_ids(config_from_dict(data)) == ids
