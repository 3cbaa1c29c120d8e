"""Harness overhead: `train_run`'s throughput against a bare `model.fit`.

Both train the same model (`build_model`, same seed, same optimizer, loss
and schedule) on the same synthetic images in the same process:

- harness: `kpool.harness.training.train_run` with evaluation each epoch; its
  own `train_images_per_sec` (first steps and evaluation excluded; the median
  of its epochs' rates, which one slow epoch moves less than the bare
  side's total; `results/bench_harness_*.csv` were measured when it was the
  total over epochs too);
- bare: `model.fit(x, y, batch_size, shuffle=True)` on float32 NumPy
  arrays, one untimed warm-up epoch, then `epochs - 1` epochs timed by the
  wall clock around `fit` (fit's own setup and the last partial batch
  included, as a user would see them).

The two alternate, `repeats` times each, so a burst of load from another
process hits both alike; the medians are compared. Prints the ratio
harness / bare (goal: >= 0.95) and writes
results/bench_harness_<backend>.csv.

    KERAS_BACKEND=jax python experiments/bench_harness.py
"""

import argparse
import os
import statistics
import time

import keras
from bench import format_table, write_csv

from kpool.harness.config import config_from_dict
from kpool.harness.data import synthetic_dataset
from kpool.harness.environment import device_name, machine_name
from kpool.harness.models import build_model
from kpool.harness.training import (
    LearningRateSchedule,
    make_optimizer,
    train_run,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="small_cnn")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--downsampling", default="max")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--output-dir", default="results")
    args = parser.parse_args()

    config = config_from_dict(
        {
            "model": {"family": args.family, "width": args.width},
            "downsampling": [args.downsampling],
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                # The schedule's rate is read every step; a constant one
                # keeps the comparison about the data path and the timer.
                "schedule": {"name": "constant"},
            },
            "precision": args.precision,
            "eval": {"shift_metrics": False},
        }
    )
    dataset = synthetic_dataset(n_train=args.n_train, n_test=500, seed=0)
    rates = {"harness": [], "bare_fit": []}
    for _ in range(args.repeats):
        result = train_run(config, args.downsampling, 0, dataset, verbose=0)
        rates["harness"].append(result.metrics["train_images_per_sec"])
        rates["bare_fit"].append(bare_fit_images_per_sec(config, dataset))

    medians = {name: statistics.median(r) for name, r in rates.items()}
    ratio = medians["harness"] / medians["bare_fit"]
    common = {
        "machine": machine_name(),
        "backend": keras.backend.backend(),
        "device": device_name(),
        "keras_version": keras.__version__,
        "precision": args.precision,
        "jit_compile": config.jit_compile,
        "dataset": f"synthetic({args.n_train} train images)",
        "model": f"{args.family}(width={args.width})",
        "downsampling": args.downsampling,
        "batch_size": args.batch_size,
        "optimizer": config.train.optimizer.name,
        "epochs": args.epochs,
        "repeats": args.repeats,
    }
    rows = [
        {
            "method": name,
            "median_train_images_per_sec": round(medians[name], 1),
            "all_train_images_per_sec": " ".join(f"{r:.1f}" for r in values),
            "harness_over_bare_fit": round(ratio, 3),
            **common,
        }
        for name, values in rates.items()
    ]
    path = os.path.join(
        args.output_dir, f"bench_harness_{keras.backend.backend()}.csv"
    )
    write_csv(rows, path)
    print(
        format_table(
            rows,
            [
                "method",
                "median_train_images_per_sec",
                "all_train_images_per_sec",
            ],
        )
    )
    print(f"harness / bare fit = {ratio:.3f} (goal >= 0.95); wrote {path}")


def bare_fit_images_per_sec(config, dataset):
    """Images/s of a plain `model.fit` epoch after a warm-up epoch."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(config.precision)
    train = config.train
    model = build_model(
        config.model,
        config.downsampling[0],
        num_classes=dataset.num_classes,
        input_shape=dataset.x_train.shape[1:],
        seed=0,
    )
    model.compile(
        optimizer=make_optimizer(
            train.optimizer,
            LearningRateSchedule("constant", train.optimizer.learning_rate, 1),
            model,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=config.jit_compile,
    )
    x = dataset.x_train.astype("float32")
    y = dataset.y_train

    def fit(epochs):
        history = model.fit(
            x,
            y,
            batch_size=train.batch_size,
            epochs=epochs,
            shuffle=True,
            verbose=0,
        )
        # Reading the loss waits for the last step.
        return float(history.history["loss"][-1])

    fit(1)
    start = time.perf_counter()
    fit(train.epochs - 1)
    seconds = time.perf_counter() - start
    keras.config.set_dtype_policy("float32")
    return (train.epochs - 1) * len(x) / seconds


if __name__ == "__main__":
    main()
