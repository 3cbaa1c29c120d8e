"""Times kpool's layers where exported models are served: TFLite, ONNX Runtime.

`bench_layers.py` times a layer's forward where Keras runs it (TensorFlow's
graph, JAX's jit, torch eager). A model that is deployed runs elsewhere:
converted to TFLite (from the SavedModel that `model.export()` writes, the
built-in op set only, as `tests/layers/test_export.py` converts it) or
exported to ONNX (`model.export(path, format="onnx")`: tf2onnx on
TensorFlow, torch's exporter on torch) and run in ONNX Runtime. Each of
those runtimes fuses and schedules the graph itself, so a layer's cost
there is not its cost in Keras.

For every inference case of `bench.LAYER_CASES` (forward only, each layer
and mode as `bench_layers.py` builds it; unpooling after the max pooling
with argmax whose indices it takes) and each window (2x2/s2 and 3x3/s2,
valid) this builds a model `Input -> layer` and one `Input -> baseline`
(`MaxPooling2D` with the same window, or the case's baseline),
converts both, checks that the runtime gives the Keras model's outputs
(`values_match`, rtol and atol 1e-4), and times the runtime's call of
each, interleaved round by round in one process (`bench.time_interleaved`),
medians of `--repeats` rounds after `--warmup` untimed calls. Only the
runtime's call is timed (TFLite's `invoke()` on an input set beforehand;
ONNX Runtime's `run()`, which allocates its outputs). TFLite runs with
`os.cpu_count()` threads; ONNX Runtime with its default.

Issue 20's goal 3 holds the operators without a peer to `MaxPooling2D`'s
forward: tree pooling within 1.5x, gated mixed pooling within 2x
(`SERVING_GOALS`); the other layers are held to their peers
(`bench_peers.py`), which these runtimes do not have, and their rows have
no goal.

Runtimes: TFLite and ONNX on the TensorFlow backend, ONNX on torch. On JAX,
Keras's ONNX export (jax2onnx) gives a `MaxPool` that ONNX Runtime refuses
for Keras's own `MaxPooling2D`, so JAX has none.

As `bench_peers.py`, it refuses to start above a load average of
`bench_peers.QUIET_LOAD` (unless `--allow-loaded`) and records the load and
the CPU other processes used in every row. `--smoke` runs one tiny size and
two layers, to check that everything runs.

    KERAS_BACKEND=tensorflow python experiments/bench_serving.py
    KERAS_BACKEND=torch python experiments/bench_serving.py

Writes `<backend>.csv` under `--output-dir` (default results/serving/).
"""

import argparse
import os
import tempfile
import warnings

import bench
import bench_layers
import bench_peers
import keras
import numpy as np

RUNTIMES = {"tensorflow": ("tflite", "onnx"), "torch": ("onnx",)}
# (batch, height, width, channels): one image, and a batch.
SIZES = ((1, 64, 64, 64), (32, 32, 32, 64))
SMOKE_SIZE = (2, 8, 8, 4)
SMOKE_LAYERS = ("TreePooling2D", "MixedPooling2D")
POOLS = ((2, 2), (3, 2))
# Issue 20's goal 3 for the operators held to MaxPooling2D's forward.
SERVING_GOALS = {("TreePooling2D", ""): 1.5, ("MixedPooling2D", "gated"): 2.0}
TOLERANCE = 1e-4
RUNTIME_LIBRARIES = ("onnxruntime", "onnx", "tf2onnx", "onnxscript")
# Unpooling's rows: the model pools with argmax, then unpools.
UNPOOL_MODE = "with argmax pooling"
TABLE_COLUMNS = (
    "layer",
    "mode",
    "runtime",
    "pool",
    "batch_shape",
    "median_ms",
    "baseline_median_ms",
    "ratio",
    "meets_goal",
    "values_match",
)


