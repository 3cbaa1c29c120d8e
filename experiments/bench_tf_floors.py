"""Times the TensorFlow kernels each layer cannot do without, on TF-CPU.

On TensorFlow outside XLA (Keras's default on a CPU) nothing fuses: a layer
costs at least the built-in kernels it must run. This script times those
parts alone, forward plus backward unless marked otherwise, interleaved with
`MaxPooling2D`'s forward plus backward in the same process, on the layer
benchmark's `(128, 32, 32, 64)` float32 batch at 2x2/s2 and 3x3/s2:

- `negation`: one elementwise pass over the input, forward only, added to
  max pooling's own time. Min pooling is `-max_pool(-x)` with max pooling's
  gradient, and TensorFlow has no min-pooling kernel.
- `max_pool + avg_pool`: both poolings and the sum of their gradients.
  Every mixed-pooling mode outputs a mix of the two.
- `avg_pool(x) + avg_pool(x * x)`: the two window means stochastic
  inference divides (`mean(a**2) / mean(a)`), with their gradients, before
  the ReLU, the square's gradient and the division.
- `window tensor`: the `prod(pool_size)` output-sized slices that training
  samples from, forward only (`StochasticPooling2D._windows`).

A ratio above a layer's goal means no composition of these kernels can
meet it; only a fused kernel could. Writes `floors_tensorflow.csv`.

    KERAS_BACKEND=tensorflow python experiments/bench_tf_floors.py
"""

import argparse
import os

import keras

from kpool import bench
from kpool.layers import StochasticPooling2D

FLOORS = (
    # (name, the goal it bounds, forward only)
    ("negation", ("MinPooling2D", ""), True),
    ("max_pool + avg_pool", ("MixedPooling2D", "learned"), False),
    (
        "avg_pool(x) + avg_pool(x * x)",
        ("StochasticPooling2D", "inference"),
        False,
    ),
    ("window tensor", ("StochasticPooling2D", "training"), True),
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="results/layers")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--batch-shape", type=int, nargs=4, default=(128, 32, 32, 64)
    )
    return parser.parse_args(argv)


def floor_functions(pool_size, strides):
    import tensorflow as tf

    window = dict(ksize=pool_size, strides=strides, padding="VALID")
    windows = StochasticPooling2D(pool_size, strides)._windows
    return {
        "max_pool": lambda x: tf.nn.max_pool2d(x, **window),
        "negation": tf.negative,
        "max_pool + avg_pool": lambda x: (
            tf.nn.max_pool2d(x, **window) + tf.nn.avg_pool2d(x, **window)
        ),
        "avg_pool(x) + avg_pool(x * x)": lambda x: (
            tf.nn.avg_pool2d(x, **window) + tf.nn.avg_pool2d(x * x, **window)
        ),
        "window tensor": windows,
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
        functions = floor_functions(pool_size, strides)
        steps = {"max_pool": step(functions["max_pool"], inputs, False)}
        for name, _, forward_only in FLOORS:
            steps[name] = step(functions[name], inputs, forward_only)
        times = bench.time_interleaved(
            steps, repeats=args.repeats, warmup=args.warmup
        )
        max_ms = bench.median_ms(times["max_pool"])
        for name, goal_key, forward_only in FLOORS:
            floor_ms = bench.median_ms(times[name])
            if name == "negation":
                floor_ms += max_ms
            rows.append(
                {
                    "floor": "max_pool + negation"
                    if name == "negation"
                    else name,
                    "bounds": " ".join(filter(None, goal_key)),
                    "pass": (
                        "max_pool forward+backward, negation forward"
                        if name == "negation"
                        else "forward"
                        if forward_only
                        else "forward+backward"
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
    columns = ("floor", "bounds", "pass", "pool", "floor_ratio", "goal_ratio")
    print(bench.format_table(rows, columns))
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
