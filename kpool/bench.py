"""Timing helpers shared by the benchmark scripts in `experiments/`.

Every time reported is the median of `repeats` timed calls made after
`warmup` untimed ones (which absorb tracing and compilation), with the device
synchronised before the clock is read. Candidates that are compared with each
other are timed interleaved, one call of each per round in an order that
rotates every round, so that a burst of load from another process on a shared
machine hits all of them alike and their ratios stay fair.

Compile modes name what Keras itself does with a train step, per backend
(`COMPILE_MODES`); `default_compile_mode()` is the one `jit_compile="auto"`
picks, the mode users run unless they ask for another.
"""

import functools
import inspect
import os
import statistics
import time

import keras

from kpool.environment import environment, has_gpu

COMPILE_MODES = {
    "tensorflow": {
        "graph": "tf.function(jit_compile=False): Keras's jit_compile='auto' "
        "on a machine without a GPU",
        "xla": "tf.function(jit_compile=True): Keras's jit_compile=True, and "
        "'auto' on a GPU",
    },
    "jax": {
        "jit": "jax.jit: Keras's jit_compile='auto' and jit_compile=True alike",
    },
    "torch": {
        "eager": "eager autograd: Keras's jit_compile='auto' on torch",
        "compile": "torch.compile (inductor): Keras's jit_compile=True",
    },
}

# Goals of the layer benchmark, as ratios of a layer's forward plus backward
# time to MaxPooling2D's with the same window, in the same process.
RATIO_GOALS = {
    ("MinPooling2D", ""): 1.5,
    ("MixedPooling2D", "random"): 2.5,
    ("MixedPooling2D", "learned"): 2.5,
    ("MixedPooling2D", "gated"): 2.5,
    ("StochasticPooling2D", "inference"): 2.5,
    ("StochasticPooling2D", "training"): 4.0,
}

# (layer, mode or phase, training) for every kpool layer benchmarked.
LAYER_CASES = (
    ("MinPooling2D", "", True),
    ("MixedPooling2D", "random", True),
    ("MixedPooling2D", "learned", True),
    ("MixedPooling2D", "gated", True),
    ("StochasticPooling2D", "training", True),
    ("StochasticPooling2D", "inference", False),
)

_ITEMSIZES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


BASELINE = ("MaxPooling2D", "")


def make_layer(layer_name, mode, **window):
    """The layer of a `LAYER_CASES` entry (or `BASELINE`), seeded."""
    from kpool import layers

    if (layer_name, mode) == BASELINE:
        return keras.layers.MaxPooling2D(**window)
    if layer_name == "MixedPooling2D":
        return layers.MixedPooling2D(mode=mode, seed=0, **window)
    if layer_name == "StochasticPooling2D":
        return layers.StochasticPooling2D(seed=0, **window)
    return getattr(layers, layer_name)(**window)


def default_compile_mode():
    """The compile mode of Keras's `jit_compile="auto"` on this machine."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return "xla" if has_gpu() else "graph"
    return next(iter(COMPILE_MODES[backend]))


def check_compile_mode(compile_mode):
    allowed = COMPILE_MODES[keras.backend.backend()]
    if compile_mode not in allowed:
        raise ValueError(
            f"`compile_mode` must be one of {list(allowed)} on the "
            f"{keras.backend.backend()} backend. "
            f"Received: compile_mode={compile_mode!r}"
        )


def compile_function(function, compile_mode):
    """Compiles `function` the way Keras compiles a train step in that mode."""
    check_compile_mode(compile_mode)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=compile_mode == "xla")
    if backend == "jax":
        import jax

        return jax.jit(function)
    if compile_mode == "compile":
        import torch

        return torch.compile(function)
    return function


def synchronize(outputs=None):
    """Waits until the device has finished computing `outputs`."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.block_until_ready(outputs)
    elif backend == "torch":
        import torch

        # CPU ops are synchronous; CUDA kernels are queued.
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        import tensorflow as tf

        tf.test.experimental.sync_devices()


