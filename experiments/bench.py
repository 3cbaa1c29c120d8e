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

import csv
import dataclasses
import functools
import inspect
import os
import statistics
import subprocess
import time

import keras

from kpool.harness.environment import environment, has_gpu

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


@dataclasses.dataclass(frozen=True)
class LayerCase:
    """One timed case of the layer benchmark.

    `layer` names a class of `kpool.layers`, built with `kwargs` plus the
    window arguments that `window` names (`WINDOW_KINDS`). It runs with
    `training` and, where `backward`, through its backward pass too, and is
    timed against `baseline` (a key of `BASELINES`) run the same way (the
    same `training` and passes). `goal` is the largest ratio to the
    baseline that meets the goal (`None`: none set).
    """

    layer: str
    mode: str = ""
    kwargs: dict = dataclasses.field(default_factory=dict)
    training: bool = True
    backward: bool = True
    baseline: str = "MaxPooling2D"
    goal: float | None = None
    window: str = "pool"

    @property
    def phase(self):
        return "training" if self.training else "inference"

    @property
    def passes(self):
        return "fwd+bwd" if self.backward else "fwd"

    @property
    def key(self):
        return (self.layer, self.mode, self.phase, self.passes)


# How a case takes the benchmark's window (`pool_size`, `strides`,
# `padding`):
WINDOW_KINDS = {
    # as MaxPooling2D does;
    "pool": "pool_size, strides, padding as given",
    # blur pooling's window is its filter;
    "filter": "filter_size=pool_size, strides (the blur pads itself)",
    # a global pooling has no window, so it runs once, not per pool;
    "none": "no window: timed once, pool 'global'",
    # fractional max pooling: the output size of MaxPooling2D's window;
    "output_size": "output_size (or output_ratio) giving MaxPooling2D's "
    "output size, plus pool_size where the layer takes one",
    # unpooling: the values and indices of max pooling with argmax over the
    # window, unpooled back to the input's size.
    "unpool": "the pooling's window; input: MaxPoolingWithArgmax2D's values",
}

# Layers the benchmark compares with, by name: what each stands for.
BASELINES = {
    "MaxPooling2D": "keras.layers.MaxPooling2D with the case's window",
    "GlobalMaxPooling2D": "keras.layers.GlobalMaxPooling2D: a global "
    "pooling's window is the whole map",
    "AdaptiveMaxPooling2D(4)": "keras.layers.AdaptiveMaxPooling2D(4): the "
    "finest level of a [1, 2, 4] pyramid",
}


def _training_and_inference(layer, mode="", *, kwargs=None, train, infer):
    """The fwd+bwd training case and the forward-only inference case."""
    kwargs = kwargs or {}
    return (
        LayerCase(layer, mode, kwargs, goal=train),
        LayerCase(layer, mode, kwargs, False, False, goal=infer),
    )


def _new_operator(layer, mode="", *, goal, **fields):
    """A new operator: fwd+bwd in training (with the issues' goal) and its
    forward-only inference (no goal set)."""
    return (
        LayerCase(layer, mode, goal=goal, **fields),
        LayerCase(layer, mode, training=False, backward=False, **fields),
    )


_SEED = {"seed": 0}

