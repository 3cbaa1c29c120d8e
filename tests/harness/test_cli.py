"""End-to-end tests of `kpool run / report / merge` on synthetic data.

One tiny experiment (2 choices x 2 seeds, 2 epochs) runs once in this
process and once in real subprocesses (killed and resumed); the tests
compare the two and rerun parts of it.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from kpool.harness import cli, report_file, results
from kpool.harness.config import config_from_dict, load_config

TINY = {
    "name": "tiny",
    "model": {"family": "small_cnn", "width": 4},
    "downsampling": ["max", "stochastic"],
    "seeds": [0, 1],
    "data": {
        "source": "synthetic",
        "subset": 256,
        "test_subset": 128,
    },
    "train": {
        "epochs": 2,
        "batch_size": 64,
        "optimizer": {"name": "adam", "learning_rate": 0.01},
    },
    "eval": {"max_images": 64, "batch_size": 64},
}
RUNS = 4
REQUIRED_COLUMNS = [
    "experiment",
    "run_id",
    "model",
    "downsampling",
    "head",
    "seed",
    "dataset",
    "n_train",
    "n_test",
    "backend",
    "device",
    "precision",
    "jit_compile",
    "epochs",
    "params",
    "test_accuracy",
    "test_loss",
    "train_accuracy",
    "train_loss",
    "best_test_accuracy",
    "train_seconds",
    "train_images_per_sec",
    "eval_images_per_sec",
    "status",
    "started_at",
    "finished_at",
    "git_commit",
    "git_dirty",
    "keras_version",
    "backend_version",
    "python_version",
    "data_source_note",
    "data_fallback",
    "shift_consistency",
    "shift_accuracy_1px",
    "shift_accuracy_4px",
    "receptive_field",
    "flops_per_image",
    "overfit_gap",
    "run_config",
]
# Columns that measure time; every other metric must repeat exactly.
TIMING = ("seconds", "per_sec", "ms_per_step", "_at")
# Columns that describe the checkout, not the run: another process editing
# the tree between two runs changes them.
CHECKOUT = ("git_commit", "git_dirty")


BLOCK_TENSORFLOW = """
import importlib.abc
import sys


class BlockTensorFlow(importlib.abc.MetaPathFinder):
    # `import tensorflow` fails as on a machine without it: the JAX
    # training path must not need it.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ImportError(f"{name} is blocked by the test")


sys.meta_path.insert(0, BlockTensorFlow())
from kpool.harness.cli import main

