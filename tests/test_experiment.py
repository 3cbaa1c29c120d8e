import pytest

from kpool import experiment
from kpool.config import ConfigError, config_from_dict


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

    import kpool.training

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

    monkeypatch.setattr(kpool.training, "train_run", train_run)
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

    import kpool.training

    def train_run(config, downsampling, seed, dataset, **kwargs):
        return types.SimpleNamespace(metrics={"test_accuracy": 0.5}, epochs=[])

    monkeypatch.setattr(kpool.training, "train_run", train_run)
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
    assert "Training on the SYNTHETIC fallback" in capsys.readouterr().err
    row = pd.read_csv(tmp_path / "experiment" / "runs.csv").iloc[0]
    assert row["dataset"] == "synthetic"
    assert bool(row["data_fallback"]) is True
    assert "cifar10 unavailable" in row["data_source_note"]
    assert (row["n_train"], row["n_test"]) == (20, 10)
