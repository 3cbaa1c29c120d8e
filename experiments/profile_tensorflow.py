"""Where TensorFlow's graph mode spends an op's forward time, op by op.

TensorFlow's own step statistics (`RunOptions(trace_level=FULL_TRACE)`,
the per-kernel timings its profiler records) of one forward call, for
each case in `CASES`: kpool's op or layer and what it is held to (a
peer, or Keras's `MaxPooling2D`). The function is traced once
(`tf.function`), its variables frozen to constants, and the graph run in
a `tf.compat.v1.Session`, each kernel its own op as in Keras's default
graph mode on a CPU (no XLA). Prints each case's total kernel time and
its largest kernels; `--output` also writes them to a CSV.

    python experiments/profile_tensorflow.py --batch-shape 128 32 32 64

Kernel times are summed over `--repeats` traced runs and divided by them;
on two cores two kernels may overlap, so a total can exceed the wall
time. Only meaningful on a quiet machine (see `bench_peers.py`).
"""

import argparse
import collections
import csv
import os
import platform

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kpool  # noqa: E402

# Graham's ratio, as bench_peers.py uses it.
FRACTIONAL_RATIO = 2**-0.5


def _fractional(per_example):
    """kpool's fractional max pooling at Graham's ratio, one sequence per
    dim for the batch (as `tf.nn.fractional_max_pool` draws them) or one
    per example and channel (as in training), against the TF op."""

    def build(shape, kpool_side):
        import tensorflow as tf

        size = tuple(int(n * FRACTIONAL_RATIO) for n in shape[1:3])
        if kpool_side and per_example:
            # An int seed: a seed generator's state would not freeze.
            return lambda x: kpool.ops.fractional_max_pool(
                x, output_size=size, seed=0
            )
        if kpool_side:
            samples = np.full((1, 1, 2), 0.5, "float32")
            return lambda x: kpool.ops.fractional_max_pool(
                x, output_size=size, samples=samples
            )
        ratio = [1.0, shape[1] / size[0], shape[2] / size[1], 1.0]
        return lambda x: tf.nn.fractional_max_pool(x, ratio, True)[0]

    return build


def _layer(make):
    def build(shape, kpool_side):
        layer = make() if kpool_side else keras.layers.MaxPooling2D(2)
        layer.build(shape)
        return lambda x: layer(x, training=False)

    return build


# name: (what it is held to, builder(shape, kpool_side) -> function).
CASES = {
    "fractional_max_pool": ("tf.nn.fractional_max_pool", _fractional(False)),
    "fractional_max_pool_per_example": (
        "tf.nn.fractional_max_pool",
        _fractional(True),
    ),
    "TreePooling2D": (
        "MaxPooling2D(2)",
        _layer(lambda: kpool.layers.TreePooling2D(2)),
    ),
    "MixedPooling2D_gated": (
        "MaxPooling2D(2)",
        _layer(lambda: kpool.layers.MixedPooling2D(2, mode="gated")),
    ),
}


def kernel_times(function, x, repeats):
    """`{(node, op type): mean microseconds}` of one call of `function` on
    `x`, from TensorFlow's step statistics."""
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants

    concrete = tf.function(function).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)
    )
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(), name="")
    feeds = {frozen.inputs[0].name: x}
    fetch = frozen.outputs[0].name
    options = tf.compat.v1.RunOptions(
        trace_level=tf.compat.v1.RunOptions.FULL_TRACE
    )
    types = {op.name: op.type for op in graph.get_operations()}
    totals = collections.Counter()
    with tf.compat.v1.Session(graph=graph) as session:
        for _ in range(2):
            session.run(fetch, feeds)
        for _ in range(repeats):
            metadata = tf.compat.v1.RunMetadata()
            session.run(fetch, feeds, options=options, run_metadata=metadata)
            for device in metadata.step_stats.dev_stats:
                for node in device.node_stats:
                    # Kernels outside the graph's ops (its source, the
                    # feeds) and constants are not the op's work.
                    op = types.get(node.node_name)
                    if op in (None, "NoOp", "Const", "Placeholder"):
                        continue
                    totals[(node.node_name, op)] += node.op_end_rel_micros
    return {key: total / repeats for key, total in totals.items()}


def profile(names, shape, repeats, top):
    """Rows `(case, side, node, op, ms, share)` of each case's largest
    kernels, kpool's side and the one it is held to."""
    x = np.random.default_rng(0).random(shape, dtype="float32")
    rows = []
    for name in names:
        held_to, build = CASES[name]
        for side, label in ((True, "kpool"), (False, held_to)):
            times = kernel_times(build(shape, side), x, repeats)
            total = sum(times.values())
            print(f"{name}, {label}: {total / 1000:.3f} ms in kernels")
            largest = sorted(times.items(), key=lambda item: -item[1])
            for (node, op), micros in largest[:top]:
                share = micros / total
                print(f"  {micros / 1000:8.3f} ms {share:6.1%}  {op} ({node})")
                rows.append(
                    (name, label, node, op, micros / 1000, share, total / 1000)
                )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", nargs="+", choices=sorted(CASES), default=list(CASES)
    )
    parser.add_argument(
        "--batch-shape", nargs=4, type=int, default=[128, 32, 32, 64]
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--output", help="also write the rows to this CSV")
    args = parser.parse_args(argv)
    if keras.config.backend() != "tensorflow":
        parser.error("profile_tensorflow.py needs KERAS_BACKEND=tensorflow")
    if args.repeats < 1 or args.top < 1:
        parser.error("--repeats and --top must be at least 1")
    load = os.getloadavg()[0]
    print(
        f"{platform.machine()}, load average {load:.2f}, float32, "
        f"channels last, batch {'x'.join(map(str, args.batch_shape))}"
    )
    rows = profile(args.cases, tuple(args.batch_shape), args.repeats, args.top)
    if args.output:
        with open(args.output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                [
                    "case",
                    "side",
                    "node",
                    "op",
                    "ms",
                    "share",
                    "total_ms",
                    "batch_shape",
                    "load_average_before",
                ]
            )
            shape = "x".join(map(str, args.batch_shape))
            for case, side, node, op, ms, share, total in rows:
                writer.writerow(
                    [case, side, node, op, f"{ms:.4f}", f"{share:.4f}"]
                    + [f"{total:.4f}", shape, f"{load:.2f}"]
                )
    return rows


if __name__ == "__main__":
    main()
