"""One training run: a model variant trained with `model.fit` and measured.

`train_run` trains one (downsampling choice, seed) of an experiment and
returns the run's row values and per-epoch history. Variants with the same
seed are matched: same initial weights for shared layers
(`kpool.harness.models`), same data order, same augmentation draws, same
optimizer and schedule.

- Data order: epoch `e` visits the training set in the order
  `numpy.random.default_rng((seed, e)).permutation(n)`, cut to whole batches
  (the last partial batch is dropped, so every step has the same shape and
  the train step compiles once).
- Device-resident data: the uint8 images are copied to the device once;
  each batch is gathered and cast there (JAX, torch). TensorFlow gathers in
  its tf.data pipeline.
- Throughput: `train_images_per_sec` counts training steps only. The first
  steps of the first epoch (compilation, warm-up) and every evaluation are
  outside the timed windows, and the device is synchronised before the
  clock is read at both ends of a window. A run's rate is the median of its
  epochs' rates (`TrainTimer.images_per_sec`).
- Weight decay: "sgd" and "adam" add `weight_decay * w` to the gradient (an
  L2 penalty, as torch's `weight_decay` and the papers' recipes); "adamw"
  decouples it (Keras's `AdamW`). Only conv and dense kernels decay.
- Several devices (`config.distribution: data_parallel`, JAX only):
  training runs under `keras.distribution.DataParallel` over every local
  device; `train.batch_size` is the global batch, split evenly, so
  `train_images_per_sec` counts global images per second. Rows record
  `distribution`, `devices` and `per_device_batch_size` (also for a
  one-device run). The per-epoch test accuracy leaves out the last
  `n_test % devices` test images; the final evaluation and every metric
  after training run on one device, on a copy of the trained weights, with
  every test image, so they are computed as in a one-device run.
- Determinism (`config.deterministic`): TensorFlow's op determinism, torch's
  deterministic algorithms. JAX on a GPU needs
  `XLA_FLAGS=--xla_gpu_deterministic_ops=true` set before the process
  starts; JAX on a CPU is deterministic as it is.
"""

import contextlib
import dataclasses
import math
import os
import time
import warnings

import keras
import numpy as np
from keras import ops

from kpool.harness.environment import device_name
from kpool.harness.models import build_model


@dataclasses.dataclass
class RunResult:
    metrics: dict
    epochs: list


