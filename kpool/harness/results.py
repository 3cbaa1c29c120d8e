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
import tempfile

import pandas as pd

RUNS_PREFIX = "runs"
EPOCHS_PREFIX = "epochs"
SUMMARY_FILE = "summary.csv"
CONFIG_FILE = "config.yaml"

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


def table_name(prefix, shard=None):
    """`runs.csv`, or `runs.shard-2-of-4.csv` for shard (2, 4)."""
    if shard is None:
        return f"{prefix}.csv"
    index, count = shard
    return f"{prefix}.shard-{index}-of-{count}.csv"


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Opens a temporary sibling of `path`; renames it over `path` on exit.

    The temporary name starts with a dot and ends in `.tmp`, so readers that
    glob `runs*.csv` never pick up a half-written file.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory):
    # Makes the rename itself durable; not possible on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_table(frame, path):
    """Writes a DataFrame as CSV atomically."""
    with atomic_open(path, "w") as f:
        frame.to_csv(f, index=False)


# Hex strings that pandas would otherwise read as numbers ("0123" -> 123).
STRING_COLUMNS = {"run_id": str, "git_commit": str}


def read_table(path):
    """Reads a CSV table; a table written without rows or columns is empty."""
    try:
        return pd.read_csv(path, dtype=STRING_COLUMNS)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def replace_run(run_row, epoch_rows, directory, shard=None):
    """Puts one finished run into this process's tables, atomically.

    Any earlier rows of the same run_id (an unfinished or failed attempt)
    are replaced. The epochs table is written first: a kill between the two
    writes leaves epochs of a run that the runs table does not list yet,
    which the next attempt overwrites.
    """
    directory = pathlib.Path(directory)
    run_id = run_row["run_id"]
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
            table = new
        else:
            table = pd.concat([old, new], ignore_index=True)
        write_table(table, path)


def _pair(runs_path):
    """The epochs table written together with a runs table."""
    runs_path = pathlib.Path(runs_path)
    suffix = runs_path.name[len(RUNS_PREFIX) :]
    return runs_path.with_name(EPOCHS_PREFIX + suffix)


def find_runs_tables(sources):
    """Runs tables in the given directories and files, in a stable order."""
    paths = []
    for source in sources:
        source = pathlib.Path(source)
        if source.is_dir():
            paths.extend(sorted(source.glob(f"{RUNS_PREFIX}*.csv")))
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
        runs.append(table.assign(_source=index))
        if _pair(path).exists():
            epoch_table = read_table(_pair(path))
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


