"""Times kpool's pooling layers against Keras's own, layer by layer and in fit.

Layer level (`bench.LAYER_CASES`): each layer runs on a
`(128, 32, 32, 64)` float32 channels_last batch, at 2x2/s2 and 3x3/s2, in
every compile mode of the backend (`bench.COMPILE_MODES`; the mode
Keras's `jit_compile="auto"` picks is marked `default_compile_mode`), twice:
forward plus backward in training mode, and forward alone in inference mode,
each against its baseline run the same way (`MaxPooling2D` with the same
window; `GlobalMaxPooling2D` for GeM; `AdaptiveMaxPooling2D(4)` for SPP;
see `bench.BASELINES`). Blur pooling takes the window as its filter
size and stride, fractional max pooling the output size of MaxPooling2D's
window, unpooling is timed alone, on MaxPoolingWithArgmax2D's values and
indices, back to the input's size. A time is the median after warm-up,
every case interleaved with its baseline in one process; the ratio is what
the goals are about (each case's `goal`). Layers kpool does not have yet
are skipped with a note. `--runs N` repeats the layer benchmark in N fresh
processes: on a shared machine one process's ratios can be off by half, so
the summary reports each case's median ratio over the runs, with its range.

Model level (`--model-fit`): `model.fit` step time of the harness's small
CNN (`kpool.harness.models.build_model`, `augment=False`) for every
windowed pooling choice and "strided"/"allconv"
(`bench.model_fit_choices`), relative to the same net with "max", in
Keras's default compile mode, the fit calls interleaved
(`bench.benchmark_model_fit`); goal `bench.MODEL_FIT_GOAL`.

    KERAS_BACKEND=jax python experiments/bench_layers.py --runs 3 --model-fit

With `--fit-config CONFIG` the model level times that experiment's own runs
instead (`bench.benchmark_experiment_fit`: its model, augmentation,
optimizer, schedule and training batches, the first seed), interleaved,
relative to its baseline: the speed `kpool run` trains at, without the
drift between runs that are not interleaved. `--fit-set KEY=VALUE` overrides
its keys as `kpool run --set` does (`--fit-set 'downsampling=[max,lp]'` picks
choices).

    python experiments/bench_layers.py --skip-layers --model-fit \
        --fit-config configs/quickstart.yaml

Writes `layers_<backend>.csv` (every run's rows, with a `run` column),
`layers_<backend>_summary.csv` (one row per case, `bench.summarize_runs`)
and `model_fit_<backend>.csv` (`model_fit_<name>_<dataset>_<backend>.csv`
with `--fit-config`) under `--output-dir` (default results/layers/).
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile

import bench
import keras

LAYER_COLUMNS = (
    "layer",
    "mode",
    "phase",
    "passes",
    "pool",
    "baseline",
    "compile_mode",
    "median_ms",
    "baseline_median_ms",
    "ratio",
    "goal_ratio",
    "meets_goal",
)
SUMMARY_COLUMNS = (
    "layer",
    "mode",
    "phase",
    "passes",
    "pool",
    "compile_mode",
    "runs",
    "ratio",
    "ratio_min",
    "ratio_max",
    "goal_ratio",
    "meets_goal",
)
FIT_COLUMNS = (
    "downsampling",
    "compile_mode",
    "resolved_jit_compile",
    "median_ms_per_step",
    "max_median_ms_per_step",
    "ratio",
    "ratio_spread",
    "goal_ratio",
    "meets_goal",
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="results/layers")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--runs",
        type=positive_int,
        default=1,
        help="layer benchmark runs, each in a fresh process when more than 1",
    )
    parser.add_argument(
        "--batch-shape", type=int, nargs=4, default=(128, 32, 32, 64)
    )
    parser.add_argument("--padding", default="valid", choices=["valid", "same"])
    parser.add_argument(
        "--compile-modes",
        nargs="+",
        help="default: every mode of the backend "
        f"({ {b: list(m) for b, m in bench.COMPILE_MODES.items()} })",
    )
    parser.add_argument(
        "--model-fit",
        action="store_true",
        help="also time model.fit of the harness's small CNN per "
        "downsampling choice",
    )
    parser.add_argument(
        "--skip-layers",
        action="store_true",
        help="run only --model-fit (keeps an earlier layers CSV)",
    )
    parser.add_argument(
        "--fit-jit-compile",
        nargs="+",
        default=["auto"],
        choices=["auto", "true", "false"],
        help="jit_compile values for --model-fit",
    )
    parser.add_argument("--fit-repeats", type=int, default=5)
    parser.add_argument("--fit-steps", type=int, default=8)
    parser.add_argument("--fit-batch-size", type=int, default=128)
    parser.add_argument(
        "--fit-choices",
        nargs="+",
        help="downsampling choices for --model-fit, besides max "
        "(default: bench.model_fit_choices())",
    )
    parser.add_argument(
        "--fit-part",
        type=fit_part,
        metavar="I/N",
        help="with --model-fit: only the I-th of N runs of contiguous "
        "choices of bench.model_fit_choices(), each with max; its rows "
        "join the CSV's others (a process stopped by a time limit loses "
        "only its part)",
    )
    parser.add_argument(
        "--fit-config",
        metavar="CONFIG",
        help="with --model-fit: time this experiment YAML's own runs "
        "(its model, augmentation, optimizer, batches; the first seed), "
        "interleaved, instead of the small CNN; writes "
        "model_fit_<name>_<dataset>_<backend>.csv",
    )
    parser.add_argument(
        "--fit-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --fit-config: override a config key, as kpool run --set",
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        help="time only these layers (default: every case of "
        "bench.LAYER_CASES)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes and few repeats: checks that it runs, nothing more",
    )
    return parser.parse_args(argv)


def fit_part(text):
    """`(i, n)` of "I/N", 1 <= I <= N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(
            f"must be I/N with 1 <= I <= N, e.g. 2/3. Received: {text!r}"
        )
    return i, n