def train_run(config, downsampling, seed, dataset, *, verbose=1, callbacks=()):
    """Trains one variant on `dataset` and measures it.

    Args:
        config: `kpool.harness.config.ExperimentConfig`.
        downsampling: string, one of `config.downsampling`.
        seed: int. Seeds Python, NumPy, the backend, the initial weights and
            the data order.
        dataset: `kpool.harness.data.Dataset` (uint8 NHWC images, int labels).
        verbose: int. `model.fit`'s verbosity.
        callbacks: extra Keras callbacks for `model.fit`.

    Returns:
        `RunResult` with the run's metrics (the row of runs.csv that
        training computes) and one dict per epoch.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    if config.deterministic:
        _enable_determinism()
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        return _train(config, downsampling, seed, dataset, verbose, callbacks)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _train(config, downsampling, seed, dataset, verbose, callbacks):
    run_start = time.perf_counter()
    train = config.train
    n_train = len(dataset.x_train)
    batch_size = min(train.batch_size, n_train)
    steps_per_epoch = n_train // batch_size
    order = epoch_orders(seed, n_train, batch_size, train.epochs)
    distribution = make_distribution(config.distribution, batch_size)
    devices = (
        1 if distribution is None else distribution.device_mesh.devices.size
    )

    schedule = make_schedule(train, steps_per_epoch)
    eval_batch_size = config.eval.batch_size
    test_batches = sequential_batches(len(dataset.x_test), eval_batch_size)
    timer = TrainTimer(steps_per_epoch, batch_size)
    with _scope(distribution):
        model = compiled_model(config, downsampling, seed, dataset, schedule)
        traces = _count_train_step_traces(model)
        train_data = device_batches(dataset.x_train, dataset.y_train, order)
        test_data = device_batches(
            dataset.x_test,
            dataset.y_test,
            # Each device takes an equal part of every batch.
            test_batches
            if distribution is None
            else _divisible(test_batches, devices),
        )
        start = time.perf_counter()
        history = model.fit(
            train_data,
            epochs=train.epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=test_data,
            # The order is `order`; fit must not reshuffle it.
            shuffle=False,
            callbacks=[timer, *callbacks],
            verbose=verbose,
        )
        train_seconds = time.perf_counter() - start
    if distribution is not None:
        # Every evaluation after training runs on one device, on every test
        # image and in batches of any size, as in a one-device run.
        weights = model.get_weights()
        model = compiled_model(config, downsampling, seed, dataset, schedule)
        model.set_weights(weights)
        test_data = device_batches(dataset.x_test, dataset.y_test, test_batches)
        # Compiles the copy's test step outside the timed evaluation, as
        # fit's validation does for a one-device run.
        model.evaluate(test_data, verbose=0)

    eval_start = time.perf_counter()
    test_loss, test_accuracy = model.evaluate(test_data, verbose=0)
    eval_images_per_sec = len(dataset.x_test) / (
        time.perf_counter() - eval_start
    )
    # What the pooling-claims metrics (overfit gap, shift invariance, receptive
    # field, FLOPs) add to a run, reported so their cost stays measured.
    extra_eval_start = time.perf_counter()
    train_eval_accuracy = _train_eval_accuracy(
        model, dataset, config.eval.seed, eval_batch_size
    )
    metrics = _model_metrics(model, dataset, config)
    end = time.perf_counter()
    eval_seconds = end - eval_start
    extra_eval_seconds = end - extra_eval_start

    logs = history.history
    epochs = [
        {
            "epoch": epoch + 1,
            "train_loss": logs["loss"][epoch],
            "train_accuracy": logs["accuracy"][epoch],
            "test_loss": logs["val_loss"][epoch],
            "test_accuracy": logs["val_accuracy"][epoch],
            "learning_rate": float(schedule(epoch * steps_per_epoch)),
            **timer.epochs[epoch],
        }
        for epoch in range(len(logs["loss"]))
    ]
    train_images_per_sec = timer.images_per_sec()
    images_per_epoch = steps_per_epoch * batch_size
    metrics.update(
        {
            "model": config.model.family,
            "downsampling": downsampling,
            "head": config.model.head,
            "seed": seed,
            "params": model.count_params(),
            "backend": keras.backend.backend(),
            "device": device_name(),
            "precision": config.precision,
            "jit_compile": config.jit_compile,
            "jit_compile_resolved": bool(model.jit_compile),
            "epochs": len(epochs),
            "batch_size": batch_size,
            "distribution": config.distribution or "none",
            "devices": devices,
            "per_device_batch_size": batch_size // devices,
            "steps_per_epoch": steps_per_epoch,
            "test_accuracy": float(test_accuracy),
            "test_loss": float(test_loss),
            "train_accuracy": epochs[-1]["train_accuracy"],
            "train_loss": epochs[-1]["train_loss"],
            "best_test_accuracy": max(e["test_accuracy"] for e in epochs),
            "train_eval_accuracy": train_eval_accuracy,
            "overfit_gap": train_eval_accuracy - float(test_accuracy),
            "train_seconds": train_seconds,
            "train_images_per_sec": train_images_per_sec,
            "train_ms_per_step": 1000.0 * batch_size / train_images_per_sec,
            # Steady-state training time of one epoch: no compilation, no
            # evaluation.
            "epoch_seconds": images_per_epoch / train_images_per_sec,
            "eval_images_per_sec": eval_images_per_sec,
            "eval_seconds": eval_seconds,
            "extra_eval_seconds": extra_eval_seconds,
            # Build, compile, fit and every evaluation.
            "run_seconds": end - run_start,
        }
    )
    if traces is not None:
        metrics["compile_count"] = traces[0]
    return RunResult(metrics=metrics, epochs=epochs)


def make_schedule(train, steps_per_epoch):
    """The learning rate schedule of a run's `TrainConfig`, in steps."""
    return LearningRateSchedule(
        train.schedule.name,
        train.optimizer.learning_rate,
        total_steps=train.epochs * steps_per_epoch,
        warmup_steps=round(train.schedule.warmup_epochs * steps_per_epoch),
        boundaries=[e * steps_per_epoch for e in train.schedule.decay_epochs],
        decay_factor=train.schedule.decay_factor,
    )


