import math
import os

import numpy as np
import pandas as pd
import pytest

from kpool import results


def run_row(run_id, downsampling, seed, accuracy, epoch_seconds, **extra):
    return {
        "experiment": "exp",
        "run_id": run_id,
        "status": "ok",
        "model": "small_cnn",
        "dataset": "synthetic",
        "backend": "jax",
        "downsampling": downsampling,
        "seed": seed,
        "test_accuracy": accuracy,
        "best_test_accuracy": accuracy + 0.01,
        "train_images_per_sec": 1000.0 / epoch_seconds,
        "epoch_seconds": epoch_seconds,
        "params": 100 if downsampling != "allconv" else 150,
        "finished_at": "2024-01-01T00:00:00",
        **extra,
    }


@pytest.fixture
def runs():
    return pd.DataFrame(
        [
            run_row("a0", "max", 0, 0.5, 2.0),
            run_row("a1", "max", 1, 0.6, 2.0),
            run_row("a2", "max", 2, 0.7, 2.0),
            run_row("b0", "avg", 0, 0.4, 3.0),
            run_row("b1", "avg", 1, 0.5, 3.0),
            # Failed runs do not count.
            run_row("b2", "avg", 2, 0.99, 3.0, status="failed"),
            run_row("c0", "allconv", 0, 0.8, 1.0),
            # Another model, without max pooling: no epoch-time reference.
            run_row("d0", "avg", 0, 0.3, 4.0, model="vgg"),
        ]
    )


def test_summary_means_stds_and_ranks(runs):
    summary = results.summarize(runs)
    small = summary[summary["model"] == "small_cnn"].set_index("downsampling")
    assert list(small.index) == ["allconv", "max", "avg"]
    assert list(small["rank"]) == [1, 2, 3]
    assert small.loc["max", "n_seeds"] == 3
    assert small.loc["avg", "n_seeds"] == 2
    np.testing.assert_allclose(small.loc["max", "test_accuracy_mean"], 0.6)
    np.testing.assert_allclose(small.loc["max", "test_accuracy_std"], 0.1)
    np.testing.assert_allclose(small.loc["avg", "test_accuracy_mean"], 0.45)
    np.testing.assert_allclose(
        small.loc["avg", "test_accuracy_std"], math.sqrt(0.005)
    )
    # One seed: the sample std is undefined.
    assert math.isnan(small.loc["allconv", "test_accuracy_std"])
    np.testing.assert_allclose(small.loc["avg", "epoch_time_vs_max"], 1.5)
    np.testing.assert_allclose(small.loc["allconv", "epoch_time_vs_max"], 0.5)
    np.testing.assert_allclose(small.loc["max", "epoch_time_vs_max"], 1.0)
    np.testing.assert_allclose(
        small.loc["avg", "train_images_per_sec_mean"], 1000 / 3
    )
    assert small.loc["allconv", "params"] == 150
    vgg = summary[summary["model"] == "vgg"]
    assert len(vgg) == 1 and vgg["rank"].item() == 1
    assert math.isnan(vgg["epoch_time_vs_max"].item())


def test_summary_leaves_out_absent_metrics(runs):
    summary = results.summarize(runs)
    assert "shift_consistency_mean" not in summary
    assert "flops_per_image" not in summary


def test_report_markdown(runs):
    text = results.report(results.summarize(runs))
    sections = text.split("### ")[1:]
    assert [s.splitlines()[0] for s in sections] == [
        "model=small_cnn, dataset=synthetic, backend=jax",
        "model=vgg, dataset=synthetic, backend=jax",
    ]
    lines = sections[0].strip().splitlines()[2:]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["rank", "downsampling", "seeds", "test acc %"]
    assert lines[1] == "|" + "|".join(["---"] * len(header)) + "|"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    by_name = {row[1]: dict(zip(header, row, strict=True)) for row in rows[2:]}
    assert by_name["max"]["test acc %"] == "60.00 ± 10.00"
    assert by_name["avg"]["test acc %"] == "45.00 ± 7.07"
    assert by_name["allconv"]["test acc %"] == "80.00"
    assert by_name["avg"]["epoch time vs max"] == "1.50"
    assert by_name["allconv"]["params"] == "150"


def test_markdown_table_escapes_and_blanks_nan():
    frame = pd.DataFrame({"a": ["x|y", "z"], "b": [1.5, float("nan")]})
    assert results.markdown_table(frame).splitlines() == [
        "| a | b |",
        "|---|---|",
        "| x\\|y | 1.5 |",
        "| z |  |",
    ]


def test_report_without_runs():
    empty = results.summarize(pd.DataFrame(columns=["status", "seed"]))
    assert results.report(empty) == "No finished runs."


def test_atomic_open_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with results.atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["runs.csv"]