def time_interleaved(candidates, *, repeats, warmup):
    """Times zero-argument callables round by round, in rotating order.

    Each callable must synchronise before it returns. Returns
    `{name: [seconds of each timed call]}`.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    times = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(seconds):
    return 1000.0 * statistics.median(seconds)


def layer_step(layer, inputs, *, training, compile_mode, number=1):
    """A callable that runs `layer` forward and backward, then synchronises.

    The backward pass takes a fixed random output gradient and computes the
    gradients with respect to the input and to every trainable weight, as a
    train step needs. Each call of the callable runs `number` steps back to
    back (on a GPU, enough to hide the launch latency of one), synchronises
    once and returns the last `(outputs, [input gradient, *weight
    gradients])`. The layer's random state advances on every step.
    """
    check_compile_mode(compile_mode)
    # Builds the layer, so that its weights exist before any tracing.
    outputs = layer(inputs, training=training)
    output_grad = keras.random.normal(
        tuple(outputs.shape), dtype=inputs.dtype, seed=1
    )
    make_step = {
        "jax": _jax_layer_step,
        "tensorflow": _tf_layer_step,
        "torch": _torch_layer_step,
    }[keras.backend.backend()]
    step = make_step(layer, inputs, output_grad, training, compile_mode)

    def run():
        for _ in range(number):
            outputs, grads = step()
        synchronize((outputs, grads))
        return outputs, grads

    return run


def _jax_layer_step(layer, inputs, output_grad, training, compile_mode):
    import jax

    # Unlike `__call__`, `stateless_call` passes `training` on unasked.
    call_kwargs = {}
    if "training" in inspect.signature(layer.call).parameters:
        call_kwargs["training"] = training

    def forward_backward(trainable, non_trainable, x, dy):
        def forward(trainable, x):
            return layer.stateless_call(
                trainable, non_trainable, x, **call_kwargs
            )

        y, vjp, non_trainable = jax.vjp(forward, trainable, x, has_aux=True)
        return y, vjp(dy), non_trainable

    step = compile_function(forward_backward, compile_mode)
    trainable = [v.value for v in layer.trainable_variables]
    state = [v.value for v in layer.non_trainable_variables]

    def run():
        nonlocal state
        y, (weight_grads, input_grad), state = step(
            trainable, state, inputs, output_grad
        )
        return y, [input_grad, *weight_grads]

    return run


def _tf_layer_step(layer, inputs, output_grad, training, compile_mode):
    import tensorflow as tf

    def forward_backward(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
        sources = [x, *layer.trainable_variables]
        return y, tape.gradient(y, sources, output_gradients=dy)

    step = compile_function(forward_backward, compile_mode)

    return lambda: step(inputs, output_grad)


def _torch_layer_step(layer, inputs, output_grad, training, compile_mode):
    import torch

    forward = compile_function(
        lambda x: layer(x, training=training), compile_mode
    )
    x = inputs.detach().requires_grad_()
    sources = [x, *(v.value for v in layer.trainable_variables)]

    def run():
        y = forward(x)
        grads = torch.autograd.grad(y, sources, grad_outputs=output_grad)
        return y, list(grads)

    return run


def copy_bandwidth(nbytes, *, repeats=10, warmup=2, compile_mode=None):
    """Bytes per second the device reads plus writes in `a + 1`.

    `a` is a float32 array of about `nbytes`; the result counts it read once
    and written once. The reference that memory-bound layers are held to.
    """
    size = nbytes // 4
    array = keras.ops.zeros((size,), "float32")
    add_one = compile_function(
        lambda a: a + 1, compile_mode or default_compile_mode()
    )
    times = time_interleaved(
        {"copy": lambda: synchronize(add_one(array))},
        repeats=repeats,
        warmup=warmup,
    )
    return 2 * 4 * size / statistics.median(times["copy"])


def pooling_bytes(input_shape, output_shape, dtype):
    """The fewest bytes any pooling's forward plus backward must move.

    Forward reads the input and writes the output; backward reads the input
    (to find or weigh each window's elements) and the output gradient, and
    writes the input gradient. Achieved bandwidth is this over the time, a
    lower bound on what the device really moved.
    """
    itemsize = _ITEMSIZES[keras.backend.standardize_dtype(dtype)]
    n_in = _count(input_shape)
    n_out = _count(output_shape)
    return itemsize * (3 * n_in + 2 * n_out)


def _count(shape):
    count = 1
    for n in shape:
        count *= n
    return count


def benchmark_layers(
    *,
    pools=((2, 2), (3, 2)),
    compile_modes=None,
    batch_shape=(128, 32, 32, 64),
    dtype="float32",
    padding="valid",
    repeats=20,
    warmup=3,
    number=1,
    cases=LAYER_CASES,
):
    """Times every case against `keras.layers.MaxPooling2D`, interleaved.

    `pools` lists `(pool_size, strides)` pairs and `compile_modes` the modes
    to run (default: every mode of the backend). A timed sample is `number`
    steps (see `layer_step`). Returns one row per case, pool and compile
    mode, with the median forward-plus-backward time of one step, the max
    pooling median from the same rounds, and their ratio.
    """
    backend = keras.backend.backend()
    compile_modes = compile_modes or list(COMPILE_MODES[backend])
    inputs = keras.random.normal(batch_shape, dtype=dtype, seed=0)
    env = environment()
    rows = []
    for pool_size, strides in pools:
        window = dict(pool_size=pool_size, strides=strides, padding=padding)
        pool = f"{pool_size}x{pool_size}/s{strides}/{padding}"
        for compile_mode in compile_modes:
            steps = {
                (layer_name, mode): layer_step(
                    make_layer(layer_name, mode, **window),
                    inputs,
                    training=training,
                    compile_mode=compile_mode,
                    number=number,
                )
                for layer_name, mode, training in [(*BASELINE, True), *cases]
            }
            times = time_interleaved(steps, repeats=repeats, warmup=warmup)
            max_ms = median_ms(times.pop(BASELINE)) / number
            output_shape = keras.layers.MaxPooling2D(
                **window
            ).compute_output_shape(batch_shape)
            for (layer_name, mode), seconds in times.items():
                candidate_ms = median_ms(seconds) / number
                goal = RATIO_GOALS.get((layer_name, mode))
                ratio = candidate_ms / max_ms
                rows.append(
                    {
                        "layer": layer_name,
                        "mode_phase": mode,
                        "pool": pool,
                        "compile_mode": compile_mode,
                        "default_compile_mode": compile_mode
                        == default_compile_mode(),
                        "batch_shape": "x".join(map(str, batch_shape)),
                        "median_ms": round(candidate_ms, 4),
                        "maxpool_median_ms": round(max_ms, 4),
                        "ratio": round(ratio, 3),
                        "goal_ratio": goal,
                        "meets_goal": None if goal is None else ratio <= goal,
                        "min_bytes": pooling_bytes(
                            batch_shape, output_shape, dtype
                        ),
                        "repeats": repeats,
                        "steps_per_sample": number,
                        "dtype": dtype,
                        **env,
                    }
                )
    return rows


# What identifies a case of `benchmark_layers`, and what a summary keeps of
# it from its first run.
_CASE_KEYS = ("layer", "mode_phase", "pool", "compile_mode")
_KEPT_KEYS = (
    "default_compile_mode",
    "batch_shape",
    "repeats",
    "dtype",
    "backend",
    "device",
    "keras_version",
    "machine",
)


def summarize_runs(rows):
    """One row per case from the rows of several `benchmark_layers` runs.

    Within one run every ratio is timed interleaved with MaxPooling2D, but a
    whole process can sit in a slow or fast state on a shared CPU (seen
    here: MaxPooling2D's median moved between 3.6 and 7.4 ms from one run to
    the next while the layers' held), so a ratio from one process can be off
    by half. The summary gives each case's median ratio over the runs, with
    the smallest and largest, and judges the goal on the median. `rows`
    carry a `run` column; cases keep their first-seen order.
    """
    cases = {}
    for row in rows:
        cases.setdefault(tuple(row[k] for k in _CASE_KEYS), []).append(row)
    summary = []
    for key, runs in cases.items():
        ratios = [float(r["ratio"]) for r in runs]
        goal = runs[0]["goal_ratio"]
        goal = None if goal in (None, "") else float(goal)
        ratio = statistics.median(ratios)
        first = runs[0]
        summary.append(
            {
                **dict(zip(_CASE_KEYS, key, strict=True)),
                "runs": len(runs),
                "ratio": round(ratio, 3),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "median_ms": round(
                    statistics.median(float(r["median_ms"]) for r in runs), 4
                ),
                "maxpool_median_ms": round(
                    statistics.median(
                        float(r["maxpool_median_ms"]) for r in runs
                    ),
                    4,
                ),
                "goal_ratio": goal,
                "meets_goal": None if goal is None else ratio <= goal,
                **{k: first.get(k, "") for k in _KEPT_KEYS},
                "first_date": min(r["date"] for r in runs),
                "last_date": max(r["date"] for r in runs),
            }
        )
    return summary


def conv_model(pooling, *, input_shape=(32, 32, 3), num_classes=10):
    """A tiny conv net with two downsamplings made by `pooling()`."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            pooling(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            pooling(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(num_classes),
        ]
    )


