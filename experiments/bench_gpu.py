"""GPU benchmark in one command: layers, training throughput, ablation cost.

    KERAS_BACKEND=jax python experiments/bench_gpu.py

(a) Layers: every kpool layer's forward plus backward time as a ratio to
    `keras.layers.MaxPooling2D` (as `experiments/bench_layers.py`, in Keras's
    default compile mode), at the issue's batch and at an 8x larger one, and
    each layer's achieved bandwidth (`bench.pooling_bytes` over the
    time) against the device's measured copy bandwidth: pooling is
    memory-bound.
(b) Training throughput of every model family and downsampling choice:
    `kpool.harness.training.train_run`, the harness's own device-resident
    path and timer, for `--epochs` epochs on synthetic data of CIFAR-10's size
    (50,000 train / 10,000 test 32x32x3 images, 10 classes), with the
    precision, batch size, jit_compile and evaluation of `--config` (and any
    `--set` overrides): images/s and ms/step after warm-up, without
    compilation or evaluation.
(c) FLOPs: `kpool.harness.metrics.flops_per_image` counts multiply-adds; a
    forward pass is 2 FLOPs per multiply-add and a training step about 3 forward
    passes, so training TFLOP/s = 6 * multiply-adds * images/s / 1e12, also
    as a fraction of the device's dense peak (`PEAK_TFLOPS`).
(d) Epoch time of each choice relative to max pooling in the same family.
(e) The projected GPU time of `--config` (every choice, every seed, its
    epochs) from the measured runs: the measured run, plus the remaining
    epochs at the measured steady epoch time and per-epoch evaluation time.

Writes layers.csv, training.csv, projection.csv and throughput.png under
`--output-dir` (default results/gpu/); every row names the data set
("synthetic"), device, backend, precision and date. TensorFlow is never
imported on this path (under KERAS_BACKEND=jax).
"""

import argparse
import math
import os

import bench
import keras

from kpool.harness import environment