def compiled_model(config, downsampling, seed, dataset, schedule):
    """A run's model, built and compiled as `train_run` builds it: its
    augmentation, optimizer, loss, metrics and `jit_compile`."""
    model = build_model(
        config.model,
        downsampling,
        num_classes=dataset.num_classes,
        input_shape=dataset.x_train.shape[1:],
        seed=seed,
        augment=config.data.augment,
        downsampling_options=config.downsampling_options,
    )
    model.compile(
        optimizer=make_optimizer(config.train.optimizer, schedule, model),
        loss=_loss(config.train.label_smoothing, dataset.num_classes),
        metrics=["accuracy"],
        jit_compile=config.jit_compile,
    )
    return model


def make_distribution(name, batch_size):
    """The `keras.distribution` of `config.distribution`, or None.

    "data_parallel" is `keras.distribution.DataParallel` over every device
    `keras.distribution.list_devices()` finds: the variables are replicated,
    every batch of `batch_size` (the global batch) is split evenly over the
    devices, and the gradients are summed across them by XLA. Keras's
    distribution API runs on JAX only (its TensorFlow part is an unused
    prototype, and torch has none), so other backends fail here, before
    anything trains.

    Raises:
        ValueError: not on JAX, or `batch_size` does not split evenly.
    """
    if name is None:
        return None
    if name != "data_parallel":
        raise ValueError(
            "`distribution` must be 'data_parallel' or None. "
            f"Received: distribution={name!r}"
        )
    backend = keras.backend.backend()
    if backend != "jax":
        raise ValueError(
            "`distribution: data_parallel` needs KERAS_BACKEND=jax: Keras's "
            "distribution API runs on JAX only. On one device, leave "
            "`distribution` unset; to use several machines or GPUs on "
            "another backend, split the grid with `--shard i/n`, one process "
            f"per device. Received: backend={backend!r}"
        )
    devices = keras.distribution.list_devices()
    if batch_size % len(devices):
        raise ValueError(
            f"`train.batch_size` must split evenly over the {len(devices)} "
            "devices of `distribution: data_parallel`. "
            f"Received: train.batch_size={batch_size}"
        )
    return keras.distribution.DataParallel(devices=devices)