def part_choices(part):
    """The `part = (i, n)`-th of `n` contiguous runs of
    `bench.model_fit_choices()`, as even in length as they go."""
    i, n = part
    choices = bench.model_fit_choices()
    bounds = [len(choices) * k // n for k in range(n + 1)]
    return list(choices[bounds[i - 1] : bounds[i]])


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def layer_argv(args):
    """The arguments that make a child process run the same layer cases."""
    argv = ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    argv += ["--batch-shape", *map(str, args.batch_shape)]
    argv += ["--padding", args.padding]
    if args.compile_modes:
        argv += ["--compile-modes", *args.compile_modes]
    if args.layers:
        argv += ["--layers", *args.layers]
    if args.quick:
        argv.append("--quick")
    return argv


def select_cases(layers):
    """The cases of `bench.LAYER_CASES` whose layer is in `layers` (all of
    them for `None`)."""
    if not layers:
        return bench.LAYER_CASES
    known = {case.layer for case in bench.LAYER_CASES}
    unknown = sorted(set(layers) - known)
    if unknown:
        raise SystemExit(
            f"--layers must name layers of bench.LAYER_CASES "
            f"({sorted(known)}). Received: {unknown}"
        )
    return tuple(c for c in bench.LAYER_CASES if c.layer in layers)


def run_layers(args, layer_settings):
    """Rows of every run, each tagged with its `run` index."""
    if args.runs == 1:
        rows = bench.benchmark_layers(**layer_settings)
        print(bench.format_table(rows, LAYER_COLUMNS))
        return [{"run": 0, **row} for row in rows]
    backend = keras.backend.backend()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for run in range(args.runs):
            print(f"=== run {run + 1} of {args.runs}, in a fresh process")
            output_dir = os.path.join(directory, str(run))
            subprocess.run(
                [sys.executable, __file__, *layer_argv(args)]
                + ["--output-dir", output_dir],
                check=True,
            )
            path = os.path.join(output_dir, f"layers_{backend}.csv")
            with open(path, newline="") as f:
                rows += [{**row, "run": run} for row in csv.DictReader(f)]
    return rows


def experiment_fit(args):
    """Rows of `bench.benchmark_experiment_fit` for `--fit-config`, and the
    CSV path they go to (the data set in its name: synthetic stand-ins say
    so)."""
    from kpool.harness.config import load_config
    from kpool.harness.experiment import load_data

    if args.fit_choices:
        raise SystemExit(
            "--fit-choices is for the small CNN; with --fit-config pick the "
            "choices with --fit-set 'downsampling=[...]'"
        )
    config = load_config(args.fit_config, args.fit_set)
    dataset = load_data(config)
    print(f"{config.name}: {dataset.name} ({dataset.source_note})")
    rows = bench.benchmark_experiment_fit(
        config, dataset, repeats=args.fit_repeats
    )
    name = f"model_fit_{config.name}_{dataset.name}_{keras.backend.backend()}"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return rows, os.path.join(args.output_dir, f"{safe}.csv")


def main(argv=None):
    args = parse_args(argv)
    backend = keras.backend.backend()
    if args.fit_part:
        if args.fit_choices or args.fit_config:
            raise SystemExit(
                "--fit-part picks the small CNN's choices itself: give it "
                "without --fit-choices and --fit-config"
            )
        args.fit_choices = part_choices(args.fit_part)
    layer_settings = dict(
        batch_shape=tuple(args.batch_shape),
        padding=args.padding,
        repeats=args.repeats,
        warmup=args.warmup,
        compile_modes=args.compile_modes,
        cases=select_cases(args.layers),
    )
    fit_settings = dict(
        choices=args.fit_choices,
        repeats=args.fit_repeats,
        steps=args.fit_steps,
        batch_size=args.fit_batch_size,
    )
    if args.quick:
        layer_settings.update(batch_shape=(4, 8, 8, 4), repeats=2, warmup=1)
        fit_settings.update(
            width=4, input_shape=(16, 16, 3), batch_size=4, steps=3, repeats=1
        )
    for mode, meaning in bench.COMPILE_MODES[backend].items():
        print(f"{backend} compile mode {mode!r}: {meaning}")
    print(f"Keras's default here: {bench.default_compile_mode()!r}")

    # The code timed: every row names its commit.
    code = bench.git_state()
    if not args.skip_layers:
        rows = [{**row, **code} for row in run_layers(args, layer_settings)]
        path = os.path.join(args.output_dir, f"layers_{backend}.csv")
        bench.write_csv(rows, path)
        summary = bench.summarize_runs(rows)
        summary_path = os.path.join(
            args.output_dir, f"layers_{backend}_summary.csv"
        )
        bench.write_csv(summary, summary_path)
        if args.runs > 1:
            print(f"=== median over {args.runs} runs")
            print(bench.format_table(summary, SUMMARY_COLUMNS))
        print(f"Wrote {path} and {summary_path}")
        print(f"({rows[0]['device']}, {rows[0]['machine']})")

    if args.model_fit:
        rows = []
        load_before = os.getloadavg()[0]
        others = bench.OthersCpu()
        if args.fit_config:
            rows, path = experiment_fit(args)
        else:
            for value in args.fit_jit_compile:
                jit_compile = {"true": True, "false": False}.get(value, value)
                rows += bench.benchmark_model_fit(
                    jit_compile=jit_compile, **fit_settings
                )
            path = os.path.join(args.output_dir, f"model_fit_{backend}.csv")
        # The load before, and the CPU other processes used while it ran
        # (the load average after would count this benchmark's threads).
        others_cores = others.cores()
        load = {
            "load_average_before": round(load_before, 2),
            "others_cpu_cores": (
                "" if others_cores is None else round(others_cores, 3)
            ),
        }
        rows = [{**row, **load, **code} for row in rows]
        written = rows
        if (
            args.fit_choices is not None
            and not args.fit_config
            and os.path.exists(path)
        ):
            # A rerun of some choices keeps the others' rows, in the
            # benchmark's order.
            timed = {row["downsampling"] for row in rows}
            kept = bench.kept_rows(path, "downsampling", timed, list(rows[0]))
            order = ["max", *bench.model_fit_choices()]
            written = sorted(
                kept + rows,
                key=lambda row: (
                    order.index(row["downsampling"])
                    if row["downsampling"] in order
                    else len(order)
                ),
            )
        bench.write_csv(written, path)
        columns = FIT_COLUMNS
        if args.fit_config:
            columns = [c.replace("max_", "baseline_") for c in columns]
        print(bench.format_table(rows, columns))
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()