class StepClock(keras.callbacks.Callback):
    """Seconds per training step of each `fit` call, from batch ends.

    After each call, `step_seconds` gains the time from the first batch's
    end to the last's over the steps between them (`nan` for a call of one
    step): the steady step time, without the call's setup, first step
    (tracing, iterator) and teardown.
    """

    def __init__(self):
        super().__init__()
        self.step_seconds = []
        self._ends = []

    def on_train_begin(self, logs=None):
        self._ends = []

    def on_train_batch_end(self, batch, logs=None):
        self._ends.append(time.perf_counter())

    def on_train_end(self, logs=None):
        steps = len(self._ends) - 1
        self.step_seconds.append(
            (self._ends[-1] - self._ends[0]) / steps if steps else float("nan")
        )


def benchmark_model_fit(
    *,
    pools=((2, 2),),
    jit_compile="auto",
    batch_size=128,
    steps=20,
    repeats=7,
    warmup=1,
    padding="valid",
    cases=LAYER_CASES,
):
    """Times `model.fit` steps of `conv_model` per case and max pooling.

    What a user sees: Keras's own train step, data handling and compile
    mode. The models differ only in their pooling layers and their one-epoch
    `fit` calls are interleaved. A step's time is read between batch ends
    (`StepClock`), the first step of each call left out: that is the time
    per step of a long `fit`, without what each call costs once (building
    the data iterator; on TensorFlow, ~0.6 s of teardown after some calls,
    which doubled an epoch's time at random). Returns one row per case and
    pool with the median time per step and the ratio to max pooling.
    Training-phase cases only: `fit` always trains.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch_size * steps, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch_size * steps).astype("int32")
    env = environment()
    rows = []
    for pool_size, strides in pools:
        window = dict(pool_size=pool_size, strides=strides, padding=padding)
        epochs, clocks = {}, {}
        for name in [
            BASELINE,
            *((n, m) for n, m, training in cases if training),
        ]:
            model = conv_model(functools.partial(make_layer, *name, **window))
            model.compile(
                optimizer="sgd",
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
                jit_compile=jit_compile,
            )
            resolved_jit_compile = model.jit_compile
            clocks[name] = StepClock()
            epochs[name] = functools.partial(
                model.fit,
                x,
                y,
                batch_size=batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
                callbacks=[clocks[name]],
            )
        time_interleaved(epochs, repeats=repeats, warmup=warmup)
        times = {
            name: clock.step_seconds[warmup:] for name, clock in clocks.items()
        }
        max_ms = median_ms(times.pop(BASELINE))
        for (layer_name, mode), seconds in times.items():
            step_ms = median_ms(seconds)
            rows.append(
                {
                    "layer": layer_name,
                    "mode_phase": mode,
                    "pool": f"{pool_size}x{pool_size}/s{strides}/{padding}",
                    "jit_compile": jit_compile,
                    "resolved_jit_compile": resolved_jit_compile,
                    "batch_size": batch_size,
                    "steps": steps,
                    "median_ms_per_step": round(step_ms, 4),
                    "maxpool_median_ms_per_step": round(max_ms, 4),
                    "ratio": round(step_ms / max_ms, 3),
                    "repeats": repeats,
                    "dtype": "float32",
                    **env,
                }
            )
    return rows


def write_csv(rows, path):
    """Writes `rows` (dicts with the same keys) to `path`, atomically."""
    import csv

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def format_table(rows, columns):
    """A plain-text table of `columns` of `rows`, for the terminal."""
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)
    ]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True))
        for line in [list(columns), *cells]
    )
