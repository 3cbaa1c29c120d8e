import pathlib

import pytest

from kpool.harness import config as cfg

CONFIGS = sorted((pathlib.Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_defaults_and_types():
    config = cfg.config_from_dict({})
    assert config == cfg.ExperimentConfig()
    config = cfg.config_from_dict(
        {"train": {"optimizer": {"learning_rate": 1}}, "seeds": [3, 4]}
    )
    # An int is accepted where a float is expected, and converted.
    assert config.train.optimizer.learning_rate == 1.0
    assert isinstance(config.train.optimizer.learning_rate, float)
    assert config.seeds == (3, 4)


def test_overrides_are_read_as_yaml():
    config = cfg.config_from_dict(
        {"downsampling": ["max"]},
        [
            "train.epochs=3",
            "downsampling=[avg, stochastic]",
            "model.width=null",
            "train.schedule.decay_epochs=[5, 8]",
            "data.subset=",
        ],
    )
    assert config.train.epochs == 3
    assert config.downsampling == ("avg", "stochastic")
    assert config.model.width is None
    assert config.train.schedule.decay_epochs == (5, 8)
    assert config.data.subset is None


@pytest.mark.parametrize(
    "data, overrides, message",
    [
        ({"trian": {}}, [], "Unknown key `trian` in the config"),
        ({"train": {"epoch": 1}}, [], "Unknown key `train.epoch` in `train`"),
        ({}, ["model.widht=8"], "Unknown key `model.widht`"),
        ({"train": {"epochs": "ten"}}, [], "`train.epochs` must be int"),
        ({"train": {"epochs": True}}, [], "`train.epochs` must be int"),
        ({"train": {"epochs": 0}}, [], "`train.epochs` must be a positive"),
        ({"model": {"head": "dense"}}, [], "`model.head` must be 'gap'"),
        (
            {"downsampling": ["max", "lpp"]},
            [],
            "`downsampling[1]` must be one",
        ),
        (
            {"downsampling_options": {"max": {"choice": "avg"}}},
            [],
            "`downsampling_options.max.choice` must be absent",
        ),
        (
            {"downsampling_options": {"big": {"choice": "maxx"}}},
            [],
            "`downsampling_options.big.choice` must be one of",
        ),
        (
            {"downsampling_options": {"max": 3}},
            [],
            "`downsampling_options.max` must be a mapping",
        ),
        (
            {"distribution": "model_parallel"},
            [],
            "`distribution` must be 'data_parallel' or null",
        ),
        ({"downsampling": "max"}, [], "`downsampling` must be a list of str"),
        ({"downsampling": ["max", "max"]}, [], "without repeats"),
        ({"model": {"family": "vit"}}, [], "`model.family` must be one of"),
        ({"data": {"source": "npz"}}, [], "`data.path` must be the path"),
        ({"downsampling_options": {"maxx": {}}}, [], "downsampling_options"),
        ({"train": 3}, [], "`train` must be a mapping"),
        (
            {"model": {"batch_norm_momentum": 1.0}},
            [],
            "`model.batch_norm_momentum` must be in [0, 1)",
        ),
        ({}, ["train.epochs"], "must look like `key.sub=value`"),
        ({}, ["=3"], "must look like `key.sub=value`"),
        ({}, ["train.epochs.x=3"], "`train.epochs` must be int"),
        (
            {"train": {"epochs": 2}},
            ["train.epochs.x=3"],
            "Cannot set `train.epochs.x`: `train.epochs` is not a mapping",
        ),
    ],
)
def test_errors_name_the_key(data, overrides, message):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.config_from_dict(data, overrides)
    assert message in str(info.value)


def test_unknown_pooling_lists_allowed_names():
    with pytest.raises(cfg.ConfigError) as info:
        cfg.config_from_dict({"downsampling": ["lpp"]})
    for name in cfg.DOWNSAMPLING_CHOICES:
        assert name in str(info.value)
    assert "Received: downsampling[0]='lpp'" in str(info.value)


def test_named_variants_of_a_choice():
    options = {
        "mixed_a25": {"choice": "mixed", "alpha": 0.25},
        "mixed": {"alpha": 0.75},
    }
    config = cfg.config_from_dict(
        {
            "downsampling": ["mixed", "mixed_a25"],
            "downsampling_options": options,
        }
    )
    resolve = cfg.resolve_downsampling
    assert resolve("mixed_a25", config.downsampling_options) == (
        "mixed",
        {"alpha": 0.25},
    )
    assert resolve("mixed", config.downsampling_options) == (
        "mixed",
        {"alpha": 0.75},
    )
    assert resolve("max", config.downsampling_options) == ("max", {})
    # A variant is used only where listed; an undefined one is refused.
    with pytest.raises(cfg.ConfigError, match="or a variant defined"):
        cfg.config_from_dict({"downsampling": ["mixed_a50"]})


def test_load_config_errors(tmp_path):
    with pytest.raises(cfg.ConfigError, match="not found"):
        cfg.load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1,\n")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load_config(bad)


def test_config_hash_ignores_key_order():
    assert cfg.config_hash({"a": 1, "b": [1, 2]}) == cfg.config_hash(
        {"b": [1, 2], "a": 1}
    )
    assert cfg.config_hash({"a": 1}) != cfg.config_hash({"a": 2})


def test_round_trip_through_dict():
    config = cfg.config_from_dict(
        {"downsampling": ["max", "mixed"], "seeds": [0, 1]}
    )
    assert cfg.config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = cfg.load_config(path)
    assert config.name == path.stem


FILE_WITH_FALLBACK = {"data": {"source": "cifar10", "fallback": "synthetic"}}


@pytest.mark.parametrize(
    "overrides, fallback",
    [
        ([], "synthetic"),
        (["data.subset=100", "train.epochs=1"], "synthetic"),
        # Data the user names must load or fail, not become synthetic.
        (["data.source=npz", "data.path=/x.npz"], None),
        (["data.path=/data/cifar-10-python.tar.gz"], None),
        (["data.source=cifar10"], None),
        # Unless the user asks for the fallback too.
        (["data.path=/x", "data.fallback=synthetic"], "synthetic"),
    ],
)
def test_fallback_covers_only_the_data_the_file_names(overrides, fallback):
    config = cfg.config_from_dict(FILE_WITH_FALLBACK, overrides)
    assert config.data.fallback == fallback


def test_log_section():
    assert cfg.config_from_dict({}).log.tensorboard is False
    config = cfg.config_from_dict({}, ["log.tensorboard=true"])
    assert config.log.tensorboard is True
    with pytest.raises(cfg.ConfigError, match="Unknown key `log.tensorbord`"):
        cfg.config_from_dict({"log": {"tensorbord": True}})
    with pytest.raises(cfg.ConfigError, match="`log.tensorboard` must be bool"):
        cfg.config_from_dict({"log": {"tensorboard": "yes"}})


def test_seeds_must_not_repeat():
    with pytest.raises(cfg.ConfigError) as info:
        cfg.config_from_dict({}, ["seeds=[0, 1, 0]"])
    assert str(info.value) == (
        "`seeds` must be a list without repeats (seed 0 is repeated). "
        "Received: seeds=[0, 1, 0]"
    )


def test_report_baseline_is_one_of_the_choices():
    assert cfg.config_from_dict({}).report.baseline is None
    choices = {"downsampling": ["max", "avg"]}
    config = cfg.config_from_dict(choices, ["report.baseline=avg"])
    assert config.report.baseline == "avg"
    with pytest.raises(cfg.ConfigError) as info:
        cfg.config_from_dict(choices, ["report.baseline=min"])
    assert str(info.value) == (
        "`report.baseline` must be null or one of the experiment's "
        "downsampling choices (max, avg). Received: report.baseline='min'"
    )
    with pytest.raises(cfg.ConfigError, match="Unknown key `report.base`"):
        cfg.config_from_dict({}, ["report.base=max"])
