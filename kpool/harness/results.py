"""Result tables: atomic writes, merging, the summary, plots and reports.

An experiment directory holds `runs*.csv` (one row per run) and
`epochs*.csv` (one row per run and epoch). An unsharded run writes
`runs.csv` / `epochs.csv`; shard i of n writes `runs.shard-i-of-n.csv` /
`epochs.shard-i-of-n.csv`, so shards sharing a filesystem never write the
same file. Readers merge every `runs*.csv` in the directory; a run_id that
appears more than once keeps its "ok" row, then its latest one.

Every write goes to a temporary file in the same directory, is flushed to
disk and then renamed over the target: a reader, or a process killed
mid-write, only ever sees the old file or the new one.
"""

import contextlib
import math
import os
import pathlib

import pandas as pd

from kpool.harness import statistics
from kpool.harness.report_file import (
    CONFIG_FILE,
    EPOCHS_PREFIX,
    RUNS_PREFIX,
    atomic_open,
    epochs_table,
    fingerprint,
    runs_tables,
    write_report,
)

SUMMARY_FILE = "summary.csv"

# Rows that share these values are comparable runs; the summary has one row
# per downsampling choice within each setting.
SETTING_KEYS = ("model", "dataset", "backend")
GROUP_KEYS = (*SETTING_KEYS, "downsampling")
# Per-run metrics summarized as mean and std over seeds (those present).
SEED_METRICS = (
    "test_accuracy",
    "best_test_accuracy",
    "train_images_per_sec",
    "epoch_seconds",
    "shift_consistency",
    "shift_accuracy_1px",
    "shift_accuracy_2px",
    "shift_accuracy_3px",
    "shift_accuracy_4px",
    "overfit_gap",
)
# Properties of the architecture: the same for every seed.
MODEL_PROPERTIES = ("params", "flops_per_image", "receptive_field")
# Metrics compared with the baseline, pair by pair over shared seeds (see
# `kpool.harness.statistics`): (metric, its unit in percentage points,
# whether higher is better). Accuracies and the overfitting gap are
# fractions in runs.csv; shift consistency is already a percentage.
PAIRED_METRICS = (
    ("test_accuracy", 0.01, True),
    ("shift_consistency", 1.0, True),
    *((f"shift_accuracy_{k}px", 0.01, True) for k in range(1, 5)),
    ("overfit_gap", 0.01, False),
)
# The difference, in percentage points, whose detection
# `<metric>_seeds_for_0.2pt` sizes: pooling choices differ by tenths of a
# point on CIFAR-10.
DETECTABLE_POINTS = 0.2
# The summary's names for the columns of `statistics.compare_choices`.
PAIRED_COLUMNS = {
    "n_pairs": "n_pairs",
    "paired_sd": "paired_sd",
    "diff": "diff_vs_baseline",
    "diff_ci95_low": "diff_ci95_low",
    "diff_ci95_high": "diff_ci95_high",
    "p_paired_t": "p_paired_t",
    "p_holm": "p_holm",
    "prob_improvement": "prob_improvement",
    "verdict": "verdict",
    "seeds_to_detect": f"seeds_for_{DETECTABLE_POINTS}pt",
}


def table_name(prefix, shard=None):
    """`runs.csv`, or `runs.shard-2-of-4.csv` for shard (2, 4)."""
    if shard is None:
        return f"{prefix}.csv"
    index, count = shard
    return f"{prefix}.shard-{index}-of-{count}.csv"


def write_table(frame, path):
    """Writes a DataFrame as CSV atomically."""
    with atomic_open(path, "w") as f:
        frame.to_csv(f, index=False)


# Hex strings that pandas would otherwise read as numbers ("0123" -> 123).
STRING_COLUMNS = {"run_id": str, "git_commit": str}


class UnreadableTableError(ValueError):
    """A results table exists but cannot be read: kpool stops rather than
    write over it."""