code = main(sys.argv[1:])
assert "tensorflow" not in sys.modules
sys.exit(code)
"""


def write_config(path, **changes):
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def config_path(workdir):
    return write_config(workdir / "tiny.yaml")


@pytest.fixture(scope="module")
def finished(workdir, config_path):
    """The tiny experiment, run once: (directory, runs, epochs, stdout)."""
    out = workdir / "results"
    code = cli.main(["run", str(config_path), "--output-dir", str(out)])
    assert code == 0
    directory = out / "tiny"
    return (
        directory,
        results.read_table(directory / "runs.csv"),
        results.read_table(directory / "epochs.csv"),
    )


def test_tables_columns_and_values(finished, config_path):
    directory, runs, epochs = finished
    missing = [c for c in REQUIRED_COLUMNS if c not in runs]
    assert not missing
    assert len(runs) == RUNS and runs["run_id"].is_unique
    assert set(runs["status"]) == {"ok"}
    assert set(runs["dataset"]) == {"synthetic"}
    assert set(runs["experiment"]) == {"tiny"}
    assert sorted(zip(runs["downsampling"], runs["seed"], strict=True)) == [
        ("max", 0),
        ("max", 1),
        ("stochastic", 0),
        ("stochastic", 1),
    ]
    assert (runs["n_train"] == 256).all() and (runs["n_test"] == 128).all()
    for column in [
        "test_accuracy",
        "train_accuracy",
        "best_test_accuracy",
        "shift_accuracy_1px",
    ]:
        assert runs[column].between(0, 1).all(), column
    assert (runs["best_test_accuracy"] >= runs["test_accuracy"] - 1e-9).all()
    assert (runs["params"] > 0).all()
    assert (runs["flops_per_image"] > 0).all()
    assert (runs["train_images_per_sec"] > 0).all()
    assert list(runs["epochs"].unique()) == [2]
    # Every run's config is stored and reproduces its run_id's grid cell.
    for _, row in runs.iterrows():
        single = yaml.safe_load(row["run_config"])
        assert single["downsampling"] == [row["downsampling"]]
        assert single["seeds"] == [row["seed"]]

    assert len(epochs) == RUNS * 2
    assert set(epochs["run_id"]) == set(runs["run_id"])
    assert sorted(epochs["epoch"].unique()) == [1, 2]
    assert epochs["test_accuracy"].between(0, 1).all()

    written = yaml.safe_load((directory / "config.yaml").read_text())
    expected = load_config(config_path, [f"output_dir={directory.parent}"])
    assert config_from_dict(written) == expected
    summary = results.read_table(directory / "summary.csv")
    assert sorted(summary["downsampling"]) == ["max", "stochastic"]
    assert (summary["n_seeds"] == 2).all()
    for name in [
        "accuracy_vs_throughput.png",
        "learning_curves.png",
        "shift_consistency_vs_accuracy.png",
    ]:
        assert (directory / name).stat().st_size > 0, name


def test_report_prints_the_summary(finished, capsys):
    directory, runs, _ = finished
    assert cli.main(["report", str(directory)]) == 0
    text = capsys.readouterr().out
    assert "model=small_cnn, dataset=synthetic" in text
    assert "| rank | downsampling | seeds | test acc % |" in text
    summary = results.summarize(runs)
    best = summary.iloc[0]
    assert f"| 1 | {best['downsampling']} | 2 | " in text
    # The paired comparisons with the baseline, max.
    assert "test accuracy (%): each choice minus max" in text
    header = "| downsampling | seeds | mean ± 95% CI | diff vs max [95% CI] |"
    assert header in text
    assert "| max | 2 | " in text and "| baseline |" in text


def test_run_writes_the_report_that_report_prints(finished, capsys):
    """report.md holds the report of the tables, as recomputed from them,
    and `kpool report` prints it."""
    directory, _, _ = finished
    runs, epochs = results.read_results([directory])
    baseline = results.read_baseline(directory)
    expected = results.report(results.summarize(runs, epochs, baseline))
    assert report_file.read_report(directory) == expected
    assert cli.main(["report", str(directory)]) == 0
    assert capsys.readouterr().out == expected + "\n"


def _edit_accuracy(directory):
    runs = results.read_table(directory / "runs.csv")
    runs.loc[0, "test_accuracy"] = 0.123456
    results.write_table(runs, directory / "runs.csv")


def _add_shard(directory):
    runs = results.read_table(directory / "runs.csv")
    extra = runs.iloc[:1].assign(run_id="extra", downsampling="avg")
    results.write_table(extra, directory / "runs.shard-1-of-2.csv")


def _change_baseline(directory):
    path = directory / results.CONFIG_FILE
    config = yaml.safe_load(path.read_text())
    config["report"] = {**config.get("report", {}), "baseline": "stochastic"}
    path.write_text(yaml.safe_dump(config))


def _forge_header(directory):
    path = directory / report_file.REPORT_FILE
    header, _, text = path.read_text().partition("\n")
    forged = header.replace("sha256:", "sha256:0")
    path.write_text(f"{forged}\n{text.replace('| max |', '| forged |')}")


@pytest.mark.parametrize(
    "change", [_edit_accuracy, _add_shard, _change_baseline, _forge_header]
)
def test_report_recomputes_a_stale_file(finished, tmp_path, change, capsys):
    """A table edited or added, another baseline, or a file not written for
    these tables: report prints the report of the tables as they are, and
    rewrites report.md with it."""
    directory = tmp_path / "copy"
    shutil.copytree(finished[0], directory)
    before = report_file.read_report(directory)
    assert before is not None
    change(directory)
    assert report_file.read_report(directory) is None
    runs, epochs = results.read_results([directory])
    baseline = results.read_baseline(directory)
    expected = results.report(results.summarize(runs, epochs, baseline))
    assert cli.main(["report", str(directory)]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert report_file.read_report(directory) == expected
    if change is not _forge_header:
        assert expected != before


def test_report_of_a_directory_it_cannot_write(
    finished, tmp_path, monkeypatch, capsys
):
    directory = tmp_path / "copy"
    shutil.copytree(finished[0], directory)
    (directory / report_file.REPORT_FILE).unlink()

    def refuse(*args):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(results, "write_report", refuse)
    assert cli.main(["report", str(directory)]) == 0
    assert "| rank | downsampling |" in capsys.readouterr().out
    assert not (directory / report_file.REPORT_FILE).exists()


def test_report_from_its_file_imports_no_pandas(report_directory, tmp_path):
    """With report.md fresh, `kpool report` imports neither pandas, NumPy
    nor scipy: it prints in a small part of a second."""
    directory = tmp_path / "copy"
    shutil.copytree(report_directory, directory)
    (directory / report_file.REPORT_FILE).unlink(missing_ok=True)
    script = (
        "import sys\n"
        "from kpool_cli import main\n"
        "main(sys.argv[1:])\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'scipy', 'keras')"
        " if m in sys.modules))\n"
    )
    arguments = [sys.executable, "-c", script, "report", str(directory)]
    first = subprocess.run(arguments, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "'pandas'" in first.stdout.rpartition("\n[")[2]
    second = subprocess.run(arguments, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout.endswith("\n[]\n")
    report = first.stdout.rpartition("[")[0]
    assert "| avg |" in report
    assert second.stdout.rpartition("[")[0] == report


def test_rerun_skips_finished_runs(finished, config_path, monkeypatch, capsys):
    directory, runs, _ = finished
    import kpool.harness.training

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(kpool.harness.training, "train_run", fail)
    out = str(directory.parent)
    assert cli.main(["run", str(config_path), "--output-dir", out]) == 0
    assert "4 finished already, 0 to train" in capsys.readouterr().out
    pd.testing.assert_frame_equal(
        results.read_table(directory / "runs.csv"), runs
    )


def test_shards_then_merge_equal_the_unsharded_run(finished, workdir):
    _, runs, _ = finished
    shared = workdir / "shared"
    for shard in ("1/2", "2/2"):
        code = cli.main(
            [
                "run",
                str(workdir / "tiny.yaml"),
                "--output-dir",
                str(shared),
                "--shard",
                shard,
                "--set",
                "seeds=[0]",
            ]
        )
        assert code == 0
    directory = shared / "tiny"
    one = results.read_table(directory / "runs.shard-1-of-2.csv")
    two = results.read_table(directory / "runs.shard-2-of-2.csv")
    assert list(one["downsampling"]) == ["max"]
    assert list(two["downsampling"]) == ["stochastic"]
    assert not (directory / "runs.csv").exists()
    merged = workdir / "merged"
    assert cli.main(["merge", str(directory), "--out", str(merged)]) == 0
    merged_ids = set(results.read_table(merged / "runs.csv")["run_id"])
    assert merged_ids == set(runs.loc[runs["seed"] == 0, "run_id"])
    assert len(results.read_table(merged / "epochs.csv")) == 2 * 2
    assert (merged / "summary.csv").exists()


def _rows(path):
    return results.read_table(path) if path.exists() else pd.DataFrame()


@pytest.fixture(scope="module")
def resumed(workdir):
    """Seed 0 of the tiny experiment in real processes: SIGKILLed after its
    first finished run, then run again to the end.

    Returns (runs table at the kill, final runs table, final epochs table,
    stdout of the second process).
    """
    out = workdir / "killed"
    # Under JAX, the backend of the GPU path, with TensorFlow unimportable.
    if os.environ.get("KERAS_BACKEND") == "jax":
        entry = ["-c", BLOCK_TENSORFLOW]
    else:
        entry = ["-m", "kpool.harness.cli"]
    command = [
        sys.executable,
        *entry,
        "run",
        str(workdir / "tiny.yaml"),
        "--output-dir",
        str(out),
        "--verbose",
        "0",
        "--set",
        "seeds=[0]",
    ]
    runs_csv = out / "tiny" / "runs.csv"
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while _rows(runs_csv).empty:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    killed = results.read_table(runs_csv)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return (
        killed,
        results.read_table(runs_csv),
        results.read_table(out / "tiny" / "epochs.csv"),
        done.stdout,
    )


@pytest.mark.slow
def test_resume_after_kill(finished, resumed):
    """Killing a real run loses at most the run in progress, never corrupts
    a table, and the rerun trains nothing twice."""
    killed, final, epochs, stdout = resumed
    runs = finished[1]
    assert len(killed) == 1
    assert set(killed["status"]) == {"ok"}
    complete = killed[["test_accuracy", "params", "finished_at"]]
    assert complete.notna().all().all()
    assert "1 finished already, 1 to train" in stdout
    seed_0 = runs.loc[runs["seed"] == 0, "run_id"]
    assert sorted(final["run_id"]) == sorted(seed_0)
    assert set(final["status"]) == {"ok"}
    before = killed.set_index("run_id")["started_at"]
    after = final.set_index("run_id").loc[before.index, "started_at"]
    pd.testing.assert_series_equal(after, before)
    assert len(epochs) == 2 * 2 and epochs["run_id"].nunique() == 2


@pytest.mark.slow
def test_same_config_twice_gives_identical_metrics(finished, resumed):
    """The runs of the killed-and-resumed processes repeat the in-process
    runs of the same config exactly, apart from timings. (Under JAX, those
    processes also show that `kpool run` works without TensorFlow.)"""
    again = resumed[1].set_index("run_id")
    runs = finished[1].set_index("run_id").loc[again.index]
    metrics = [
        c
        for c in runs.columns
        if pd.api.types.is_numeric_dtype(runs[c])
        and not any(t in c for t in TIMING)
        and c not in CHECKOUT
    ]
    assert {"test_accuracy", "shift_consistency", "params"} <= set(metrics)
    pd.testing.assert_frame_equal(again[metrics], runs[metrics])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--set", "train.epochz=3"], "`train.epochz`"),
        (["--set", "train.epochs"], "must look like `key.sub=value`"),
        (["--set", "downsampling=[max, nope]"], "`downsampling[1]`"),
        (["--set", "data.source=npz"], "`data.path`"),
        (["--shard", "3/2"], "`--shard` must be i/n"),
        (["--set", "seeds=[0,0]"], "`seeds` must be a list without repeats"),
    ],
)
def test_config_errors_exit_2(config_path, arguments, message, capsys):
    code = cli.main(["run", str(config_path), *arguments])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_missing_config_and_results_exit_2(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "No runs*.csv" in capsys.readouterr().err


def test_unreadable_runs_table_exits_2_and_is_kept(
    config_path, tmp_path, capsys
):
    """A damaged runs.csv is named, with what to do, by report, merge and
    run (before any training), and nothing is written over it."""
    directory = tmp_path / "tiny"
    directory.mkdir()
    damaged = b"run_id,status\n\x00\xff\xfe garbage\n"
    (directory / "runs.csv").write_bytes(damaged)
    commands = [
        ["report", str(directory)],
        ["merge", str(directory), "--out", str(tmp_path / "merged")],
        ["run", str(config_path), "--output-dir", str(tmp_path)],
    ]
    for arguments in commands:
        assert cli.main(arguments) == 2, arguments
        err = capsys.readouterr().err
        assert f"kpool {arguments[0]}: error: {directory / 'runs.csv'}" in err
        assert "cannot be read" in err and "Move the file" in err
        assert "Traceback" not in err
    assert (directory / "runs.csv").read_bytes() == damaged
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs.csv", "tiny"]


def test_directory_with_another_config_exits_2(finished, config_path, capsys):
    directory, _, _ = finished
    code = cli.main(
        [
            "run",
            str(config_path),
            "--output-dir",
            str(directory.parent),
            "--set",
            "train.epochs=3",
        ]
    )
    assert code == 2
    assert "train.epochs: 2 -> 3" in capsys.readouterr().err


def test_missing_data_exits_3_before_training(config_path, tmp_path, capsys):
    missing = tmp_path / "cifar-10-python.tar.gz"
    code = cli.main(
        [
            "run",
            str(config_path),
            "--output-dir",
            str(tmp_path),
            "--set",
            "data.source=cifar10",
            "--set",
            f"data.path={missing}",
        ]
    )
    assert code == 3
    err = capsys.readouterr().err
    assert "data unavailable" in err and "Traceback" not in err
    assert not (tmp_path / "tiny").exists()


class Terminal:
    def isatty(self):
        return True


def test_verbosity_defaults_to_one_line_per_epoch_off_a_terminal():
    import io

    assert cli.default_verbosity(Terminal()) == 1
    assert cli.default_verbosity(io.StringIO()) == 2
    closed = io.StringIO()
    closed.close()
    assert cli.default_verbosity(closed) == 2


@pytest.mark.parametrize(
    "arguments, verbose", [([], 2), (["--verbose", "1"], 1)]
)
def test_run_passes_the_verbosity(config_path, monkeypatch, arguments, verbose):
    import kpool.harness.experiment

    seen = []

    def run_experiment(config, *, shard=None, verbose=1, out=None):
        seen.append(verbose)
        return kpool.harness.experiment.Outcome(None, [], [], [])

    monkeypatch.setattr(
        kpool.harness.experiment, "run_experiment", run_experiment
    )
    # pytest captures stdout: not a terminal.
    assert cli.main(["run", str(config_path), *arguments]) == 0
    assert seen == [verbose]


BACKENDS = ("keras", "tensorflow", "jax", "torch")
# Runs the command in a fresh process; exits 0 only if it succeeded without
# importing Keras or a backend (printing which it imported otherwise).
NO_BACKEND = """
import sys

