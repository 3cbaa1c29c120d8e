import math
import os
import pathlib

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from kpool.harness import report_file, results, statistics


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


def table_rows(text, first_column):
    """{downsampling: {column: cell}} of the markdown table in `text` whose
    first column is `first_column`."""
    lines = text.splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.startswith(f"| {first_column} |")
    )
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    header, rows = table[0], table[2:]
    return {
        row[header.index("downsampling")]: dict(zip(header, row, strict=True))
        for row in rows
    }


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
    by_name = table_rows(sections[0], "rank")
    # ± the 95% t interval's half-width: t(0.975, 2) * 0.1 / sqrt(3) and
    # t(0.975, 1) * sqrt(0.005) / sqrt(2) (t from a printed table).
    assert by_name["max"]["test acc %"] == "60.00 ± 24.84"
    assert by_name["avg"]["test acc %"] == "45.00 ± 63.53"
    assert by_name["allconv"]["test acc %"] == "80.00"
    assert by_name["allconv"]["note"] == "1 seed: no interval"
    assert results.INTERVAL_NOTE in sections[0]
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
    summary, text = results.merge([one, two], out)
    assert sorted(summary["downsampling"]) == ["avg", "max"]
    assert text == results.report(summary) == report_file.read_report(out)
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
    # Two seeds: half-widths t(0.975, 1) = 12.706 times sd / sqrt(2).
    assert row["shift consistency %"] == "85.00 ± 63.53"
    assert row["shift acc 1px %"] == "40.00 ± 0.00"
    assert row["shift acc 2px %"] == "30.00 ± 0.00"
    assert row["shift acc 4px %"] == "30.00 ± 127.06"
    assert row["overfit gap %"] == "20.00 ± 127.06"


def timed_epochs(run_id, step_seconds, steps=10):
    """Epoch rows of a run whose timed epochs took these seconds per step,
    after a first epoch that was not timed (compilation)."""
    rows = [
        {"run_id": run_id, "epoch": 1, "timed_steps": 0, "timed_seconds": 0}
    ]
    for epoch, seconds in enumerate(step_seconds, start=2):
        rows.append(
            {
                "run_id": run_id,
                "epoch": epoch,
                "timed_steps": steps,
                "timed_seconds": seconds * steps,
            }
        )
    return rows


@pytest.fixture
def timed():
    runs = pd.DataFrame(
        [
            run_row("m", "max", 0, 0.5, 1.0),
            run_row("a", "avg", 0, 0.5, 1.5),
            run_row("n", "min", 0, 0.5, 1.05),
            run_row("g", "gated", 0, 0.5, 2.0),
        ]
    )
    epochs = pd.DataFrame(
        timed_epochs("m", [0.9, 1.0, 1.0, 1.1])
        + timed_epochs("a", [1.4, 1.5, 1.5, 1.6])
        + timed_epochs("n", [0.7, 1.05, 1.05, 1.4])
        # One timed epoch: no spread to report.
        + timed_epochs("g", [2.0])
    )
    return runs, epochs


def test_summary_epoch_time_spread_and_noisy_ratios(timed):
    runs, epochs = timed
    summary = results.summarize(runs, epochs).set_index("downsampling")
    # Quartiles by linear interpolation: 0.975 and 1.025 around 1.0.
    np.testing.assert_allclose(summary.loc["max", "epoch_time_iqr"], 0.05)
    np.testing.assert_allclose(summary.loc["avg", "epoch_time_iqr"], 0.05 / 1.5)
    np.testing.assert_allclose(
        summary.loc["min", "epoch_time_iqr"], 0.175 / 1.05
    )
    assert math.isnan(summary.loc["gated", "epoch_time_iqr"])
    # min: 1.05 is within 5% + 16.7% of 1; avg: 1.5 is not within 8.3%.
    noisy = summary["epoch_time_vs_max_noisy"]
    assert noisy.to_dict() == {
        "max": False,
        "avg": False,
        "min": True,
        "gated": False,
    }
    # Without epochs, no spread columns.
    assert "epoch_time_iqr" not in results.summarize(runs)


def test_report_shows_the_spread_and_flags_noisy_ratios(timed):
    runs, epochs = timed
    text = results.report(results.summarize(runs, epochs))
    lines = text.splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    rows = {}
    for line in lines[4:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[1]] = dict(zip(header, cells, strict=True))
    assert rows["min"]["epoch time vs max"] == "1.05 *"
    assert rows["avg"]["epoch time vs max"] == "1.50"
    assert rows["max"]["epoch time IQR %"] == "5"
    assert rows["min"]["epoch time IQR %"] == "17"
    assert rows["gated"]["epoch time IQR %"] == ""
    assert results.NOISY_NOTE in text
    quiet = runs[runs["downsampling"] != "min"]
    assert results.NOISY_NOTE not in results.report(
        results.summarize(quiet, epochs)
    )