def read_table(path):
    """Reads a CSV table; a table written without rows or columns is empty.

    Raises:
        UnreadableTableError: the file is not a CSV table (binary garbage,
            a quote left open) or was cut short: every table kpool writes
            ends with a newline (an empty one is a newline), so a missing
            one means the last row lost its end, which pandas would read
            with its missing cells empty.
    """
    path = pathlib.Path(path)

    def unreadable(reason):
        return UnreadableTableError(
            f"{path} cannot be read: {reason}. kpool wrote nothing. Move "
            "the file out of the directory, or restore it (from a backup, "
            "or by `kpool merge` of its shards), then run the command again."
        )

    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                raise unreadable("it is empty, as a truncated copy is")
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                raise unreadable("it ends mid-line, as a truncated copy does")
        return pd.read_csv(path, dtype=STRING_COLUMNS)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        reason = " ".join(str(e).split())
        raise unreadable(f"it is not a CSV table ({reason})") from None


def replace_run(run_row, epoch_rows, directory, shard=None):
    """Puts one finished run into this process's tables, atomically.

    Any earlier rows of the same run_id (an unfinished or failed attempt)
    are replaced. The epochs table is written first: a kill between the two
    writes leaves epochs of a run that the runs table does not list yet,
    which the next attempt overwrites.
    """
    directory = pathlib.Path(directory)
    run_id = run_row["run_id"]
    tables = []
    # Both tables are read before either is written: an unreadable one
    # stops the write of both.
    for prefix, rows in (
        (EPOCHS_PREFIX, [{"run_id": run_id, **r} for r in epoch_rows]),
        (RUNS_PREFIX, [run_row]),
    ):
        path = directory / table_name(prefix, shard)
        old = read_table(path) if path.exists() else pd.DataFrame()
        if "run_id" in old:
            old = old[old["run_id"] != run_id]
        new = pd.DataFrame(rows)
        if old.empty:
            tables.append((new, path))
        else:
            tables.append((pd.concat([old, new], ignore_index=True), path))
    for table, path in tables:
        write_table(table, path)


def find_runs_tables(sources):
    """Runs tables in the given directories and files, in a stable order."""
    paths = []
    for source in sources:
        source = pathlib.Path(source)
        if source.is_dir():
            paths.extend(runs_tables(source))
        elif source.is_file():
            paths.append(source)
        else:
            raise FileNotFoundError(f"No such file or directory: {source}")
    return paths


def read_results(sources):
    """Merged (runs, epochs) DataFrames of directories or runs tables.

    A run_id found in several tables keeps one row: an "ok" row over any
    other status, then the latest `finished_at`. Its epochs come from the
    same table as the row kept.
    """
    runs, epochs = [], []
    for index, path in enumerate(find_runs_tables(sources)):
        table = read_table(path)
        missing = [c for c in ("run_id", "status") if c not in table]
        if missing and not table.empty:
            raise UnreadableTableError(
                f"{path} is not a runs table: it has no "
                f"{' or '.join(missing)} column. kpool wrote nothing. Move "
                "it out of the directory, or restore it, then run the "
                "command again."
            )
        runs.append(table.assign(_source=index))
        if epochs_table(path).exists():
            epoch_table = read_table(epochs_table(path))
            if not epoch_table.empty:
                epochs.append(epoch_table.assign(_source=index))
    if not runs:
        return pd.DataFrame(), pd.DataFrame()
    runs = pd.concat(runs, ignore_index=True)
    order = runs.assign(
        _ok=runs["status"] == "ok",
        _finished=runs.get("finished_at", pd.Series(dtype=str)).fillna(""),
    ).sort_values(["_ok", "_finished", "_source"], kind="stable")
    runs = order.drop_duplicates("run_id", keep="last")
    runs = runs.drop(columns=["_ok", "_finished"]).sort_index()
    if epochs:
        epochs = pd.concat(epochs, ignore_index=True)
        epochs = epochs.merge(
            runs[["run_id", "_source"]], on=["run_id", "_source"]
        ).drop(columns="_source")
    else:
        epochs = pd.DataFrame()
    return runs.drop(columns="_source").reset_index(drop=True), epochs


def finished_run_ids(directory):
    """run_ids that already have an "ok" row in `directory`'s tables."""
    if not pathlib.Path(directory).is_dir():
        return set()
    runs, _ = read_results([directory])
    if runs.empty:
        return set()
    return set(runs.loc[runs["status"] == "ok", "run_id"])