def check_distribution(config):
    """Fails fast where `config.distribution` cannot run (see
    `make_distribution`); the batch may be cut to the training set's size
    later, which is checked again then."""
    from kpool.harness.config import ConfigError

    try:
        make_distribution(config.distribution, config.train.batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _scope(distribution):
    return (
        contextlib.nullcontext()
        if distribution is None
        else (distribution.scope())
    )


def _divisible(batches, devices):
    """`batches` without the last `n % devices` indices: each batch then
    splits evenly over the devices (the per-epoch test accuracy of a
    distributed run leaves out fewer than `devices` test images)."""
    indices = np.concatenate(batches)
    keep = len(indices) - len(indices) % devices
    batch_size = max(devices, len(batches[0]) // devices * devices)
    return [
        indices[start : min(start + batch_size, keep)]
        for start in range(0, keep, batch_size)
    ]


def epoch_orders(seed, num_examples, batch_size, epochs):
    """Indices of every training batch: `(epochs, steps, batch_size)`.

    Epoch `e` is `default_rng((seed, e)).permutation(num_examples)`, with the
    examples that do not fill a last batch left out of that epoch.
    """
    steps = num_examples // batch_size
    return np.stack(
        [
            np.random.default_rng((seed, epoch))
            .permutation(num_examples)[: steps * batch_size]
            .reshape(steps, batch_size)
            for epoch in range(epochs)
        ]
    ).astype("int32")


def sequential_batches(num_examples, batch_size):
    """Indices of the batches of one in-order pass (the last may be
    smaller)."""
    return [
        np.arange(start, min(start + batch_size, num_examples), dtype="int32")
        for start in range(0, num_examples, batch_size)
    ]


def device_batches(images, labels, batches):
    """Batches `(float32 images, int32 labels)` gathered by index.

    `batches` is a sequence of index arrays, or an array
    `(epochs, steps, batch)` of the training order: then the result is one
    stream of `epochs * steps` batches for a single `fit` with
    `steps_per_epoch=steps`.
    """
    if keras.backend.backend() == "tensorflow":
        return _tf_batches(images, labels, batches)
    return DeviceBatches(images, labels, batches)


class DeviceBatches(keras.utils.PyDataset):
    """A `PyDataset` whose images and labels live on the device.

    The uint8 images are copied to the device once. Batch `i` is gathered
    from them there and cast to float32, so the host moves only the batch's
    indices.
    """

    def __init__(self, images, labels, batches):
        super().__init__()
        self.images = ops.convert_to_tensor(images)
        self.labels = ops.convert_to_tensor(np.asarray(labels, "int32"))
        self.batches = batches

    @property
    def num_batches(self):
        return len(self.batches) if isinstance(self.batches, list) else None

    def __getitem__(self, index):
        if isinstance(self.batches, list):
            indices = self.batches[index]
        else:
            epochs, steps = self.batches.shape[:2]
            # Modulo: a prefetching consumer may read past the last epoch.
            epoch, step = divmod(index, steps)
            indices = self.batches[epoch % epochs, step]
        images = ops.take(self.images, indices, axis=0)
        return ops.cast(images, "float32"), ops.take(self.labels, indices)


def _tf_batches(images, labels, batches):
    """The same batches as `DeviceBatches`, as a tf.data pipeline (a
    `PyDataset` on TensorFlow would pass every batch through Python)."""
    import tensorflow as tf

    # `from_tensors(...).repeat()` hands the arrays to every map call
    # without embedding them in the graph as constants.
    data = tf.data.Dataset.from_tensors(
        (images, np.asarray(labels, "int32"))
    ).repeat()
    if isinstance(batches, list):
        index = tf.data.Dataset.from_generator(
            lambda: iter(batches),
            output_signature=tf.TensorSpec([None], tf.int32),
        ).apply(tf.data.experimental.assert_cardinality(len(batches)))
    else:
        index = tf.data.Dataset.from_tensor_slices(
            batches.reshape(-1, batches.shape[-1])
        )

    def gather(indices, arrays):
        x, y = arrays
        return tf.cast(tf.gather(x, indices), tf.float32), tf.gather(y, indices)

    return (
        tf.data.Dataset.zip((index, data))
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


class TrainTimer(keras.callbacks.Callback):
    """Times `fit`'s training steps, synchronised, outside evaluation.

    A window opens at the start of each epoch (in the first epoch, before
    step `warmup_steps`, leaving compilation out; not at all if the epoch
    has no more steps) and closes when the epoch's training steps end, when
    validation begins. The device is synchronised at both ends. Only
    `*_batch_begin` hooks are used, so Keras keeps dispatching batches
    asynchronously as in a bare `fit`.
    """

    def __init__(self, steps_per_epoch, batch_size, warmup_steps=None):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        if warmup_steps is None:
            warmup_steps = max(2, steps_per_epoch // 10)
        self.warmup_steps = warmup_steps
        self.epochs = []
        self._window = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._window = None
        self._recorded = False
        if epoch > 0:
            self._open(0)

    def on_train_batch_begin(self, batch, logs=None):
        if not self.epochs and batch == self.warmup_steps:
            self._open(batch)

    def on_test_begin(self, logs=None):
        self._close()

    def on_epoch_end(self, epoch, logs=None):
        # Closes the window of an epoch without validation.
        self._close()

    def _open(self, first_step):
        synchronize(self.model)
        self._window = (first_step, time.perf_counter())

    def _close(self):
        if self._recorded:
            return
        self._recorded = True
        synchronize(self.model)
        end = time.perf_counter()
        record = {"epoch_seconds": end - self._epoch_start}
        if self._window is None:
            record.update(timed_steps=0, timed_seconds=0.0)
            record["train_images_per_sec"] = math.nan
        else:
            first_step, start = self._window
            steps = self.steps_per_epoch - first_step
            record.update(timed_steps=steps, timed_seconds=end - start)
            record["train_images_per_sec"] = (
                steps * self.batch_size / (end - start)
            )
        self.epochs.append(record)

    def images_per_sec(self):
        """The median over epochs of each timed window's rate.

        A median, not the total over all windows: on a shared machine an
        epoch now and then runs much slower (seen here: 1,110 and 1,330
        images/s among epochs of ~1,850), and a total would carry it into
        the run's speed. NaN when nothing was timed.
        """
        rates = [
            e["train_images_per_sec"] for e in self.epochs if e["timed_steps"]
        ]
        return float(np.median(rates)) if rates else math.nan


def synchronize(model):
    """Waits until the device has finished the model's queued steps."""
    # During a JAX epoch the training state lives in `_jax_state`, off the
    # model's variables.
    state = getattr(model, "_jax_state", None)
    if state:
        import jax

        # Layer attributes are tracked containers, opaque to JAX's pytrees.
        jax.block_until_ready(keras.tree.flatten(state))
    else:
        ops.convert_to_numpy(model.optimizer.iterations)


class LearningRateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then a constant, cosine, step or one-cycle rate.

    With `s` the step, `W` the warmup steps and `T` the total steps, the rate
    is `learning_rate * min(1, (s + 1) / W) * f(s)` where, with
    `p = clip((s - W) / (T - W), 0, 1)`:

    - "constant": `f = 1`;
    - "cosine": `f = (1 + cos(pi * p)) / 2`;
    - "step": `f = decay_factor ** (number of boundaries <= s)`;
    - "onecycle": `f = 1 - p`, a linear decay to zero after the linear
      warmup (Smith & Topin, 2019, with the rise given by `W`).
    """

    def __init__(
        self,
        name,
        learning_rate,
        total_steps,
        warmup_steps=0,
        boundaries=(),
        decay_factor=0.1,
    ):
        names = ("constant", "cosine", "step", "onecycle")
        if name not in names:
            raise ValueError(
                f"`train.schedule.name` must be one of {list(names)}. "
                f"Received: train.schedule.name={name!r}"
            )
        self.name = name
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.boundaries = tuple(boundaries)
        self.decay_factor = decay_factor

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(self.learning_rate, "float32")
        if self.warmup_steps:
            rate = rate * ops.minimum(1.0, (step + 1.0) / self.warmup_steps)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0, 1)
        if self.name == "cosine":
            rate = rate * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.name == "onecycle":
            rate = rate * (1.0 - progress)
        elif self.name == "step":
            for boundary in self.boundaries:
                rate = ops.where(
                    step >= boundary, rate * self.decay_factor, rate
                )
        return rate

    def get_config(self):
        return {
            "name": self.name,
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "boundaries": self.boundaries,
            "decay_factor": self.decay_factor,
        }


class _L2Gradient:
    """Adds `l2 * w` to the gradient of each decayed weight `w`."""

    def __init__(self, *args, l2=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.l2 = l2

    def _backend_apply_gradients(self, grads, trainable_variables):
        grads = [
            g + self.l2 * ops.cast(v, g.dtype)
            if g is not None and self._use_weight_decay(v)
            else g
            for g, v in zip(grads, trainable_variables, strict=True)
        ]
        return super()._backend_apply_gradients(grads, trainable_variables)


class _L2SGD(_L2Gradient, keras.optimizers.SGD):
    pass


class _L2Adam(_L2Gradient, keras.optimizers.Adam):
    pass


def make_optimizer(optimizer_config, learning_rate, model):
    """The config's optimizer, decaying only the conv and dense kernels of
    `model`."""
    name = optimizer_config.name
    decay = optimizer_config.weight_decay
    if name == "sgd":
        optimizer = _L2SGD(
            learning_rate=learning_rate,
            momentum=optimizer_config.momentum,
            nesterov=optimizer_config.nesterov,
            l2=decay,
            name="sgd",
        )
    elif name == "adam":
        optimizer = _L2Adam(learning_rate=learning_rate, l2=decay, name="adam")
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=decay
        )
    else:
        raise ValueError(
            "`train.optimizer.name` must be one of ['sgd', 'adam', 'adamw']. "
            f"Received: train.optimizer.name={name!r}"
        )
    kernels = {
        id(layer.kernel)
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    }
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in model.trainable_variables if id(v) not in kernels]
    )
    return optimizer


def _loss(label_smoothing, num_classes):
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def smoothed_cross_entropy(labels, logits):
        labels = ops.one_hot(ops.reshape(labels, (-1,)), num_classes)
        return keras.losses.categorical_crossentropy(
            labels, logits, from_logits=True, label_smoothing=label_smoothing
        )

    return smoothed_cross_entropy


def _count_train_step_traces(model):
    """Counts how often `fit` traces (and so compiles) the train step.

    Returns a one-element list updated in place, or None where the train
    step runs eagerly (its Python body then runs every step).
    """
    backend = keras.backend.backend()
    compiled = backend == "tensorflow" or (
        backend == "jax" and model.jit_compile
    )
    if not compiled or model.run_eagerly:
        return None
    traces = [0]
    train_step = model.train_step

    def counted_train_step(*args, **kwargs):
        traces[0] += 1
        return train_step(*args, **kwargs)

    model.train_step = counted_train_step
    return traces


def _train_eval_accuracy(model, dataset, seed, batch_size):
    """Accuracy in inference mode on a fixed subset of the training set.

    The subset has as many images as the test set (all of CIFAR-10's 10,000
    for a full run), so the two accuracies of `overfit_gap` are equally
    precise and the pass costs no more than one test evaluation.
    """
    n = len(dataset.x_train)
    size = min(n, len(dataset.x_test))
    subset = np.arange(n)
    if n > size:
        subset = np.sort(np.random.default_rng(seed).choice(n, size, False))
    data = device_batches(
        dataset.x_train[subset],
        dataset.y_train[subset],
        sequential_batches(len(subset), batch_size),
    )
    return float(model.evaluate(data, verbose=0)[1])


def _model_metrics(model, dataset, config):
    from kpool.harness import metrics

    values = {
        "receptive_field": metrics.receptive_field(model),
        "flops_per_image": metrics.flops_per_image(model),
    }
    if config.eval.shift_metrics:
        values.update(
            metrics.invariance_metrics(
                model,
                dataset.x_test,
                dataset.y_test,
                seed=config.eval.seed,
                max_images=config.eval.max_images,
                batch_size=config.eval.batch_size,
            )
        )
    return values


def _enable_determinism():
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        # cuBLAS reads this when it starts; set it in case it has not.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        import torch

        torch.use_deterministic_algorithms(True)
    else:
        import jax

        flags = os.environ.get("XLA_FLAGS", "")
        if (
            jax.default_backend() == "gpu"
            and "--xla_gpu_deterministic_ops=true" not in flags
        ):
            warnings.warn(
                "config.deterministic is set but JAX on a GPU is only "
                "deterministic with XLA_FLAGS=--xla_gpu_deterministic_ops=true "
                "set before the process starts.",
                stacklevel=3,
            )