def test_replace_run_appends_and_replaces(tmp_path):
    epochs = [{"epoch": 1, "test_accuracy": 0.1}, {"epoch": 2, "x": 0.2}]
    results.replace_run(
        run_row("a", "max", 0, 0.5, 1.0, status="failed"), [], tmp_path
    )
    results.replace_run(run_row("b", "avg", 0, 0.4, 1.0), epochs, tmp_path)
    results.replace_run(run_row("a", "max", 0, 0.6, 1.0), epochs, tmp_path)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert list(runs["run_id"]) == ["b", "a"]
    assert list(runs["status"]) == ["ok", "ok"]
    assert runs.set_index("run_id").loc["a", "test_accuracy"] == 0.6
    epoch_table = pd.read_csv(tmp_path / "epochs.csv")
    assert list(epoch_table["run_id"]) == ["b", "b", "a", "a"]
    assert sorted(os.listdir(tmp_path)) == ["epochs.csv", "runs.csv"]


def test_read_results_prefers_ok_then_latest(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    shard = (1, 2)
    results.replace_run(
        run_row("a", "max", 0, 0.5, 1.0), [{"epoch": 1, "v": 1}], one
    )
    results.replace_run(
        run_row("a", "max", 0, 0.9, 1.0, status="failed"),
        [{"epoch": 1, "v": 2}],
        two,
        shard=shard,
    )
    late = "2025-01-01T00:00:00"
    results.replace_run(
        run_row("b", "max", 1, 0.5, 1.0), [{"epoch": 1, "v": 3}], one
    )
    results.replace_run(
        run_row("b", "max", 1, 0.7, 1.0, finished_at=late),
        [{"epoch": 1, "v": 4}],
        two,
        shard=shard,
    )
    assert (two / "runs.shard-1-of-2.csv").exists()
    runs, epochs = results.read_results([one, two / "runs.shard-1-of-2.csv"])
    assert sorted(runs["run_id"]) == ["a", "b"]
    by_id = runs.set_index("run_id")
    assert by_id.loc["a", "test_accuracy"] == 0.5
    assert by_id.loc["b", "test_accuracy"] == 0.7
    assert sorted(epochs["v"]) == [1, 4]
    assert results.finished_run_ids(two) == {"b"}


def test_merge_writes_tables_summary_plots(tmp_path):
    one, two, out = tmp_path / "one", tmp_path / "two", tmp_path / "out"
    for directory, run_id, name, shard in [
        (one, "a", "max", (1, 2)),
        (two, "b", "avg", (2, 2)),
    ]:
        results.replace_run(
            run_row(run_id, name, 0, 0.5, 1.0, shift_consistency=0.9),
            [{"epoch": e, "test_accuracy": e / 10} for e in (1, 2)],
            directory,
            shard=shard,
        )
        (directory / "config.yaml").write_text("name: exp\n")
    summary = results.merge([one, two], out)
    assert sorted(summary["downsampling"]) == ["avg", "max"]
    assert sorted(pd.read_csv(out / "runs.csv")["run_id"]) == ["a", "b"]
    assert len(pd.read_csv(out / "epochs.csv")) == 4
    assert (out / "config.yaml").read_text() == "name: exp\n"
    for name in [
        "summary.csv",
        "accuracy_vs_throughput.png",
        "learning_curves.png",
        "shift_consistency_vs_accuracy.png",
    ]:
        assert (out / name).stat().st_size > 0, name


def test_merge_without_runs_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="runs"):
        results.merge([tmp_path], tmp_path / "out")


def test_numeric_looking_run_ids_stay_strings(tmp_path):
    # A 12-digit hex hash can be all digits, with a leading zero.
    results.replace_run(
        run_row("012345678901", "max", 0, 0.5, 1.0), [], tmp_path
    )
    results.replace_run(run_row("1e10", "avg", 0, 0.5, 1.0), [], tmp_path)
    assert results.finished_run_ids(tmp_path) == {"012345678901", "1e10"}


def test_report_shows_the_pooling_claims_columns():
    runs = pd.DataFrame(
        [
            run_row(
                f"s{seed}",
                "max",
                seed,
                0.5,
                2.0,
                shift_consistency=consistency,
                overfit_gap=gap,
                **{f"shift_accuracy_{k}px": 0.5 - 0.1 * k for k in (1, 2)},
                **{f"shift_accuracy_{k}px": shifted for k in (3, 4)},
            )
            for seed, consistency, gap, shifted in [
                (0, 80.0, 0.1, 0.2),
                (1, 90.0, 0.3, 0.4),
            ]
        ]
    )
    lines = results.report(results.summarize(runs)).splitlines()[2:]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    row = dict(zip(header, cells, strict=True))
    assert row["shift consistency %"] == "85.00 ± 7.07"
    assert row["shift acc 1px %"] == "40.00 ± 0.00"
    assert row["shift acc 2px %"] == "30.00 ± 0.00"
    assert row["shift acc 4px %"] == "30.00 ± 14.14"
    assert row["overfit gap %"] == "20.00 ± 14.14"