def summarize(runs, epochs=None):
    """One row per downsampling choice (within each setting), ranked.

    Means and (sample, ddof=1) standard deviations over seeds of the
    `SEED_METRICS` present, the architecture's `MODEL_PROPERTIES`, and
    `epoch_time_vs_max`: the mean epoch time relative to max pooling in the
    same setting (NaN without a max pooling row). Only "ok" runs count.
    Ranked by mean test accuracy within each setting.

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
    for name in properties:
        summary[name] = grouped[name].first()
    summary = summary.reset_index()
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
    return summary.reset_index(drop=True)


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


def _mean_std(summary, metric, scale=1.0, digits=2):
    """'mean ± std' cells; the std is left out for a single seed."""
    mean = summary[f"{metric}_mean"] * scale
    std = summary[f"{metric}_std"] * scale
    return [
        ""
        if math.isnan(m)
        else f"{m:.{digits}f}"
        if math.isnan(s)
        else f"{m:.{digits}f} ± {s:.{digits}f}"
        for m, s in zip(mean, std, strict=True)
    ]


NOISY_MARK = " *"
NOISY_NOTE = (
    f"{NOISY_MARK.strip()} epoch time vs max: within the epochs' spread "
    "(this choice's IQR % plus max's); it does not tell the two apart."
)


def report(summary):
    """The summary as markdown: one table per setting (model, data, backend).

    Accuracies and shift metrics are in percent, mean ± std over seeds.
    Epoch time ratios come with the epochs' IQR (as % of their median);
    ratios within that spread are marked and explained under the table.
    """
    if summary.empty:
        return "No finished runs."
    # (metric, title, scale): shift consistency is already a percentage.
    percent = [
        ("test_accuracy", "test acc %", 100),
        ("best_test_accuracy", "best test acc %", 100),
        ("shift_consistency", "shift consistency %", 1),
        *(
            (f"shift_accuracy_{k}px", f"shift acc {k}px %", 100)
            for k in range(1, 5)
        ),
        ("overfit_gap", "overfit gap %", 100),
    ]
    sections = []
    for setting, part in summary.groupby(list(SETTING_KEYS), sort=False):
        table = pd.DataFrame(
            {
                "rank": part["rank"],
                "downsampling": part["downsampling"],
                "seeds": part["n_seeds"],
            }
        )
        for metric, title, scale in percent:
            if f"{metric}_mean" in part:
                table[title] = _mean_std(part, metric, scale=scale)
        if "train_images_per_sec_mean" in part:
            table["train img/s"] = _mean_std(
                part, "train_images_per_sec", digits=0
            )
        if "epoch_time_vs_max" in part:
            noisy = part.get(
                "epoch_time_vs_max_noisy", pd.Series(False, part.index)
            )
            table["epoch time vs max"] = [
                "" if math.isnan(v) else f"{v:.2f}{NOISY_MARK if flag else ''}"
                for v, flag in zip(
                    part["epoch_time_vs_max"], noisy, strict=True
                )
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
        title = ", ".join(
            f"{k}={v}" for k, v in zip(SETTING_KEYS, setting, strict=True)
        )
        section = f"### {title}\n\n{markdown_table(table)}"
        if part.get("epoch_time_vs_max_noisy", pd.Series(False)).any():
            section += f"\n\n{NOISY_NOTE}"
        sections.append(section)
    return "\n\n".join(sections)


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


def _colours(names):
    import matplotlib

    # tab20 pairs a dark and a light shade of each hue: the ten dark ones
    # first, so that up to ten choices differ in hue.
    colours = matplotlib.colormaps["tab20"].colors
    cycle = colours[0::2] + colours[1::2]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _scatter(summary, x, y, path, title):
    """Mean of `y` against mean of `x` per choice, with std error bars when
    there are seeds to take it over. `x` and `y` are (metric, label,
    scale). Each choice has its own colour and a legend entry rather than a
    text label at its point, which neighbouring points would overlap."""
    import matplotlib.pyplot as plt

    settings = _settings(summary)
    several = len(settings) > 1
    colours = _colours(summary["downsampling"].unique())
    (x, xlabel, x_scale), (y, ylabel, y_scale) = x, y
    fig, ax = plt.subplots(figsize=(8, 5))
    for number, (setting, part) in enumerate(settings):
        for _, row in part.iterrows():
            ax.errorbar(
                row[f"{x}_mean"] * x_scale,
                row[f"{y}_mean"] * y_scale,
                xerr=_std(row, x) * x_scale,
                yerr=_std(row, y) * y_scale,
                fmt=_MARKERS[number % len(_MARKERS)],
                color=colours[row["downsampling"]],
                capsize=3,
                label=_label(setting, row["downsampling"], several),
            )
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    bars = (
        "points: mean over seeds; bars: std over seeds"
        if (summary["n_seeds"] > 1).any()
        else "one seed per choice: no error bars"
    )
    ax.set_title(f"{title}\n{bars}", fontsize=9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.grid(alpha=0.3)
    _save(fig, path)


def _std(row, metric):
    std = row.get(f"{metric}_std", math.nan)
    return 0.0 if pd.isna(std) else std


def _learning_curves(runs, epochs, path, title):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ok = runs[runs["status"] == "ok"]
    curves = epochs.merge(ok[["run_id", *GROUP_KEYS]], on="run_id")
    settings = list(curves.groupby(list(SETTING_KEYS), sort=False))
    colours = _colours(curves["downsampling"].unique())
    fig, ax = plt.subplots(figsize=(8, 5))
    for number, (setting, part) in enumerate(settings):
        mean = part.groupby(["downsampling", "epoch"])["test_accuracy"].mean()
        for name, curve in mean.groupby(level=0, sort=False):
            ax.plot(
                curve.index.get_level_values("epoch"),
                100 * curve.to_numpy(),
                marker=_MARKERS[number % len(_MARKERS)],
                color=colours[name],
                label=_label(setting, name, len(settings) > 1),
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    several_seeds = (ok.groupby("downsampling")["seed"].nunique() > 1).any()
    ax.set_ylabel(
        "test accuracy (%, mean over seeds)"
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
    for name, x, y in SCATTERS:
        if has(x[0]) and has(y[0]):
            _scatter(summary, x, y, directory / name, title)
            written.append(directory / name)
    if not epochs.empty and "test_accuracy" in epochs:
        path = directory / "learning_curves.png"
        _learning_curves(runs, epochs, path, title)
        written.append(path)
    return written


def write_summary(runs, epochs, directory):
    """Writes summary.csv and the plots into `directory`; returns summary."""
    summary = summarize(runs, epochs)
    write_table(summary, pathlib.Path(directory) / SUMMARY_FILE)
    write_plots(runs, epochs, summary, directory)
    return summary


def merge(sources, out_dir):
    """Merges result directories or runs tables into `out_dir`.

    Writes runs.csv, epochs.csv, summary.csv and the plots there, and copies
    config.yaml when all sources that have one agree on it.
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