# Every case, in table order. The goals are issue 15's for min, mixed and
# stochastic pooling (fwd+bwd in training; forward-only inference against
# MaxPooling2D's forward) and issues 12 and 13's for the new operators
# (fwd+bwd; their inference is timed too, with no goal).
LAYER_CASES = (
    *_training_and_inference("MinPooling2D", train=1.5, infer=1.5),
    *_training_and_inference(
        "MixedPooling2D",
        "random",
        kwargs={"mode": "random", **_SEED},
        train=2.5,
        infer=1.5,
    ),
    *_training_and_inference(
        "MixedPooling2D",
        "learned",
        kwargs={"mode": "learned", **_SEED},
        train=2.5,
        infer=1.5,
    ),
    *_training_and_inference(
        "MixedPooling2D",
        "gated",
        kwargs={"mode": "gated", **_SEED},
        train=2.5,
        infer=2.0,
    ),
    *_training_and_inference(
        "StochasticPooling2D", kwargs=_SEED, train=4.0, infer=1.5
    ),
    *_new_operator("LPPooling2D", "p=2", kwargs={"norm_type": 2}, goal=2.0),
    *_new_operator(
        "GlobalGeMPooling2D",
        baseline="GlobalMaxPooling2D",
        window="none",
        goal=2.0,
    ),
    *_new_operator(
        "SpatialPyramidPooling2D",
        "bins=1,2,4",
        kwargs={"bins": [1, 2, 4]},
        baseline="AdaptiveMaxPooling2D(4)",
        window="none",
        goal=2.0,
    ),
    *_new_operator(
        "FractionalMaxPooling2D", kwargs=_SEED, window="output_size", goal=3.0
    ),
    *_new_operator("MaxUnpooling2D", window="unpool", goal=2.0),
    *_new_operator("BlurPooling2D", window="filter", goal=2.0),
    *_new_operator("MaxBlurPooling2D", goal=2.0),
    *_new_operator("SoftPooling2D", goal=2.0),
    *_new_operator("TreePooling2D", goal=3.0),
    *_new_operator("MedianPooling2D", goal=4.0),
)

_ITEMSIZES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def available_cases(cases=LAYER_CASES):
    """The cases whose layer `kpool.layers` has, with a printed note for
    each one it lacks (operators land one by one; the benchmark runs with
    what is there)."""
    from kpool import layers

    missing = sorted({c.layer for c in cases if not hasattr(layers, c.layer)})
    for name in missing:
        print(f"Skipping {name}: kpool.layers has no such layer yet")
    return tuple(c for c in cases if c.layer not in missing)


def make_baseline(name, window):
    """The Keras layer `BASELINES[name]` for `window`."""
    if name == "MaxPooling2D":
        return keras.layers.MaxPooling2D(**window)
    if name == "GlobalMaxPooling2D":
        return keras.layers.GlobalMaxPooling2D()
    if name == "AdaptiveMaxPooling2D(4)":
        return keras.layers.AdaptiveMaxPooling2D(4)
    raise ValueError(
        f"`baseline` must be one of {list(BASELINES)}. Received: {name!r}"
    )


def make_case(case, window, inputs):
    """`(layer, inputs)` for `case` at `window` (`pool_size`, `strides`,
    `padding`) on `inputs`: the layer to time and what to call it on."""
    from kpool import layers

    cls = getattr(layers, case.layer)
    kwargs = dict(case.kwargs)
    if case.window in ("pool", "unpool"):
        kwargs.update(window)
    elif case.window == "filter":
        kwargs.update(
            filter_size=window["pool_size"], strides=window["strides"]
        )
    elif case.window == "output_size":
        kwargs.update(_output_size_arguments(cls, window, inputs.shape))
    elif case.window != "none":
        raise ValueError(
            f"`window` must be one of {list(WINDOW_KINDS)}. "
            f"Received: window={case.window!r}"
        )
    if case.window != "unpool":
        return cls(**kwargs), inputs
    values, indices = layers.MaxPoolingWithArgmax2D(**window)(inputs)
    size = tuple(inputs.shape[1:3])
    return _FixedIndices(cls(output_size=size, **kwargs), indices), values


def _output_size_arguments(cls, window, input_shape):
    """Arguments that make fractional max pooling give MaxPooling2D's
    output size at `window`, in whichever form the layer takes it."""
    output_shape = keras.layers.MaxPooling2D(**window).compute_output_shape(
        tuple(input_shape)
    )
    size = tuple(int(n) for n in output_shape[1:3])
    parameters = inspect.signature(cls.__init__).parameters
    if "output_size" in parameters:
        arguments = {"output_size": size}
    else:
        arguments = {
            "output_ratio": tuple(
                out / n for out, n in zip(size, input_shape[1:3], strict=True)
            )
        }
    if "pool_size" in parameters:
        arguments["pool_size"] = window["pool_size"]
    return arguments


class _FixedIndices(keras.layers.Layer):
    """`MaxUnpooling2D` called on one input, the argmax indices fixed: the
    unpooling of a decoder, with the gradient to its values."""

    def __init__(self, unpool, indices, **kwargs):
        # TensorFlow's name scopes refuse the default, "_fixed_indices".
        kwargs.setdefault("name", "unpooling_at_fixed_indices")
        super().__init__(**kwargs)
        self.unpool = unpool
        self.indices = indices

    def call(self, inputs):
        return self.unpool(inputs, self.indices)


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


