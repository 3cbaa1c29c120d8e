"""Times the TensorFlow kernels each layer cannot do without, on TF-CPU.

On TensorFlow outside XLA (Keras's default on a CPU) nothing fuses: a layer
costs at least the built-in kernels it must run. This script times those
parts, interleaved with `MaxPooling2D`'s forward plus backward (`max_pool`)
in one process, on the layer benchmark's `(128, 32, 32, 64)` float32 batch
at 2x2/s2 and 3x3/s2, and adds up each layer's floor from them:

- `pass`: one elementwise pass over the input (a negation), forward only.
- `avg_pool`: average pooling, forward only.
- `means`: stochastic inference's forward part before the division, ReLU,
  square and the two window means (`mean(a**2)`, `mean(a)`).
- `window tensor`: the `prod(pool_size)` output-sized slices that training
  samples from, forward only (`StochasticPooling2D._windows`).

Floors (each is what the layer must run, whatever its gradients):

- MinPooling2D: `max_pool` + `pass`. TensorFlow has no min-pooling kernel:
  `-max_pool(-x)` negates the input, and needs max pooling's gradient.
- MixedPooling2D, every mode: `max_pool` + `avg_pool` + `pass`. Both
  poolings forward, max pooling's gradient, and at least one input-sized
  pass to add average pooling's gradient to it.
- StochasticPooling2D inference: `means` + `pass`: the forward part, and at
  least one input-sized pass to write the input gradient.
- StochasticPooling2D training: `window tensor`, forward only.

A floor above a layer's goal means no composition of TensorFlow's kernels
can meet the goal; only a fused kernel could. A floor below it does not mean
one can. Writes `floors_tensorflow.csv` (the parts and the floors).

    KERAS_BACKEND=tensorflow python experiments/bench_tf_floors.py
"""

import argparse
import os

import keras

from kpool import bench
from kpool.layers import StochasticPooling2D

# name: (the goal it bounds, the timed parts it adds up)
FLOORS = {
    "max_pool + pass": (("MinPooling2D", ""), ("max_pool", "pass")),
    "max_pool + avg_pool + pass": (
        ("MixedPooling2D", "learned"),
        ("max_pool", "avg_pool", "pass"),
    ),
    "means + pass": (
        ("StochasticPooling2D", "inference"),
        ("means", "pass"),
    ),
    "window tensor": (
        ("StochasticPooling2D", "training"),
        ("window tensor",),
    ),
}
# Timed forward plus backward; the other parts forward only.
WITH_GRADIENT = {"max_pool"}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="results/layers")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--batch-shape", type=int, nargs=4, default=(128, 32, 32, 64)
    )
    return parser.parse_args(argv)


def part_functions(pool_size, strides):
    import tensorflow as tf

    window = dict(ksize=pool_size, strides=strides, padding="VALID")

    def means(x):
        a = tf.nn.relu(x)
        return tf.nn.avg_pool2d(a * a, **window), tf.nn.avg_pool2d(a, **window)

    return {
        "max_pool": lambda x: tf.nn.max_pool2d(x, **window),
        "pass": tf.negative,
        "avg_pool": lambda x: tf.nn.avg_pool2d(x, **window),
        "means": means,
        "window tensor": StochasticPooling2D(pool_size, strides)._windows,
    }


def step(function, inputs, forward_only):
    import tensorflow as tf

    if forward_only:
        compiled = tf.function(function, jit_compile=False)
        return lambda: bench.synchronize(compiled(inputs))
    output_grad = tf.random.normal(function(inputs).shape, seed=1)

    @tf.function(jit_compile=False)
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x)
        return y, tape.gradient(y, x, output_gradients=output_grad)

    return lambda: bench.synchronize(forward_backward(inputs))


def main(argv=None):
    args = parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("Run with KERAS_BACKEND=tensorflow.")
    import tensorflow as tf

    inputs = tf.random.normal(args.batch_shape, seed=0)
    env = bench.environment()
    rows = []
    for pool_size, strides in ((2, 2), (3, 2)):
        functions = part_functions(pool_size, strides)
        steps = {
            name: step(function, inputs, name not in WITH_GRADIENT)
            for name, function in functions.items()
        }
        times = bench.time_interleaved(
            steps, repeats=args.repeats, warmup=args.warmup
        )
        part_ms = {name: bench.median_ms(t) for name, t in times.items()}
        max_ms = part_ms["max_pool"]
        for name, (goal_key, parts) in FLOORS.items():
            floor_ms = sum(part_ms[part] for part in parts)
            rows.append(
                {
                    "floor": name,
                    "bounds": " ".join(filter(None, goal_key)),
                    "parts_ms": "; ".join(
                        f"{part}={part_ms[part]:.3f}" for part in parts
                    ),
                    "pool": f"{pool_size}x{pool_size}/s{strides}/valid",
                    "compile_mode": "graph",
                    "batch_shape": "x".join(map(str, args.batch_shape)),
                    "median_ms": round(floor_ms, 4),
                    "maxpool_median_ms": round(max_ms, 4),
                    "floor_ratio": round(floor_ms / max_ms, 3),
                    "goal_ratio": bench.RATIO_GOALS[goal_key],
                    "repeats": args.repeats,
                    "dtype": "float32",
                    **env,
                }
            )
    path = os.path.join(args.output_dir, "floors_tensorflow.csv")
    bench.write_csv(rows, path)
    columns = ("floor", "bounds", "pool", "floor_ratio", "goal_ratio")
    print(bench.format_table(rows, columns))
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
