"""Every shipped config trains: one step of its first choice on synthetic
data, after every choice's model has been built (the experiment builds
them all before training), so no config in configs/ rots."""

import pathlib

import pytest

from kpool.harness.config import load_config
from kpool.harness.experiment import run_experiment

CONFIGS = sorted((pathlib.Path(__file__).parents[2] / "configs").glob("*.yaml"))
# Tiny and fast: 8 synthetic images in one batch, one epoch, narrow models,
# a few images for the shift metrics. Everything else stays the config's.
TINY = [
    "data.source=synthetic",
    "data.subset=8",
    "data.test_subset=8",
    "data.download=false",
    "train.batch_size=8",
    "train.epochs=1",
    "train.schedule.warmup_epochs=0",
    "model.width=2",
    "eval.max_images=4",
    "eval.batch_size=8",
    "seeds=[0]",
    # What a config's precision does is tested elsewhere; float32 compiles
    # fastest on a CPU.
    "precision=float32",
]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_trains_one_step(path, tmp_path):
    config = load_config(path, [*TINY, f"output_dir={tmp_path}"])
    # The shard of grid index 0 only: the first choice trains; the
    # experiment still builds every choice's model first.
    outcome = run_experiment(
        config, shard=(1, len(config.downsampling)), verbose=0
    )
    assert len(outcome.trained) == 1, outcome.failed
    assert outcome.failed == []