def kept_rows(path, column, replaced, columns):
    """The rows of the CSV at `path` whose `column` is not in `replaced`,
    with `columns` (a column they lack is left empty): what a rerun of
    some cases keeps of an earlier run, each row with its own date and
    load."""
    with open(path, newline="") as f:
        old = [row for row in csv.DictReader(f) if row[column] not in replaced]
    return [{c: row.get(c, "") for c in columns} for row in old]


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


def layer_step(
    layer, inputs, *, training, compile_mode, backward=True, number=1
):
    """A callable that runs `layer` forward (and backward), then synchronises.

    The backward pass takes a fixed random output gradient and computes the
    gradients with respect to the input and to every trainable weight, as a
    train step needs. With `backward=False` the step is the forward pass
    alone, as inference runs it (on torch, under `torch.no_grad()`, as
    Keras's `predict` does). Each call of the callable runs `number` steps
    back to back (on a GPU, enough to hide the launch latency of one),
    synchronises once and returns the last `(outputs, [input gradient,
    *weight gradients])`, the list empty without `backward`. The layer's
    random state advances on every step.
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
    step = make_step(
        layer, inputs, output_grad if backward else None, training, compile_mode
    )

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

    def forward(trainable, non_trainable, x):
        return layer.stateless_call(trainable, non_trainable, x, **call_kwargs)

    def forward_backward(trainable, non_trainable, x, dy):
        y, vjp, non_trainable = jax.vjp(
            lambda trainable, x: forward(trainable, non_trainable, x),
            trainable,
            x,
            has_aux=True,
        )
        return y, vjp(dy), non_trainable

    trainable = [v.value for v in layer.trainable_variables]
    state = [v.value for v in layer.non_trainable_variables]
    if output_grad is None:
        forward_only = compile_function(forward, compile_mode)

        def run():
            nonlocal state
            y, state = forward_only(trainable, state, inputs)
            return y, []

        return run

    step = compile_function(forward_backward, compile_mode)

    def run():
        nonlocal state
        y, (weight_grads, input_grad), state = step(
            trainable, state, inputs, output_grad
        )
        return y, [input_grad, *weight_grads]

    return run


def _tf_layer_step(layer, inputs, output_grad, training, compile_mode):
    import tensorflow as tf

    if output_grad is None:
        forward = compile_function(
            lambda x: layer(x, training=training), compile_mode
        )
        return lambda: (forward(inputs), [])

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
    if output_grad is None:

        def run_forward():
            with torch.no_grad():
                return forward(inputs), []

        return run_forward

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


def pooling_bytes(input_shape, output_shape, dtype, backward=True):
    """The fewest bytes any pooling's forward (plus backward) must move.

    Forward reads the input and writes the output; backward reads the input
    (to find or weigh each window's elements) and the output gradient, and
    writes the input gradient. Achieved bandwidth is this over the time, a
    lower bound on what the device really moved.
    """
    itemsize = _ITEMSIZES[keras.backend.standardize_dtype(dtype)]
    n_in = _count(input_shape)
    n_out = _count(output_shape)
    if not backward:
        return itemsize * (n_in + n_out)
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
    """Times every case against its baseline, interleaved.

    `pools` lists `(pool_size, strides)` pairs and `compile_modes` the modes
    to run (default: every mode of the backend). For each pool and mode,
    every case and every baseline it needs (run with the case's `training`
    and passes) are timed round by round in one process. A timed sample is
    `number` steps (see `layer_step`). Cases whose layer kpool does not
    have yet are skipped (`available_cases`), and so are cases whose first
    step fails, with a printed note; cases without a window run at the
    first pool only. Returns one row per case, pool and compile mode,
    with the median time of one step, the baseline's median from the same
    rounds, and their ratio.
    """
    backend = keras.backend.backend()
    compile_modes = compile_modes or list(COMPILE_MODES[backend])
    cases = available_cases(cases)
    images = keras.random.normal(batch_shape, dtype=dtype, seed=0)
    env = environment()
    rows = []
    for pool_index, (pool_size, strides) in enumerate(pools):
        window = dict(pool_size=pool_size, strides=strides, padding=padding)
        pool_cases = [c for c in cases if pool_index == 0 or c.window != "none"]
        for compile_mode in compile_modes:
            steps, shapes, timed_cases = {}, {}, []
            for case in pool_cases:
                baseline = ("baseline", case.baseline, *case.key[2:])
                try:
                    if baseline not in steps:
                        layer = make_baseline(case.baseline, window)
                        steps[baseline], shapes[baseline] = _timed_step(
                            layer, images, case, compile_mode, number
                        )
                    layer, inputs = make_case(case, window, images)
                    steps[case.key], shapes[case.key] = _timed_step(
                        layer, inputs, case, compile_mode, number
                    )
                except Exception as error:  # A layer still being written.
                    # The last lines of a traced error say what failed.
                    message = " ".join(str(error).split())[-300:]
                    print(
                        f"Skipping {' '.join(case.key)} at {window}: "
                        f"{type(error).__name__}: ...{message}"
                    )
                    continue
                timed_cases.append(case)
            times = time_interleaved(steps, repeats=repeats, warmup=warmup)
            for case in timed_cases:
                baseline = ("baseline", case.baseline, *case.key[2:])
                baseline_ms = median_ms(times[baseline]) / number
                case_ms = median_ms(times[case.key]) / number
                ratio = case_ms / baseline_ms
                goal = case.goal
                rows.append(
                    {
                        "layer": case.layer,
                        "mode": case.mode,
                        "phase": case.phase,
                        "passes": case.passes,
                        "pool": "global"
                        if case.window == "none"
                        else f"{pool_size}x{pool_size}/s{strides}/{padding}",
                        "baseline": case.baseline,
                        "compile_mode": compile_mode,
                        "default_compile_mode": compile_mode
                        == default_compile_mode(),
                        "batch_shape": "x".join(map(str, batch_shape)),
                        "median_ms": round(case_ms, 4),
                        "baseline_median_ms": round(baseline_ms, 4),
                        "ratio": round(ratio, 3),
                        "goal_ratio": goal,
                        "meets_goal": None if goal is None else ratio <= goal,
                        "min_bytes": pooling_bytes(
                            *shapes[case.key], dtype, case.backward
                        ),
                        "repeats": repeats,
                        "steps_per_sample": number,
                        "dtype": dtype,
                        **env,
                    }
                )
    return rows


def _timed_step(layer, inputs, case, compile_mode, number):
    """`layer_step` run as `case` says, and its (input, output) shapes.

    The step runs once here, so that a layer that fails to trace fails
    before the timing starts."""
    step = layer_step(
        layer,
        inputs,
        training=case.training,
        backward=case.backward,
        compile_mode=compile_mode,
        number=number,
    )
    outputs, _ = step()
    return step, (tuple(inputs.shape), tuple(outputs.shape))


# What identifies a case of `benchmark_layers`, and what a summary keeps of
# it from its first run.
_CASE_KEYS = ("layer", "mode", "phase", "passes", "pool", "compile_mode")
_KEPT_KEYS = (
    "baseline",
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

    Within one run every ratio is timed interleaved with its baseline, but a
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
                "baseline_median_ms": round(
                    statistics.median(
                        float(r["baseline_median_ms"]) for r in runs
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


# Goal of the model-level benchmark (issue 15): every choice's `fit` step
# time within this ratio of the same net with max pooling.
MODEL_FIT_GOAL = 1.25
# The harness's choices that replace pooling by a convolution, timed beside
# the poolings as what users would otherwise run.
CONV_CHOICES = ("strided", "allconv")


def model_fit_choices():
    """The small CNN's choices timed against "max": every windowed pooling
    of the registry `build_model` takes, then `CONV_CHOICES`."""
    from kpool.harness import models

    choices = models.downsampling_choices()
    poolings = [
        c for c in choices if c not in models.NON_POOLING_CHOICES and c != "max"
    ]
    return (*poolings, *(c for c in CONV_CHOICES if c in choices))


def benchmark_model_fit(
    *,
    choices=None,
    family="small_cnn",
    width=None,
    input_shape=(32, 32, 3),
    jit_compile="auto",
    batch_size=128,
    steps=8,
    repeats=5,
    warmup=1,
):
    """Times `model.fit` steps of the harness's model per downsampling choice.

    What a user sees: `kpool.harness.models.build_model(ModelConfig(family),
    choice, augment=False)` (the harness's window, padding and position),
    Keras's own train step, data handling and compile mode (`jit_compile`). The
    models differ only in their downsampling and their one-epoch `fit`
    calls are interleaved with the same net with "max" pooling. A step's
    time is read between batch ends (`StepClock`), the first step of each
    call left out, and the first `warmup` calls (tracing) dropped: that is
    the time per step of a long `fit`, without what each call costs once
    (building the data iterator; on TensorFlow, ~0.6 s of teardown after
    some calls, which doubled an epoch's time at random). Returns one row
    per choice (default `model_fit_choices()`) with the median time per
    step and the ratio to "max".
    """
    import numpy as np

    from kpool.harness import models
    from kpool.harness.config import ModelConfig

    choices = model_fit_choices() if choices is None else tuple(choices)
    model_config = ModelConfig(family=family, width=width)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size * steps, *input_shape))
    x = x.astype("float32")
    y = rng.integers(0, 10, batch_size * steps).astype("int32")
    env = environment()
    epochs, clocks = {}, {}
    for choice in ("max", *choices):
        model = models.build_model(
            model_config, choice, input_shape=input_shape, augment=False
        )
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        resolved_jit_compile = model.jit_compile
        clocks[choice] = StepClock()
        epochs[choice] = functools.partial(
            model.fit,
            x,
            y,
            batch_size=batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[clocks[choice]],
        )
    rows = []
    for choice, step_ms, max_ms, spread in _interleaved_fits(
        epochs, clocks, "max", repeats=repeats, warmup=warmup
    ):
        ratio = step_ms / max_ms
        rows.append(
            {
                "downsampling": choice,
                "model": family,
                "input_shape": "x".join(map(str, input_shape)),
                "jit_compile": jit_compile,
                "resolved_jit_compile": resolved_jit_compile,
                "compile_mode": default_compile_mode()
                if jit_compile == "auto"
                else "",
                "batch_size": batch_size,
                "steps": steps,
                "median_ms_per_step": round(step_ms, 4),
                "max_median_ms_per_step": round(max_ms, 4),
                "ratio": round(ratio, 3),
                "ratio_spread": spread,
                "goal_ratio": MODEL_FIT_GOAL,
                "meets_goal": ratio <= MODEL_FIT_GOAL,
                "repeats": repeats,
                "dtype": "float32",
                **env,
            }
        )
    return rows


def _interleaved_fits(epochs, clocks, baseline, *, repeats, warmup):
    """Runs the one-epoch `fit` calls `epochs` interleaved
    (`time_interleaved`) and yields `(choice, median ms per step,
    baseline's median ms per step, spread)` for every choice but
    `baseline`, from the `StepClock`s `clocks`."""
    time_interleaved(epochs, repeats=repeats, warmup=warmup)
    times = {
        choice: clock.step_seconds[warmup:] for choice, clock in clocks.items()
    }
    baseline_ms = median_ms(times.pop(baseline))
    for choice, seconds in times.items():
        yield (
            choice,
            median_ms(seconds),
            baseline_ms,
            _spread(seconds, baseline_ms),
        )


def benchmark_experiment_fit(config, dataset, *, repeats=5, warmup=1):
    """Times the `fit` steps of an experiment's own runs, interleaved.

    `kpool run` trains its runs one after another, so the speed columns of
    its tables carry whatever drifts between runs: on a shared 2-core CPU
    the same run repeated in one process has read 1.2-1.7x slower than its
    first time. This builds every downsampling choice of `config` (a
    `kpool.harness.config.ExperimentConfig`) as its runs are built, with
    the first seed (`training.compiled_model`: the model, augmentation,
    optimizer, schedule, loss, metrics and compile mode) and feeds each the
    runs' own training batches of `dataset` (`training.device_batches`,
    the first epoch's order), one epoch per `fit` call, the calls
    interleaved as in `benchmark_model_fit`. The baseline is the config's
    `report.baseline`, else "max" when it is a choice, else the first
    choice. Returns one row per other choice with the median time per step
    and the ratio to the baseline.
    """
    from kpool.harness import training

    choices = list(config.downsampling)
    baseline = config.report.baseline or (
        "max" if "max" in choices else choices[0]
    )
    seed = config.seeds[0]
    train = config.train
    n_train = len(dataset.x_train)
    batch_size = min(train.batch_size, n_train)
    steps = n_train // batch_size
    order = training.epoch_orders(seed, n_train, batch_size, 1)
    schedule = training.make_schedule(train, steps)
    env = environment()
    epochs, clocks = {}, {}
    for choice in [baseline, *(c for c in choices if c != baseline)]:
        keras.utils.set_random_seed(seed)
        model = training.compiled_model(config, choice, seed, dataset, schedule)
        clocks[choice] = StepClock()
        epochs[choice] = functools.partial(
            model.fit,
            training.device_batches(dataset.x_train, dataset.y_train, order),
            epochs=1,
            steps_per_epoch=steps,
            shuffle=False,
            verbose=0,
            callbacks=[clocks[choice]],
        )
        resolved = model.jit_compile
    rows = []
    for choice, step_ms, baseline_ms, spread in _interleaved_fits(
        epochs, clocks, baseline, repeats=repeats, warmup=warmup
    ):
        ratio = step_ms / baseline_ms
        rows.append(
            {
                "experiment": config.name,
                "downsampling": choice,
                "baseline": baseline,
                "model": config.model.family,
                "width": config.model.width,
                "dataset": dataset.name,
                "n_train": n_train,
                "jit_compile": config.jit_compile,
                "resolved_jit_compile": resolved,
                "compile_mode": default_compile_mode()
                if config.jit_compile == "auto"
                else "",
                "batch_size": batch_size,
                "steps": steps,
                "median_ms_per_step": round(step_ms, 4),
                "baseline_median_ms_per_step": round(baseline_ms, 4),
                "ratio": round(ratio, 3),
                "ratio_spread": spread,
                "goal_ratio": MODEL_FIT_GOAL,
                "meets_goal": ratio <= MODEL_FIT_GOAL,
                "repeats": repeats,
                "dtype": config.precision,
                **env,
            }
        )
    return rows


def _spread(seconds, max_ms):
    """The lowest and highest per-call step time over "max"'s median, as
    "lo-hi": how far one call's ratio can wander on a loaded machine."""
    ratios = [1000.0 * s / max_ms for s in seconds]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


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


# Above this many cores' worth of CPU used by other processes while the
# benchmark ran, its rows say quiet=False.
QUIET_OTHERS_CORES = 0.5


class OthersCpu:
    """The CPU that other processes use while the benchmark runs, in cores.

    The load average after a run counts the benchmark's own threads (two
    on a 2-core machine), so it cannot say whether anything else ran.
    This takes the machine's busy time from /proc/stat minus this
    process's own CPU time, over the wall time. None where /proc/stat is
    not there (not Linux).
    """

    def __init__(self):
        self.start = self._readings()

    @staticmethod
    def _readings():
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
        except OSError:
            return None
        ticks = [int(v) for v in fields]
        # user nice system idle iowait irq softirq steal ...: busy is all
        # but idle and iowait.
        busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
        own = os.times()
        return (
            busy / os.sysconf("SC_CLK_TCK"),
            own.user + own.system,
            time.monotonic(),
        )

    def cores(self):
        end = self._readings()
        if self.start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end, strict=True))
        return max(0.0, (busy - own) / wall) if wall > 0 else None


def git_state():
    """The commit of this checkout and whether its tree differs from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        try:
            return subprocess.run(
                ["git", *args],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD")
    # Whether the code timed differs from the commit: results and notes
    # written beside a run (this CSV among them) do not count.
    code = ("kpool", "kpool_cli", "experiments", "pyproject.toml")
    changed = git("status", "--porcelain", "--untracked-files=no", "--", *code)
    return {
        "git_commit": commit,
        "git_dirty": bool(changed) if commit else "",
    }