def summarize(runs, epochs=None, baseline=None):
    """One row per downsampling choice (within each setting), ranked.

    Means, (sample, ddof=1) standard deviations and 95% Student-t
    intervals of the mean (`<metric>_ci95_low`, `_ci95_high`) over seeds
    of the `SEED_METRICS` present, the architecture's `MODEL_PROPERTIES`,
    and `epoch_time_vs_max`: the mean epoch time relative to max pooling in
    the same setting (NaN without a max pooling row). Only "ok" runs count.
    Ranked by mean test accuracy within each setting.

    Each of the `PAIRED_METRICS` present is compared with the setting's
    `baseline` choice over the seeds both have (`PAIRED_COLUMNS`, prefixed
    by the metric; see `kpool.harness.statistics.compare_choices`): the
    mean difference and its 95% interval, the paired t-test's p-value and
    its Holm correction over the setting's choices, the probability of
    improvement, the verdict, and the seeds that would detect a
    `DETECTABLE_POINTS` difference with 80% power. `baseline` None takes
    max pooling, or the setting's first choice when it has no max pooling
    (column `baseline`). `note` says why numbers are missing (one seed, no
    baseline runs, no shared seeds, a paired sd of 0).

    With the `epochs` table, also how noisy the timing is:
    `epoch_time_iqr` is the interquartile range of the choice's timed epochs
    (seconds per step, every epoch of every seed) over their median, and
    `epoch_time_vs_max_noisy` flags a ratio that differs from 1 by no more
    than its own spread, the sum of the choice's and max pooling's
    `epoch_time_iqr`: such a ratio does not tell the two apart.
    """
    runs = runs[runs["status"] == "ok"]
    metrics = [m for m in SEED_METRICS if m in runs]
    properties = [p for p in MODEL_PROPERTIES if p in runs]
    if runs.empty:
        columns = [*GROUP_KEYS, "rank", "n_seeds"]
        return pd.DataFrame(columns=columns)
    grouped = runs.groupby(list(GROUP_KEYS), sort=False)
    summary = grouped["seed"].nunique().rename("n_seeds").to_frame()
    for metric in metrics:
        summary[f"{metric}_mean"] = grouped[metric].mean()
        summary[f"{metric}_std"] = grouped[metric].std(ddof=1)
        half = statistics.half_width(
            summary[f"{metric}_std"], grouped[metric].count()
        )
        summary[f"{metric}_ci95_low"] = summary[f"{metric}_mean"] - half
        summary[f"{metric}_ci95_high"] = summary[f"{metric}_mean"] + half
    for name in properties:
        summary[name] = grouped[name].first()
    summary = summary.reset_index()
    summary = _paired_statistics(summary, runs, baseline)
    if "epoch_seconds_mean" in summary:
        summary["epoch_time_vs_max"] = _relative_to_max(
            summary, "epoch_seconds_mean"
        )
        spread = _epoch_time_iqr(runs, epochs)
        if spread is not None:
            summary = summary.merge(spread, on=list(GROUP_KEYS), how="left")
            combined = summary["epoch_time_iqr"] + _relative_to_max(
                summary, "epoch_time_iqr", divide=False
            )
            summary["epoch_time_vs_max_noisy"] = (
                summary["downsampling"] != "max"
            ) & ((summary["epoch_time_vs_max"] - 1).abs() <= combined)
    summary = summary.sort_values(
        [*SETTING_KEYS, "test_accuracy_mean"],
        ascending=[True] * len(SETTING_KEYS) + [False],
        kind="stable",
    )
    rank = summary.groupby(list(SETTING_KEYS)).cumcount() + 1
    summary.insert(len(GROUP_KEYS), "rank", rank)
    last = [c for c in summary if c != "note"] + ["note"]
    return summary[last].reset_index(drop=True)


