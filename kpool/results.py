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


def summarize(runs):
    """One row per downsampling choice (within each setting), ranked.

    Means and (sample, ddof=1) standard deviations over seeds of the
    `SEED_METRICS` present, the architecture's `MODEL_PROPERTIES`, and
    `epoch_time_vs_max`: the mean epoch time relative to max pooling in the
    same setting (NaN without a max pooling row). Only "ok" runs count.
    Ranked by mean test accuracy within each setting.
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
    summary = summary.sort_values(
        [*SETTING_KEYS, "test_accuracy_mean"],
        ascending=[True] * len(SETTING_KEYS) + [False],
        kind="stable",
    )
    rank = summary.groupby(list(SETTING_KEYS)).cumcount() + 1
    summary.insert(len(GROUP_KEYS), "rank", rank)
    return summary.reset_index(drop=True)


def _relative_to_max(summary, column):
    is_max = summary["downsampling"] == "max"
    reference = summary[is_max].set_index(list(SETTING_KEYS))[column]
    keys = pd.MultiIndex.from_frame(summary[list(SETTING_KEYS)])
    return summary[column].to_numpy() / reference.reindex(keys).to_numpy()


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


def report(summary):
    """The summary as markdown: one table per setting (model, data, backend).

    Accuracies and shift metrics are in percent, mean ± std over seeds.
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
            table["epoch time vs max"] = [
                "" if math.isnan(v) else f"{v:.2f}"
                for v in part["epoch_time_vs_max"]
            ]
        for name in MODEL_PROPERTIES:
            if name in part:
                table[name] = [
                    "" if math.isnan(v) else f"{int(v):,}" for v in part[name]
                ]
        title = ", ".join(
            f"{k}={v}" for k, v in zip(SETTING_KEYS, setting, strict=True)
        )
        sections.append(f"### {title}\n\n{markdown_table(table)}")
    return "\n\n".join(sections)


def _settings(summary):
    return list(summary.groupby(list(SETTING_KEYS), sort=False))


def _label(setting, name, several):
    return f"{name} ({', '.join(map(str, setting))})" if several else name


def _scatter(summary, x, y, path, xlabel, ylabel):
    """Mean of `y` against mean of `x` per choice, with std error bars."""
    import matplotlib.pyplot as plt

    settings = _settings(summary)
    fig, ax = plt.subplots(figsize=(7, 5))
    for setting, part in settings:
        ax.errorbar(
            part[f"{x}_mean"],
            part[f"{y}_mean"],
            xerr=part[f"{x}_std"].fillna(0),
            yerr=part[f"{y}_std"].fillna(0),
            fmt="o",
            capsize=3,
            label=", ".join(map(str, setting)) if len(settings) > 1 else None,
        )
        for _, row in part.iterrows():
            ax.annotate(
                row["downsampling"],
                (row[f"{x}_mean"], row[f"{y}_mean"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
    # Room for the labels of the outermost points.
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("mean over seeds; bars: std over seeds")
    if len(settings) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _learning_curves(runs, epochs, path):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ok = runs[runs["status"] == "ok"]
    curves = epochs.merge(ok[["run_id", *GROUP_KEYS]], on="run_id")
    settings = list(curves.groupby(list(SETTING_KEYS), sort=False))
    fig, ax = plt.subplots(figsize=(7, 5))
    for setting, part in settings:
        mean = part.groupby(["downsampling", "epoch"])["test_accuracy"].mean()
        for name, curve in mean.groupby(level=0, sort=False):
            ax.plot(
                curve.index.get_level_values("epoch"),
                curve.to_numpy(),
                marker=".",
                label=_label(setting, name, len(settings) > 1),
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _save(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


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

    scatters = [
        (
            "accuracy_vs_throughput.png",
            "train_images_per_sec",
            "test_accuracy",
            "training throughput (images/s)",
            "test accuracy",
        ),
        (
            "shift_consistency_vs_accuracy.png",
            "test_accuracy",
            "shift_consistency",
            "test accuracy",
            "shift consistency (%)",
        ),
    ]
    for name, x, y, xlabel, ylabel in scatters:
        if has(x) and has(y):
            _scatter(summary, x, y, directory / name, xlabel, ylabel)
            written.append(directory / name)
    if not epochs.empty and "test_accuracy" in epochs:
        _learning_curves(runs, epochs, directory / "learning_curves.png")
        written.append(directory / "learning_curves.png")
    return written


def write_summary(runs, epochs, directory):
    """Writes summary.csv and the plots into `directory`; returns summary."""
    summary = summarize(runs)
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