# Dense (no sparsity) tensor-core peak in TFLOP/s. H100 SXM5: 989.4 BF16 /
# FP16 and 494.7 TF32 (NVIDIA H100 Tensor Core GPU Architecture whitepaper;
# the datasheet's 1,979 and 989 assume 2:4 sparsity); H100 PCIe: 756 / 378
# (datasheet's 1,513 / 756 with sparsity). H200 SXM has H100 SXM's compute
# (datasheet: 1,979 BF16 with sparsity); H200 NVL: 835 / 418 (datasheet's
# 1,671 / 835 with sparsity). Matched in this order, first hit wins.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}),
    ("H200 NVL", {"bfloat16": 835.0, "float16": 835.0, "float32": 418.0}),
    ("H100", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
    ("H200", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
)
# What a policy multiplies in; float32 matmuls run as TF32 on Hopper under
# XLA's default precision.
PRECISION_MATH = {
    "mixed_bfloat16": "bfloat16",
    "mixed_float16": "float16",
    "float32": "float32",
}
CIFAR10_SIZE = dict(n_train=50000, n_test=10000, image_size=32)
QUICK = dict(
    layer_batch_shapes=[(4, 8, 8, 4)],
    pools=[(2, 2)],
    repeats=2,
    copy_bytes=1 << 22,
    data=dict(n_train=256, n_test=64, image_size=32),
    overrides=["train.batch_size=32", "eval.max_images=32"],
    epochs=2,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="results/gpu")
    parser.add_argument(
        "--config",
        default="configs/cifar10_pooling.yaml",
        help="training settings and the experiment to project",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override of --config, e.g. train.batch_size=512",
    )
    parser.add_argument(
        "--families",
        nargs="+",
        help="model families (default: every family)",
    )
    parser.add_argument(
        "--choices",
        nargs="+",
        help="downsampling choices (default: every choice)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs per timed run (the first holds the compilation)",
    )
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument(
        "--steps-per-sample",
        type=int,
        default=10,
        help="layer steps per timed sample, to hide launch latency",
    )
    parser.add_argument(
        "--copy-bytes",
        type=int,
        default=1 << 30,
        help="size of the array of the copy-bandwidth reference",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's dense peak, when PEAK_TFLOPS lacks it",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=["layers", "training"],
        help="parts not to run",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, to check on a CPU that everything runs",
    )
    return parser.parse_args(argv)


def peak_tflops(device, precision):
    math_dtype = PRECISION_MATH[precision]
    for name, peaks in PEAK_TFLOPS:
        if name in device:
            return peaks[math_dtype]
    return math.nan


def labels(precision):
    """The columns that say what produced every row."""
    return {
        "dataset": "synthetic",
        "precision": precision,
        **environment.environment(),
        # Empty where the tree is not a git clone (a device's copy).
        **bench.git_state(),
    }


def benchmark_layer_bandwidth(args):
    settings = QUICK if args.quick else {}
    batch_shapes = settings.get(
        "layer_batch_shapes", [(128, 32, 32, 64), (1024, 32, 32, 64)]
    )
    copy_bytes = settings.get("copy_bytes", args.copy_bytes)
    copy_bytes_per_sec = bench.copy_bandwidth(copy_bytes)
    print(
        f"Copy bandwidth (a + 1 on {copy_bytes / 2**20:.0f} MiB, read + "
        f"written): {copy_bytes_per_sec / 1e9:.1f} GB/s"
    )
    rows = []
    for batch_shape in batch_shapes:
        rows += bench.benchmark_layers(
            pools=settings.get("pools", [(2, 2), (3, 2)]),
            compile_modes=[bench.default_compile_mode()],
            batch_shape=batch_shape,
            repeats=settings.get("repeats", args.repeats),
            number=1 if args.quick else args.steps_per_sample,
        )
    for row in rows:
        bytes_per_sec = row["min_bytes"] / (row["median_ms"] / 1000.0)
        baseline_bytes_per_sec = row["min_bytes"] / (
            row["baseline_median_ms"] / 1000.0
        )
        row.update(
            achieved_gb_per_sec=round(bytes_per_sec / 1e9, 4),
            baseline_achieved_gb_per_sec=round(baseline_bytes_per_sec / 1e9, 4),
            copy_gb_per_sec=round(copy_bytes_per_sec / 1e9, 4),
            fraction_of_copy=round(bytes_per_sec / copy_bytes_per_sec, 3),
            **labels("float32"),
        )
    return rows


def training_config(args, family, choice, epochs):
    from kpool.harness.config import load_config

    overrides = [
        *args.set,
        f"model.family={family}",
        f"downsampling=[{choice}]",
        f"train.epochs={epochs}",
    ]
    if args.quick:
        overrides += QUICK["overrides"]
    return load_config(args.config, overrides)


def benchmark_training(args, dataset, families, choices):
    from kpool.harness.training import train_run

    epochs = QUICK["epochs"] if args.quick else args.epochs
    rows = []
    for family in families:
        for choice in choices:
            config = training_config(args, family, choice, epochs)
            print(f"== {family} / {choice}: {epochs} epochs", flush=True)
            result = train_run(config, choice, 0, dataset, verbose=0)
            metrics = result.metrics
            n_test = len(dataset.x_test)
            macs = metrics["flops_per_image"]
            train_tflops = 6 * macs * metrics["train_images_per_sec"] / 1e12
            peak = args.peak_tflops or peak_tflops(
                metrics["device"], config.precision
            )
            rows.append(
                {
                    "model": family,
                    "downsampling": choice,
                    "params": metrics["params"],
                    "batch_size": metrics["batch_size"],
                    "steps_per_epoch": metrics["steps_per_epoch"],
                    "epochs": epochs,
                    "train_images_per_sec": round(
                        metrics["train_images_per_sec"], 1
                    ),
                    "train_ms_per_step": round(metrics["train_ms_per_step"], 3),
                    "epoch_seconds": round(metrics["epoch_seconds"], 3),
                    "eval_images_per_sec": round(
                        metrics["eval_images_per_sec"], 1
                    ),
                    "validation_seconds_per_epoch": round(
                        n_test / metrics["eval_images_per_sec"], 3
                    ),
                    "train_seconds": round(metrics["train_seconds"], 2),
                    "eval_seconds": round(metrics["eval_seconds"], 2),
                    "compile_count": metrics.get("compile_count"),
                    "forward_macs_per_image": macs,
                    "train_tflops": round(train_tflops, 3),
                    "peak_tflops": peak,
                    "fraction_of_peak": round(train_tflops / peak, 4),
                    "jit_compile": metrics["jit_compile"],
                    "jit_compile_resolved": metrics["jit_compile_resolved"],
                    "n_train": len(dataset.x_train),
                    "n_test": n_test,
                    **labels(config.precision),
                }
            )
    for row in rows:
        max_row = next(
            (
                r
                for r in rows
                if r["model"] == row["model"] and r["downsampling"] == "max"
            ),
            None,
        )
        row["epoch_time_vs_max"] = (
            round(row["epoch_seconds"] / max_row["epoch_seconds"], 3)
            if max_row
            else math.nan
        )
    return rows


def project(args, training_rows):
    """Projected GPU time of `--config`'s experiment from measured runs."""
    from kpool.harness.config import load_config

    config = load_config(args.config, args.set)
    family = config.model.family
    rows = []
    missing = []
    for choice in config.downsampling:
        measured = next(
            (
                r
                for r in training_rows
                if r["model"] == family and r["downsampling"] == choice
            ),
            None,
        )
        if measured is None:
            missing.append(choice)
            continue
        # The measured run already holds the compilation, its epochs'
        # validation and the final evaluation; the remaining epochs each
        # cost a steady training epoch plus one validation pass.
        extra_epochs = config.train.epochs - measured["epochs"]
        run_seconds = (
            measured["train_seconds"]
            + measured["eval_seconds"]
            + extra_epochs
            * (
                measured["epoch_seconds"]
                + measured["validation_seconds_per_epoch"]
            )
        )
        rows.append(
            {
                "experiment": config.name,
                "model": family,
                "downsampling": choice,
                "epochs": config.train.epochs,
                "seeds": len(config.seeds),
                "batch_size": measured["batch_size"],
                "measured_epoch_seconds": measured["epoch_seconds"],
                "projected_run_seconds": round(run_seconds, 1),
                "projected_seconds": round(run_seconds * len(config.seeds), 1),
                "dataset": measured["dataset"],
                "device": measured["device"],
                "backend": measured["backend"],
                "precision": measured["precision"],
                "date": measured["date"],
            }
        )
    if missing:
        print(f"Not projected (no measured {family} run): {', '.join(missing)}")
    if rows:
        total = sum(r["projected_seconds"] for r in rows)
        print(
            f"Projected GPU time of {args.config}: {total / 3600:.2f} h "
            f"({len(rows)} choices x {len(config.seeds)} seeds x "
            f"{config.train.epochs} epochs) on {rows[0]['device']}"
        )
    return rows


def plot_throughput(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["model"] for r in rows))
    choices = list(dict.fromkeys(r["downsampling"] for r in rows))
    width = 0.8 / len(families)
    fig, ax = plt.subplots(figsize=(1.2 * len(choices) + 3, 4.5))
    for i, family in enumerate(families):
        values = {
            r["downsampling"]: r["train_images_per_sec"]
            for r in rows
            if r["model"] == family
        }
        ax.bar(
            [
                c + (i - (len(families) - 1) / 2) * width
                for c in range(len(choices))
            ],
            [values.get(c, 0.0) for c in choices],
            width,
            label=family,
        )
    ax.set_xticks(range(len(choices)), choices, rotation=30)
    ax.set_ylabel("training images / s (after warm-up)")
    first = rows[0]
    ax.set_title(
        f"{first['device']}, {first['backend']}, {first['precision']}, "
        f"batch {first['batch_size']}, {first['dataset']} data, "
        f"{first['date'][:10]}",
        fontsize=9,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    from kpool.harness.config import DOWNSAMPLING_CHOICES, MODEL_FAMILIES
    from kpool.harness.data import synthetic_dataset

    families = args.families or list(MODEL_FAMILIES)
    choices = args.choices or list(DOWNSAMPLING_CHOICES)
    device = environment.device_name()
    print(f"Backend {keras.backend.backend()}, device {device}")
    if "layers" not in args.skip:
        rows = benchmark_layer_bandwidth(args)
        bench.write_csv(rows, os.path.join(args.output_dir, "layers.csv"))
        print(
            bench.format_table(
                rows,
                [
                    "layer",
                    "mode",
                    "phase",
                    "passes",
                    "pool",
                    "batch_shape",
                    "median_ms",
                    "ratio",
                    "achieved_gb_per_sec",
                    "fraction_of_copy",
                ],
            )
        )
    if "training" in args.skip:
        return
    dataset = synthetic_dataset(
        **(QUICK["data"] if args.quick else CIFAR10_SIZE)
    )
    rows = benchmark_training(args, dataset, families, choices)
    bench.write_csv(rows, os.path.join(args.output_dir, "training.csv"))
    print(
        bench.format_table(
            rows,
            [
                "model",
                "downsampling",
                "train_images_per_sec",
                "train_ms_per_step",
                "epoch_time_vs_max",
                "train_tflops",
                "fraction_of_peak",
            ],
        )
    )
    plot_throughput(rows, os.path.join(args.output_dir, "throughput.png"))
    projection = project(args, rows)
    if projection:
        bench.write_csv(
            projection, os.path.join(args.output_dir, "projection.csv")
        )
    print(f"Wrote {args.output_dir}/")


if __name__ == "__main__":
    main()