def _paired_statistics(summary, runs, baseline):
    """`summary` with the baseline, the paired comparisons of the
    `PAIRED_METRICS` present, and the notes."""
    paired = [m for m in PAIRED_METRICS if m[0] in runs]
    parts = []
    for setting, part in runs.groupby(list(SETTING_KEYS), sort=False):
        choices = list(dict.fromkeys(part["downsampling"]))
        chosen = baseline or ("max" if "max" in choices else choices[0])
        # (metric, choice) columns, a row per seed (the mean of repeats).
        values = (
            part.groupby(["downsampling", "seed"], sort=False)[
                [metric for metric, *_ in paired]
            ]
            .mean()
            .unstack("downsampling")
        )
        columns = {"baseline": chosen}
        notes = {}
        for metric, unit, higher_is_better in paired:
            table = statistics.compare_choices(
                values[metric].reindex(columns=choices),
                chosen,
                min_difference=DETECTABLE_POINTS * unit,
                higher_is_better=higher_is_better,
            )
            for name, column in PAIRED_COLUMNS.items():
                columns[f"{metric}_{column}"] = table[name]
            # Only the metrics a choice has values of speak for it.
            notes[metric] = table["note"].where(table["n_seeds"] > 0)
        frame = pd.DataFrame(columns, index=pd.Index(choices))
        frame["note"] = [
            _join_notes(
                {m: n[choice] for m, n in notes.items() if pd.notna(n[choice])}
            )
            for choice in choices
        ]
        keys = dict(zip(SETTING_KEYS, setting, strict=True))
        parts.append(
            frame.rename_axis("downsampling").reset_index().assign(**keys)
        )
    return summary.merge(
        pd.concat(parts, ignore_index=True), on=list(GROUP_KEYS), how="left"
    )


def _join_notes(notes):
    """One note from each metric's: a note all metrics share once, others
    prefixed by the metrics they concern."""
    distinct = dict.fromkeys(
        part for note in notes.values() for part in note.split("; ") if part
    )
    joined = []
    for part in distinct:
        concerned = [m for m, note in notes.items() if part in note.split("; ")]
        joined.append(
            part
            if len(concerned) == len(notes)
            else f"{', '.join(concerned)}: {part}"
        )
    return "; ".join(joined)


def _relative_to_max(summary, column, divide=True):
    """`column` over max pooling's value in the same setting, or (`divide`
    false) max pooling's value itself, row by row."""
    is_max = summary["downsampling"] == "max"
    reference = summary[is_max].set_index(list(SETTING_KEYS))[column]
    keys = pd.MultiIndex.from_frame(summary[list(SETTING_KEYS)])
    reference = reference.reindex(keys).to_numpy()
    return summary[column].to_numpy() / reference if divide else reference


def _epoch_time_iqr(runs, epochs):
    """Per choice: the IQR over the median of its timed epochs' seconds per
    step; None without per-epoch timings. Fewer than two timed epochs give
    NaN: one epoch shows no spread."""
    needed = {"run_id", "timed_seconds", "timed_steps"}
    if epochs is None or epochs.empty or not needed <= set(epochs):
        return None
    timed = epochs[epochs["timed_steps"] > 0]
    timed = timed.assign(
        step_seconds=timed["timed_seconds"] / timed["timed_steps"]
    ).merge(runs[["run_id", *GROUP_KEYS]], on="run_id")

    def spread(times):
        if times.count() < 2:
            return math.nan
        low, median, high = times.quantile([0.25, 0.5, 0.75])
        return (high - low) / median

    return (
        timed.groupby(list(GROUP_KEYS))["step_seconds"]
        .agg(spread)
        .rename("epoch_time_iqr")
        .reset_index()
    )