def tflite_call(model, inputs, directory):
    """`model` as TFLite runs it: a zero-argument call of `invoke()` on
    `inputs`, and a function that reads the output."""
    import tensorflow as tf

    path = os.path.join(directory, "saved_model")
    model.export(path, format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with warnings.catch_warnings():
        # TensorFlow 2.21 still ships it, saying that LiteRT replaces it.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(
            model_content=converter.convert(), num_threads=os.cpu_count()
        )
    (entry,) = interpreter.get_input_details()
    # The SavedModel's batch dim is free; TFLite's input then has size 1.
    interpreter.resize_tensor_input(entry["index"], inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], inputs)
    (exit,) = interpreter.get_output_details()
    return interpreter.invoke, lambda: interpreter.get_tensor(exit["index"])


def onnx_call(model, inputs, directory):
    """`model` as ONNX Runtime runs it: a zero-argument call of `run()` on
    `inputs`, and a function that runs it and returns the output."""
    import onnxruntime

    path = os.path.join(directory, "model.onnx")
    with warnings.catch_warnings():
        # The exporters' notes on tracing and constant folding.
        warnings.simplefilter("ignore")
        model.export(path, format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(
        path, providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: inputs}

    def run():
        return session.run(None, feed)[0]

    return run, run


CONVERTERS = {"tflite": tflite_call, "onnx": onnx_call}


def served(model, inputs, runtime, directory):
    """The timed call of `model` in `runtime`, and whether its outputs are
    the Keras model's."""
    expected = keras.ops.convert_to_numpy(model(inputs, training=False))
    os.makedirs(directory, exist_ok=True)
    call, output = CONVERTERS[runtime](model, inputs, directory)
    call()
    values = np.asarray(output())
    match = values.shape == expected.shape and np.allclose(
        values, expected, rtol=TOLERANCE, atol=TOLERANCE, equal_nan=True
    )
    return call, bool(match)


def serving_case(case, window, images):
    """`(layer, inputs)` for `case` at `window`, as `bench.make_case`
    builds it, but unpooling: there the model holds the max pooling with
    argmax whose indices it takes (a constant index tensor, as
    `bench.make_case` fixes it, becomes an input that tf2onnx leaves
    unfed), and the row says so in its mode."""
    if case.window != "unpool":
        layer, inputs = bench.make_case(
            case, window, keras.ops.convert_to_tensor(images)
        )
        return layer, keras.ops.convert_to_numpy(inputs)
    from kpool import layers

    pool = layers.MaxPoolingWithArgmax2D(**window)
    unpool = layers.MaxUnpooling2D(**window, output_size=images.shape[1:3])
    return lambda x: unpool(*pool(x)), images


def model_of(layer, inputs):
    """`Input -> layer` at `inputs`'s shape, batch size included."""
    shape = tuple(inputs.shape)
    entry = keras.Input(shape[1:], batch_size=shape[0])
    return keras.Model(entry, layer(entry))


def benchmark_serving(
    sizes=SIZES, pools=POOLS, runtimes=None, layers=None, repeats=20, warmup=3
):
    """One row per inference case, window, size and runtime: the served
    model's median time, its baseline's from the same rounds, and their
    ratio. Yields each size's rows when it is done."""
    backend = keras.backend.backend()
    runtimes = runtimes or RUNTIMES[backend]
    cases = [
        case
        for case in bench.available_cases()
        if not case.training and (layers is None or case.layer in layers)
    ]
    rng = np.random.default_rng(0)
    for shape in sizes:
        images = rng.standard_normal(shape).astype("float32")
        rows = []
        for runtime in runtimes:
            for pool_index, (pool_size, strides) in enumerate(pools):
                window = dict(
                    pool_size=pool_size, strides=strides, padding="valid"
                )
                rows += _time_window(
                    cases if pool_index == 0 else _windowed(cases),
                    window,
                    images,
                    runtime,
                    repeats,
                    warmup,
                )
        yield rows


def _windowed(cases):
    return [case for case in cases if case.window != "none"]


def _time_window(cases, window, images, runtime, repeats, warmup):
    """Every case at one window in one runtime, interleaved with the
    baselines they need."""
    keras.utils.set_random_seed(0)
    calls, matches, timed = {}, {}, []
    with tempfile.TemporaryDirectory() as directory:
        for index, case in enumerate(cases):
            baseline = ("baseline", case.baseline)
            try:
                if baseline not in calls:
                    layer = bench.make_baseline(case.baseline, window)
                    calls[baseline], _ = served(
                        model_of(layer, images),
                        images,
                        runtime,
                        os.path.join(directory, case.baseline),
                    )
                layer, inputs = serving_case(case, window, images)
                calls[case.key], matches[case.key] = served(
                    model_of(layer, inputs),
                    inputs,
                    runtime,
                    os.path.join(directory, str(index)),
                )
            except Exception as error:
                message = " ".join(str(error).split())[-300:]
                print(
                    f"Skipping {case.layer} {case.mode} in {runtime} at "
                    f"{window}: {type(error).__name__}: ...{message}"
                )
                continue
            timed.append(case)
        if not timed:
            return []
        times = bench.time_interleaved(calls, repeats=repeats, warmup=warmup)
    rows = []
    for case in timed:
        case_ms = bench.median_ms(times[case.key])
        baseline_ms = bench.median_ms(times[("baseline", case.baseline)])
        # The verdict is the written ratio's.
        ratio = round(case_ms / baseline_ms, 3)
        goal = SERVING_GOALS.get((case.layer, case.mode))
        pool = f"{window['pool_size']}x{window['pool_size']}"
        rows.append(
            {
                "layer": case.layer,
                "mode": UNPOOL_MODE if case.window == "unpool" else case.mode,
                "runtime": runtime,
                "pool": "global"
                if case.window == "none"
                else f"{pool}/s{window['strides']}/valid",
                "baseline": case.baseline,
                "batch_shape": "x".join(map(str, images.shape)),
                "median_ms": round(case_ms, 4),
                "baseline_median_ms": round(baseline_ms, 4),
                "ratio": ratio,
                "goal_ratio": goal,
                "meets_goal": None if goal is None else ratio <= goal,
                "values_match": matches[case.key],
                "threads": os.cpu_count() if runtime == "tflite" else "default",
                "repeats": repeats,
                "warmup": warmup,
                "dtype": "float32",
            }
        )
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="results/serving")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--layers",
        nargs="+",
        help="only these layers of bench.LAYER_CASES (default: all)",
    )
    parser.add_argument(
        "--allow-loaded",
        action="store_true",
        help="run above a load average of "
        f"{bench_peers.QUIET_LOAD} (rows say quiet=False)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one tiny size, two layers, few rounds: checks that it runs",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    backend = keras.backend.backend()
    if backend not in RUNTIMES:
        raise SystemExit(
            f"bench_serving.py runs on the TensorFlow and torch backends "
            f"(TFLite and ONNX Runtime); KERAS_BACKEND is {backend!r}."
        )
    # Exits naming the unknown ones.
    bench_layers.select_cases(args.layers)
    load_before = bench_peers.quiet_load_before(args)
    sizes, layers = SIZES, args.layers
    repeats, warmup = args.repeats, args.warmup
    if args.smoke:
        sizes, repeats, warmup = (SMOKE_SIZE,), 2, 1
        layers = layers or SMOKE_LAYERS
    others = bench.OthersCpu()
    path = os.path.join(args.output_dir, f"{backend}.csv")
    rows = []
    # Written after each size: a run stopped early keeps what it finished.
    for size_rows in benchmark_serving(
        sizes, runtimes=None, layers=layers, repeats=repeats, warmup=warmup
    ):
        run = {
            **bench_peers.run_columns(args, load_before, others),
            **bench_peers.library_versions(RUNTIME_LIBRARIES),
        }
        rows = [{**row, **run} for row in rows + size_rows]
        if rows:
            bench.write_csv(rows, path)
    if not rows:
        raise SystemExit("No case ran: see the messages above.")
    print(bench.format_table(rows, TABLE_COLUMNS))
    print(
        f"Wrote {path} ({run['machine']}, load average "
        f"{run['load_average_before']} before, other processes "
        f"{run['others_cpu_cores']} cores, quiet={run['quiet']})"
    )
    return rows


if __name__ == "__main__":
    main()