{prelude}
main = globals().get("entry")
if main is None:
    from kpool.harness.cli import main

try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
loaded = sorted({{m.partition(".")[0] for m in sys.modules}} & {backends})
print("imported:", loaded)
sys.exit(code or (3 if loaded else 0))
"""
# The package `kpool` without its __init__, which imports the layers.
WITHOUT_THE_LAYERS = """
import importlib.util

for package in ("kpool", "kpool.harness"):
    spec = importlib.util.find_spec(package)
    sys.modules[package] = importlib.util.module_from_spec(spec)
"""


@pytest.fixture(scope="module")
def report_directory(tmp_path_factory):
    directory = tmp_path_factory.mktemp("report")
    for run_id, name in (("a", "max"), ("b", "avg")):
        row = {
            "run_id": run_id,
            "status": "ok",
            "model": "small_cnn",
            "dataset": "synthetic",
            "backend": "jax",
            "downsampling": name,
            "seed": 0,
            "test_accuracy": 0.5,
            "epoch_seconds": 1.0,
        }
        results.replace_run(
            row, [{"epoch": 1, "test_accuracy": 0.5}], directory
        )
    return directory


def run_without_backend(arguments, prelude=""):
    script = NO_BACKEND.format(prelude=prelude, backends=set(BACKENDS))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, time.perf_counter() - start


@pytest.mark.parametrize("command", ["help", "report"])
def test_cli_modules_import_no_backend(command, report_directory):
    """kpool.harness.cli, .config, .data and .results, which --help and
    report use, import neither Keras nor a backend."""
    arguments = ["--help"] if command == "help" else ["report"]
    if command == "report":
        arguments.append(str(report_directory))
    done, _ = run_without_backend(arguments, WITHOUT_THE_LAYERS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported: []" in done.stdout
    assert ("usage: kpool" if command == "help" else "| avg |") in done.stdout


@pytest.mark.parametrize("command", ["help", "report"])
def test_kpool_command_imports_no_backend(command, report_directory):
    """The installed `kpool` command's entry point, `kpool_cli.main`."""
    arguments = ["--help"] if command == "help" else ["report"]
    if command == "report":
        arguments.append(str(report_directory))
    done, _ = run_without_backend(
        arguments, "from kpool_cli import main as entry"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported: []" in done.stdout


@pytest.fixture
def fallback_config(tmp_path):
    """A config like the quickstart's: CIFAR-10, falling back to synthetic."""
    data = {**TINY["data"], "source": "cifar10", "fallback": "synthetic"}
    return write_config(tmp_path / "fallback.yaml", data=data)


def test_named_data_fails_with_its_own_error(fallback_config, tmp_path, capsys):
    """The issue's case: a wrong data.path on the command line became a
    synthetic run; the config's fallback covers only the config's data."""
    missing = tmp_path / "nonexistent.npz"
    code = cli.main(
        [
            "run",
            str(fallback_config),
            "--output-dir",
            str(tmp_path),
            "--set",
            "data.source=npz",
            "--set",
            f"data.path={missing}",
        ]
    )
    assert code == 3
    err = capsys.readouterr().err
    assert f"`data.path`={str(missing)!r} is not a file" in err
    assert "DATA FALLBACK" not in err
    assert not (tmp_path / "tiny").exists()


def test_bad_npz_is_named_before_the_directory(
    finished, config_path, tmp_path, capsys
):
    """A grey npz (the issue's (10, 28, 28)) fails naming the array, even
    where the output directory holds another config's results."""
    directory, _, _ = finished
    path = tmp_path / "grey.npz"
    grey = np.zeros((10, 28, 28), "uint8")
    labels = np.arange(10) % 2
    np.savez(path, x_train=grey, y_train=labels, x_test=grey, y_test=labels)
    code = cli.main(
        [
            "run",
            str(config_path),
            "--output-dir",
            str(directory.parent),
            "--set",
            "data.source=npz",
            "--set",
            f"data.path={path}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "`x_train` in" in err and "(N, height, width, 3)" in err
    assert "different config" not in err


QUIET_IMPORT = """
import sys

{prelude}
from kpool.harness import cli

cli.import_tensorflow_quietly()
assert "tensorflow" in sys.modules
print("stderr still works", file=sys.stderr)
"""


def test_tensorflow_is_imported_quietly():
    pytest.importorskip("tensorflow")
    script = QUIET_IMPORT.format(prelude=WITHOUT_THE_LAYERS)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"
        },
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "stderr still works\n"


def test_tensorflow_logs_when_the_user_asks(config_path, monkeypatch):
    import kpool.harness.experiment

    imports = []
    monkeypatch.setattr(
        cli, "import_tensorflow_quietly", lambda: imports.append(1)
    )
    monkeypatch.setattr(
        kpool.harness.experiment,
        "run_experiment",
        lambda config, **kwargs: kpool.harness.experiment.Outcome(
            None, [], [], []
        ),
    )
    for asked in (False, True):
        monkeypatch.setattr(cli, "TF_LOG_LEVEL_FROM_USER", asked)
        assert cli.main(["run", str(config_path)]) == 0
    assert imports == [1]


LOG_LEVEL = """
import os
import sys

{prelude}
import jax  # sets TF_CPP_MIN_LOG_LEVEL=1 unless it is set

from kpool.harness import cli

print(cli.TF_LOG_LEVEL_FROM_USER, os.environ["TF_CPP_MIN_LOG_LEVEL"])
"""


@pytest.mark.parametrize("user, expected", [(None, "False 3"), ("0", "True 0")])
def test_tensorflow_log_level_unless_the_user_set_it(user, expected):
    pytest.importorskip("jax")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if user is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = user
    done = subprocess.run(
        [sys.executable, "-c", LOG_LEVEL.format(prelude=WITHOUT_THE_LAYERS)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected.split()