@pytest.mark.parametrize("seeds, fallback", [(1, True), (3, False)])
def test_plot_title_says_what_the_plot_shows(seeds, fallback):
    runs = pd.DataFrame(
        [
            run_row(
                f"{name}{seed}",
                name,
                seed,
                0.5,
                1.0,
                device="cpu",
                data_fallback=fallback,
            )
            for name in ("max", "gated")
            for seed in range(seeds)
        ]
    )
    title = results.plot_title(runs)
    assert title.startswith("exp: SYNTHETIC ")
    assert ("FALLBACK" in title) is fallback
    assert "model small_cnn, backend jax, device cpu" in title
    assert title.endswith(f"{seeds} seed" + ("s" if seeds > 1 else ""))
    cifar = runs.assign(dataset="cifar10")
    assert results.plot_title(cifar).startswith("exp: cifar10\n")


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots would save, kept open for inspection."""
    saved = {}

    def save(fig, path):
        saved[pathlib.Path(path).name] = fig

    monkeypatch.setattr(results, "_save", save)
    yield saved
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.parametrize("seeds", [1, 2])
def test_scatter_legend_percent_and_bars_text(figures, tmp_path, seeds):
    # "gated" and "mixed" at the same point: their labels once overlapped.
    runs = pd.DataFrame(
        [
            run_row(f"{name}{seed}", name, seed, 0.6 + 0.01 * seed, 1.0)
            for name in ("max", "gated", "mixed")
            for seed in range(seeds)
        ]
    )
    summary = results.summarize(runs)
    results.write_plots(runs, pd.DataFrame(), summary, tmp_path)
    fig = figures["accuracy_vs_throughput.png"]
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "max",
        "gated",
        "mixed",
    ]
    # No text at the points, which could overlap.
    assert len(ax.texts) == 0
    assert ax.get_ylabel() == "test accuracy (%)"
    points = [line.get_ydata()[0] for line in ax.lines if len(line.get_ydata())]
    np.testing.assert_allclose(points[0], 100 * (0.6 + 0.005 * (seeds - 1)))
    title = ax.get_title()
    assert title.startswith(results.plot_title(runs))
    if seeds == 1:
        assert "interval" not in title and "no error bars" in title
    else:
        assert "bars: 95% t interval of the mean over seeds" in title
        # The bars are the interval: mean ± t(0.975, 1) * sd / sqrt(2).
        _, bar = ax.containers[0].lines[2]  # x and y bars
        low, high = bar.get_segments()[0][:, 1]
        half = 12.7062047 * np.std([60, 61], ddof=1) / np.sqrt(2)
        np.testing.assert_allclose([low, high], [60.5 - half, 60.5 + half])


def test_learning_curves_in_percent(figures, tmp_path):
    runs = pd.DataFrame([run_row("a", "max", 0, 0.5, 1.0)])
    epochs = pd.DataFrame(
        [{"run_id": "a", "epoch": e, "test_accuracy": e / 10} for e in (1, 2)]
    )
    results.write_plots(runs, epochs, results.summarize(runs), tmp_path)
    (ax,) = figures["learning_curves.png"].axes
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [10, 20])
    assert ax.get_ylabel() == "test accuracy (%)"
    assert ax.get_title() == results.plot_title(runs)


def five_seeds(differences, baseline=(0.90, 0.91, 0.92, 0.93, 0.94)):
    """Runs of max and of choice "x" on five seeds; x's accuracy is max's
    plus `differences`, and both have shift consistency 100 times their
    accuracy and an overfitting gap of minus it."""
    rows = []
    for name, offsets in (("max", [0] * 5), ("x", differences)):
        pairs = zip(baseline, offsets, strict=True)
        for seed, (base, offset) in enumerate(pairs):
            accuracy = base + offset
            rows.append(
                run_row(
                    f"{name}{seed}",
                    name,
                    seed,
                    accuracy,
                    1.0,
                    shift_consistency=100 * accuracy,
                    overfit_gap=-accuracy,
                )
            )
    return pd.DataFrame(rows)


def test_summary_paired_columns_and_units():
    runs = five_seeds([0.01, 0.02, 0.01, 0.02, 0.02])
    summary = results.summarize(runs).set_index("downsampling")
    x = summary.loc["x"]
    for column in [
        "test_accuracy_ci95_low",
        "test_accuracy_ci95_high",
        "test_accuracy_diff_vs_baseline",
        "test_accuracy_diff_ci95_low",
        "test_accuracy_diff_ci95_high",
        "test_accuracy_p_holm",
        "test_accuracy_prob_improvement",
        "test_accuracy_verdict",
        "test_accuracy_seeds_for_0.2pt",
        "shift_consistency_verdict",
        "overfit_gap_verdict",
    ]:
        assert column in summary, column
    assert (summary["baseline"] == "max").all()
    assert summary.loc["max", "test_accuracy_verdict"] == "baseline"
    # By hand: differences' mean 0.016, sd sqrt(30e-6), t over 4 df.
    np.testing.assert_allclose(x["test_accuracy_diff_vs_baseline"], 0.016)
    t = 0.016 / (math.sqrt(30e-6) / math.sqrt(5))
    np.testing.assert_allclose(
        x["test_accuracy_p_paired_t"], 2 * scipy.stats.t.sf(t, 4)
    )
    # One choice compared: Holm changes nothing.
    assert x["test_accuracy_p_holm"] == x["test_accuracy_p_paired_t"]
    assert x["test_accuracy_verdict"] == "better"
    assert x["test_accuracy_prob_improvement"] == 1.0
    # Shift consistency is in percent, accuracies in fractions: the same
    # relative spread needs the same number of seeds for 0.2 points.
    seeds = x["test_accuracy_seeds_for_0.2pt"]
    assert seeds == statistics.seeds_to_detect(0.002, math.sqrt(30e-6))
    assert x["shift_consistency_seeds_for_0.2pt"] == seeds
    np.testing.assert_allclose(x["shift_consistency_diff_vs_baseline"], 1.6)
    # A larger overfitting gap is worse.
    assert x["overfit_gap_verdict"] == "better"
    assert x["overfit_gap_prob_improvement"] == 1.0
    assert x["note"] == ""


def test_summary_notes_one_seed_missing_baseline_and_no_spread(runs):
    summary = results.summarize(runs)
    small = summary[summary["model"] == "small_cnn"].set_index("downsampling")
    assert small.loc["allconv", "note"] == "1 seed: no interval"
    assert math.isnan(small.loc["allconv", "test_accuracy_ci95_low"])
    assert math.isnan(small.loc["allconv", "test_accuracy_diff_vs_baseline"])
    # avg is 0.1 below max on both of its seeds.
    assert small.loc["avg", "note"] == (
        "paired sd 0 over 2 seeds: no t-test, no seed count"
    )
    np.testing.assert_allclose(
        small.loc["avg", "test_accuracy_diff_vs_baseline"], -0.1
    )
    # vgg has no max pooling: its first choice is its baseline.
    vgg = summary[summary["model"] == "vgg"].iloc[0]
    assert vgg["baseline"] == "avg"
    assert vgg["test_accuracy_verdict"] == "baseline"
    # A named baseline that a setting has no runs of.
    named = results.summarize(runs, baseline="max")
    vgg = named[named["model"] == "vgg"].iloc[0]
    assert vgg["note"] == "1 seed: no interval; no runs of the baseline max"


def test_report_paired_tables():
    runs = pd.concat(
        [
            five_seeds([0.01, 0.02, 0.01, 0.02, 0.02]),
            pd.DataFrame([run_row("one", "single", 0, 0.5, 1.0)]),
        ]
    )
    text = results.report(results.summarize(runs))
    assert "test accuracy (%): each choice minus max" in text
    assert "Holm-corrected over 1 choices" in text
    accuracy = table_rows(text, "downsampling")
    half = scipy.stats.t.ppf(0.975, 4) * math.sqrt(30e-6) / math.sqrt(5)
    x = accuracy["x"]
    assert x["diff vs max [95% CI]"] == (
        f"+1.60 [{100 * (0.016 - half):+.2f}, {100 * (0.016 + half):+.2f}]"
    )
    assert x["verdict"] == "better"
    assert x["P(improve)"] == "1.00"
    assert x["seeds for 0.2 pt"] == str(
        statistics.seeds_to_detect(0.002, math.sqrt(30e-6))
    )
    assert accuracy["max"]["diff vs max [95% CI]"] == "baseline"
    assert accuracy["single"]["diff vs max [95% CI]"] == "1 seed: no interval"
    assert accuracy["single"]["mean ± 95% CI"] == "50.00"
    consistency = text[text.index("shift consistency (%): each") :]
    assert table_rows(consistency, "downsampling")["x"]["verdict"] == "better"


def test_write_summary_takes_the_baseline_of_config_yaml(tmp_path):
    runs = five_seeds([0.01, 0.02, 0.01, 0.02, 0.02])
    (tmp_path / "config.yaml").write_text("report:\n  baseline: x\n")
    assert results.read_baseline(tmp_path) == "x"
    summary, text = results.write_summary(runs, pd.DataFrame(), tmp_path)
    assert (summary["baseline"] == "x").all()
    assert text == results.report(summary) == report_file.read_report(tmp_path)
    written = pd.read_csv(tmp_path / "summary.csv").set_index("downsampling")
    assert written.loc["max", "test_accuracy_verdict"] == "worse"
    assert (tmp_path / "paired_differences.png").stat().st_size > 0
    assert results.read_baseline(tmp_path / "nowhere") is None


def test_paired_differences_plot(figures, tmp_path):
    runs = five_seeds([0.01, 0.02, 0.01, 0.02, 0.02])
    summary = results.summarize(runs)
    results.write_plots(runs, pd.DataFrame(), summary, tmp_path)
    fig = figures[results.DIFFERENCES_PLOT]
    accuracy, consistency = fig.axes
    assert "bars: its 95% t interval" in fig._suptitle.get_text()
    assert accuracy.get_xlabel().startswith("test accuracy (%): choice minus")
    (container,) = accuracy.containers
    point = np.asarray(container.lines[0].get_xdata(), dtype=float)
    np.testing.assert_allclose(point, [1.6])
    assert [t.get_text() for t in accuracy.get_yticklabels()] == ["x"]
    # With one seed there is no difference to plot.
    one = runs[runs["seed"] == 0]
    figures.clear()
    results.write_plots(one, pd.DataFrame(), results.summarize(one), tmp_path)
    assert results.DIFFERENCES_PLOT not in figures


def test_each_choice_keeps_its_colour_in_every_plot(figures, tmp_path):
    # Ranked, avg comes first in the summary; in the runs it comes second.
    runs = pd.DataFrame(
        [
            run_row(f"{name}{seed}", name, seed, accuracy + seed / 100, 1.0)
            for seed in (0, 1)
            for name, accuracy in (("max", 0.5), ("avg", 0.6), ("min", 0.4))
        ]
    )
    epochs = pd.DataFrame(
        [
            {"run_id": run_id, "epoch": epoch, "test_accuracy": 0.1 * epoch}
            for run_id in reversed(runs["run_id"])
            for epoch in (1, 2)
        ]
    )
    results.write_plots(runs, epochs, results.summarize(runs), tmp_path)
    colours = results._colours(runs)
    assert list(colours) == ["max", "avg", "min"]
    (scatter,) = figures["accuracy_vs_throughput.png"].axes
    for container, label in zip(
        scatter.containers, scatter.get_legend().get_texts(), strict=True
    ):
        assert container.lines[0].get_color() == colours[label.get_text()]
    (curves,) = figures["learning_curves.png"].axes
    for line in curves.lines:
        assert line.get_color() == colours[line.get_label()]
    assert "band: 95% t interval" in curves.get_ylabel()
    # One band per choice.
    assert len(curves.collections) == 3


# A table as written, then damaged.
RUNS_CSV = 'run_id,status,downsampling,run_config\na,ok,max,"{""x"": 1}"\n'


@pytest.mark.parametrize(
    "damaged, reason",
    [
        (RUNS_CSV.encode()[:-4], "ends mid-line"),
        (RUNS_CSV.encode()[:-8] + b"\n", "not a CSV table"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe garbage\n", "not a CSV table"),
        (b"", "it is empty"),
        (b"some,other\n1,2\n", "no run_id or status column"),
    ],
)
def test_unreadable_runs_table_is_named_and_kept(tmp_path, damaged, reason):
    path = tmp_path / "runs.csv"
    path.write_bytes(damaged)
    with pytest.raises(results.UnreadableTableError) as info:
        results.read_results([tmp_path])
    message = str(info.value)
    assert str(path) in message and reason in message
    assert "Move the file" in message or "Move it" in message
    # Nothing that would write over it gets that far.
    with pytest.raises(results.UnreadableTableError):
        results.finished_run_ids(tmp_path)
    if reason != "no run_id or status column":
        with pytest.raises(results.UnreadableTableError):
            results.replace_run(run_row("b", "avg", 0, 0.5, 1.0), [], tmp_path)
    assert path.read_bytes() == damaged
    assert sorted(os.listdir(tmp_path)) == ["runs.csv"]


def test_intact_tables_still_read(tmp_path):
    (tmp_path / "runs.csv").write_text(RUNS_CSV)
    runs, _ = results.read_results([tmp_path])
    assert runs["run_config"].tolist() == ['{"x": 1}']
    (tmp_path / "runs.csv").write_text("\n")
    assert results.read_table(tmp_path / "runs.csv").empty