def markdown_table(frame):
    """A GitHub markdown table of a DataFrame; NaN cells are left empty."""

    def cell(value):
        if isinstance(value, float) and math.isnan(value):
            return ""
        return str(value).replace("|", "\\|")

    header = [str(c) for c in frame.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def _mean_interval(summary, metric, scale=1.0, digits=2):
    """'mean ± half-width of its 95% interval' cells; the mean alone
    where there is no interval (one seed)."""
    mean = summary[f"{metric}_mean"] * scale
    half = (summary[f"{metric}_mean"] - summary[f"{metric}_ci95_low"]) * scale
    return [
        ""
        if math.isnan(m)
        else f"{m:.{digits}f}"
        if math.isnan(h)
        else f"{m:.{digits}f} ± {h:.{digits}f}"
        for m, h in zip(mean, half, strict=True)
    ]


NOISY_MARK = " *"
NOISY_NOTE = (
    f"{NOISY_MARK.strip()} epoch time vs max: within the epochs' spread "
    "(this choice's IQR % plus max's); it does not tell the two apart."
)
INTERVAL_NOTE = (
    "± is the half-width of the 95% Student-t interval of the mean over seeds."
)
# (metric, title, scale to percent): shift consistency is already one.
PERCENT_METRICS = (
    ("test_accuracy", "test acc %", 100),
    ("best_test_accuracy", "best test acc %", 100),
    ("shift_consistency", "shift consistency %", 1),
    *(
        (f"shift_accuracy_{k}px", f"shift acc {k}px %", 100)
        for k in range(1, 5)
    ),
    ("overfit_gap", "overfit gap %", 100),
)
# The metrics whose paired comparison the report shows.
REPORTED_COMPARISONS = (
    ("test_accuracy", "test accuracy (%)", 100),
    ("shift_consistency", "shift consistency (%)", 1),
)


def report(summary):
    """The summary as markdown: for each setting (model, data, backend), a
    table of every choice and then its paired comparisons.

    The first table has accuracies and shift metrics in percent, as mean
    ± the half-width of the 95% interval over seeds, and epoch time ratios
    with the epochs' IQR (as % of their median); ratios within that spread
    are marked and explained under the table. Then, for test accuracy and
    shift consistency, each choice against the baseline over shared seeds:
    the difference with its 95% interval, the Holm-corrected p-value of
    the paired t-test, the probability of improvement, the verdict and
    the seeds that would detect a 0.2-point difference.
    """
    if summary.empty:
        return "No finished runs."
    sections = []
    for setting, part in summary.groupby(list(SETTING_KEYS), sort=False):
        title = ", ".join(
            f"{k}={v}" for k, v in zip(SETTING_KEYS, setting, strict=True)
        )
        section = [f"### {title}", markdown_table(_choices_table(part))]
        notes = [INTERVAL_NOTE]
        if part.get("epoch_time_vs_max_noisy", pd.Series(False)).any():
            notes.append(NOISY_NOTE)
        section.append("\n".join(notes))
        for metric, name, scale in REPORTED_COMPARISONS:
            if f"{metric}_diff_vs_baseline" in part:
                section.extend(_comparison(part, metric, name, scale))
        sections.append("\n\n".join(section))
    return "\n\n".join(sections)


def _choices_table(part):
    table = pd.DataFrame(
        {
            "rank": part["rank"],
            "downsampling": part["downsampling"],
            "seeds": part["n_seeds"],
        }
    )
    for metric, title, scale in PERCENT_METRICS:
        if f"{metric}_mean" in part:
            table[title] = _mean_interval(part, metric, scale=scale)
    if "train_images_per_sec_mean" in part:
        table["train img/s"] = _mean_interval(
            part, "train_images_per_sec", digits=0
        )
    if "epoch_time_vs_max" in part:
        noisy = part.get(
            "epoch_time_vs_max_noisy", pd.Series(False, part.index)
        )
        table["epoch time vs max"] = [
            "" if math.isnan(v) else f"{v:.2f}{NOISY_MARK if flag else ''}"
            for v, flag in zip(part["epoch_time_vs_max"], noisy, strict=True)
        ]
    if "epoch_time_iqr" in part:
        table["epoch time IQR %"] = [
            "" if math.isnan(v) else f"{100 * v:.0f}"
            for v in part["epoch_time_iqr"]
        ]
    for name in MODEL_PROPERTIES:
        if name in part:
            table[name] = [
                "" if math.isnan(v) else f"{int(v):,}" for v in part[name]
            ]
    if "note" in part and (part["note"].fillna("") != "").any():
        table["note"] = part["note"].fillna("")
    return table


def _comparison(part, metric, name, scale):
    """The heading and table of one metric's paired comparisons."""
    baseline = part["baseline"].iloc[0]
    column = f"{metric}_{PAIRED_COLUMNS['seeds_to_detect']}"
    compared = part[f"{metric}_p_paired_t"].notna().sum()
    heading = (
        f"{name}: each choice minus {baseline} over the seeds both have "
        "(paired), with its 95% interval; p: paired t-test, "
        f"Holm-corrected over {compared} choices; P(improve): share of "
        "seed pairs in which the choice is better (ties 1/2); verdict at "
        f"alpha {statistics.ALPHA}; seeds for {DETECTABLE_POINTS} pt: "
        "seeds that would detect a 0.2-point difference with 80% power at "
        "the observed paired sd."
    )
    table = pd.DataFrame(
        {
            "downsampling": part["downsampling"],
            "seeds": part["n_seeds"],
            "mean ± 95% CI": _mean_interval(part, metric, scale=scale),
            f"diff vs {baseline} [95% CI]": [
                _difference(row, metric, scale, baseline)
                for _, row in part.iterrows()
            ],
            "Holm p": [_p_value(p) for p in part[f"{metric}_p_holm"]],
            "P(improve)": [
                "" if pd.isna(p) else f"{p:.2f}"
                for p in part[f"{metric}_prob_improvement"]
            ],
            "verdict": part[f"{metric}_verdict"].fillna(""),
            f"seeds for {DETECTABLE_POINTS} pt": [
                _seed_count(n, sd)
                for n, sd in zip(
                    part[column], part[f"{metric}_paired_sd"], strict=True
                )
            ],
        }
    )
    return [heading, markdown_table(table)]


def _difference(row, metric, scale, baseline):
    """'+0.25 [-0.10, +0.60]', or why there is no difference to show."""
    if row["downsampling"] == baseline:
        return "baseline"
    diff = row[f"{metric}_diff_vs_baseline"]
    if pd.isna(diff):
        return row.get("note") or "no paired seeds"
    low, high = (row[f"{metric}_diff_ci95_{e}"] for e in ("low", "high"))
    return f"{diff * scale:+.2f} [{low * scale:+.2f}, {high * scale:+.2f}]"


def _p_value(p):
    if pd.isna(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _seed_count(n, sd):
    if pd.isna(n):
        return "paired sd 0" if sd == 0 else ""
    return "> 10^9" if math.isinf(n) else f"{int(n)}"


def _settings(summary):
    return list(summary.groupby(list(SETTING_KEYS), sort=False))


def _label(setting, name, several):
    return f"{name} ({', '.join(map(str, setting))})" if several else name


def _values(frame, column):
    values = frame[column].dropna() if column in frame else pd.Series()
    return " / ".join(map(str, values.unique())) or "unknown"


def plot_title(runs):
    """What a plot of these "ok" runs shows: experiment, data (SYNTHETIC in
    capitals when it is), model, backend, device and number of seeds."""
    ok = runs[runs["status"] == "ok"]
    fallback = ok.get("data_fallback", pd.Series(False, ok.index))
    synthetic = (
        "SYNTHETIC FALLBACK DATA, not real images"
        if fallback.fillna(False).astype(bool).any()
        else "SYNTHETIC DATA, not real images"
    )
    datasets = " / ".join(
        synthetic if name == "synthetic" else str(name)
        for name in ok.get("dataset", pd.Series()).dropna().unique()
    )
    per_choice = ok.groupby("downsampling")["seed"].nunique()
    low, high = (per_choice.min(), per_choice.max()) if len(ok) else (0, 0)
    seeds = f"{low} seed" if low == high else f"{low}-{high} seed"
    seeds += "" if high == 1 else "s"
    return (
        f"{_values(ok, 'experiment')}: {datasets or 'unknown data'}\n"
        f"model {_values(ok, 'model')}, backend {_values(ok, 'backend')}, "
        f"device {_values(ok, 'device')}, {seeds}"
    )


# A marker per setting; a colour per choice (tab20 has 20, as many as the
# largest grids).
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
INTERVAL_BARS = "bars: 95% t interval of the mean over seeds"


def _colours(runs):
    """A colour per choice, the same in every plot of these runs: the
    choices in their order of first appearance in the runs table (the
    config's order, as the grid is seed-major)."""
    import matplotlib

    # tab20 pairs a dark and a light shade of each hue: the ten dark ones
    # first, so that up to ten choices differ in hue.
    colours = matplotlib.colormaps["tab20"].colors
    cycle = colours[0::2] + colours[1::2]
    names = dict.fromkeys(runs["downsampling"])
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _scatter(summary, x, y, path, title, colours):
    """Mean of `y` against mean of `x` per choice, with bars of their 95%
    intervals when there are seeds to take them over. `x` and `y` are
    (metric, label, scale). Each choice has its own colour and a legend
    entry rather than a text label at its point, which neighbouring points
    would overlap."""
    import matplotlib.pyplot as plt

    settings = _settings(summary)
    several = len(settings) > 1
    (x, xlabel, x_scale), (y, ylabel, y_scale) = x, y
    fig, ax = plt.subplots(figsize=(8, 5))
    for number, (setting, part) in enumerate(settings):
        for _, row in part.iterrows():
            ax.errorbar(
                row[f"{x}_mean"] * x_scale,
                row[f"{y}_mean"] * y_scale,
                xerr=_half_width(row, x) * x_scale,
                yerr=_half_width(row, y) * y_scale,
                fmt=_MARKERS[number % len(_MARKERS)],
                color=colours[row["downsampling"]],
                capsize=3,
                label=_label(setting, row["downsampling"], several),
            )
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    bars = (
        f"points: mean over seeds; {INTERVAL_BARS}"
        if (summary["n_seeds"] > 1).any()
        else "one seed per choice: no error bars"
    )
    ax.set_title(f"{title}\n{bars}", fontsize=9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.grid(alpha=0.3)
    _save(fig, path)


def _half_width(row, metric):
    low = row.get(f"{metric}_ci95_low", math.nan)
    return 0.0 if pd.isna(low) else row[f"{metric}_mean"] - low


def _compared_metrics(summary):
    """The `REPORTED_COMPARISONS` with at least one paired difference."""
    return [
        m
        for m in REPORTED_COMPARISONS
        if f"{m[0]}_diff_vs_baseline" in summary
        and summary[f"{m[0]}_diff_vs_baseline"].notna().any()
    ]


def _differences(summary, path, title, colours):
    """Each choice's paired difference from the baseline, with its 95%
    interval, for the `REPORTED_COMPARISONS` that have one: a panel per
    metric, a row per choice, a line at 0."""
    import matplotlib.pyplot as plt

    metrics = _compared_metrics(summary)
    settings = _settings(summary)
    rows = [
        (number, setting, row)
        for number, (setting, part) in enumerate(settings)
        for _, row in part.iterrows()
        if row["downsampling"] != row["baseline"]
    ]
    fig, axes = plt.subplots(
        1,
        len(metrics),
        figsize=(5 * len(metrics) + 2, 1.5 + 0.4 * len(rows)),
        squeeze=False,
    )
    baselines = " / ".join(summary["baseline"].unique())
    for ax, (metric, name, scale) in zip(axes[0], metrics, strict=True):
        for place, (number, _, row) in enumerate(rows):
            diff = row[f"{metric}_diff_vs_baseline"]
            if pd.isna(diff):
                continue
            low = row[f"{metric}_diff_ci95_low"]
            ax.errorbar(
                diff * scale,
                place,
                xerr=(diff - low) * scale,
                fmt=_MARKERS[number % len(_MARKERS)],
                color=colours[row["downsampling"]],
                capsize=3,
            )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(
            [
                _label(setting, row["downsampling"], len(settings) > 1)
                for _, setting, row in rows
            ]
        )
        ax.invert_yaxis()
        ax.set_xlabel(
            f"{name}: choice minus {baselines}, paired over shared seeds"
        )
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{title}\npoints: mean paired difference; "
        "bars: its 95% t interval over seed pairs",
        fontsize=9,
    )
    _save(fig, path)


def _learning_curves(runs, epochs, path, title, colours):
    """Mean test accuracy per epoch, and the 95% interval of the mean over
    seeds as a band where there are several seeds."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ok = runs[runs["status"] == "ok"]
    curves = epochs.merge(ok[["run_id", *GROUP_KEYS]], on="run_id")
    settings = list(curves.groupby(list(SETTING_KEYS), sort=False))
    fig, ax = plt.subplots(figsize=(8, 5))
    for number, (setting, part) in enumerate(settings):
        per_epoch = part.groupby(["downsampling", "epoch"], sort=False)
        interval = per_epoch["test_accuracy"].agg(
            lambda values: statistics.mean_interval(values)
        )
        for name, curve in interval.groupby(level=0, sort=False):
            curve = curve.sort_index(level="epoch")
            epoch = curve.index.get_level_values("epoch")
            mean, low, high = (100 * curve.str[i].to_numpy() for i in range(3))
            ax.plot(
                epoch,
                mean,
                marker=_MARKERS[number % len(_MARKERS)],
                color=colours[name],
                label=_label(setting, name, len(settings) > 1),
            )
            ax.fill_between(epoch, low, high, color=colours[name], alpha=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    several_seeds = (ok.groupby("downsampling")["seed"].nunique() > 1).any()
    ax.set_ylabel(
        "test accuracy (%, mean over seeds;\nband: 95% t interval of the mean)"
        if several_seeds
        else "test accuracy (%)"
    )
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.grid(alpha=0.3)
    _save(fig, path)


def _save(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


DIFFERENCES_PLOT = "paired_differences.png"
# (file, x, y) with each axis as (metric, label, scale to the label's unit).
SCATTERS = (
    (
        "accuracy_vs_throughput.png",
        ("train_images_per_sec", "training throughput (images/s)", 1),
        ("test_accuracy", "test accuracy (%)", 100),
    ),
    (
        "shift_consistency_vs_accuracy.png",
        ("test_accuracy", "test accuracy (%)", 100),
        # Already a percentage.
        ("shift_consistency", "shift consistency (%)", 1),
    ),
)


def write_plots(runs, epochs, summary, directory):
    """Writes the PNG plots that the data allows; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    directory = pathlib.Path(directory)
    written = []
    if summary.empty:
        return written

    def has(metric):
        return (
            f"{metric}_mean" in summary
            and summary[f"{metric}_mean"].notna().any()
        )

    title = plot_title(runs)
    colours = _colours(runs)
    for name, x, y in SCATTERS:
        if has(x[0]) and has(y[0]):
            _scatter(summary, x, y, directory / name, title, colours)
            written.append(directory / name)
    if _compared_metrics(summary):
        path = directory / DIFFERENCES_PLOT
        _differences(summary, path, title, colours)
        written.append(path)
    if not epochs.empty and "test_accuracy" in epochs:
        path = directory / "learning_curves.png"
        _learning_curves(runs, epochs, path, title, colours)
        written.append(path)
    return written


def read_baseline(directory):
    """The `report.baseline` of the config.yaml in `directory`; None
    (`summarize` then takes max pooling) when there is none."""
    import yaml

    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text()) or {}
    report = config.get("report") if isinstance(config, dict) else None
    return report.get("baseline") if isinstance(report, dict) else None


def write_summary(runs, epochs, directory, stamp=None):
    """Writes summary.csv, report.md and the plots into `directory`;
    returns the summary and the report's text.

    The paired comparisons take the baseline of the directory's
    config.yaml (`read_baseline`). `stamp` is the directory's
    `report_file.fingerprint` taken before `runs` and `epochs` were read
    from it (taken now when None)."""
    if stamp is None:
        stamp = fingerprint(directory)
    summary = summarize(runs, epochs, baseline=read_baseline(directory))
    write_table(summary, pathlib.Path(directory) / SUMMARY_FILE)
    text = report(summary)
    write_report(directory, text, stamp)
    write_plots(runs, epochs, summary, directory)
    return summary, text


def directory_report(directory):
    """The report of a results directory, as `kpool report` prints it.

    Recomputed from the tables, and report.md rewritten, when report.md is
    missing or stale (see `kpool.harness.report_file`); written only where
    the directory can be written to."""
    stamp = fingerprint(directory)
    runs, epochs = read_results([directory])
    if runs.empty:
        raise FileNotFoundError(f"No {RUNS_PREFIX}*.csv in {directory}")
    text = report(summarize(runs, epochs, read_baseline(directory)))
    with contextlib.suppress(OSError):
        write_report(directory, text, stamp)
    return text


def merge(sources, out_dir):
    """Merges result directories or runs tables into `out_dir`.

    Writes runs.csv, epochs.csv, summary.csv, report.md and the plots
    there, and copies config.yaml when all sources that have one agree on
    it. Returns the summary and the report's text (`write_summary`).
    """
    out_dir = pathlib.Path(out_dir)
    runs, epochs = read_results(sources)
    if runs.empty:
        raise FileNotFoundError(
            f"No {RUNS_PREFIX}*.csv found in: {', '.join(map(str, sources))}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(runs, out_dir / table_name(RUNS_PREFIX))
    write_table(epochs, out_dir / table_name(EPOCHS_PREFIX))
    configs = set()
    for source in map(pathlib.Path, sources):
        path = (source if source.is_dir() else source.parent) / CONFIG_FILE
        if path.exists():
            configs.add(path.read_text())
    if len(configs) == 1:
        with atomic_open(out_dir / CONFIG_FILE) as f:
            f.write(configs.pop())
    return write_summary(runs, epochs, out_dir)
