"""Times kpool's ops against what users would otherwise call: their peers.

Each op of `kpool.ops` runs beside the formula or library op its users
reach for instead (`PEERS` names them per backend), on the same float32
input, forward plus backward (`fwd+bwd`: the outputs and the gradient
with respect to the input, for a fixed random output gradient; both are
returned, as in a training step, where the outputs feed the next layer:
asked for the gradient alone, TensorFlow's graph and XLA drop the forward
ops the gradient does not need) and forward only (`fwd`; on
torch under `torch.no_grad()`), in the backend's default compile mode
(torch eager, TensorFlow graph, JAX jit). On torch the batch is NCHW and
kpool gets `data_format="channels_first"`; on TensorFlow and JAX it is
NHWC (their CPU poolings' layout). Before timing, each pair is run once
and its outputs compared: `values_match` says whether the peer computes
kpool's values (`"shape"` where the peer draws its own random regions, so
only the shapes can agree).

A time is the median of `--repeats` rounds after `--warmup` untimed calls,
kpool and its peer interleaved round by round in one process
(`bench.time_interleaved`), so the ratio `kpool / peer` is taken under the
same load. The goal (issue 20) is a ratio of at most 1.2 for every op,
both passes, at batch 32-128, 32-256 channels, 8x8 to 64x64 (`SIZES`);
SoftPool, overflow-safe against the unsafe formula, 1.5 (`GOAL_RATIOS`).

Timings mean something only on a quiet machine: the script reads the
1-minute load average before, refuses to start above `QUIET_LOAD` (unless
`--allow-loaded`), measures the CPU other processes use while it runs
(`others_cpu_cores`; the load average after counts the benchmark's own
threads) and records `quiet=False` in every row when the load before was
above `QUIET_LOAD` or the others used more than
`bench.QUIET_OTHERS_CORES`.
`--smoke` runs one tiny size with few rounds, only to check that
everything runs (it never refuses).

    KERAS_BACKEND=torch python experiments/bench_peers.py

Writes `<backend>.csv` under `--output-dir` (default results/peers/), one
row per op, size and passes, with the machine, load averages, library
versions, git commit and date in columns.
"""

import argparse
import dataclasses
import datetime
import importlib.metadata
import math
import os
import platform

import bench
import keras
import numpy as np

import kpool
from kpool.harness.environment import environment

QUIET_LOAD = 1.5
GOAL_RATIO = 1.2
# Issue 20's exceptions: SoftPool keeps its overflow-safe form (the window
# maximum subtracted before the exponential), held to 1.5x the unsafe
# formula its peers compute.
GOAL_RATIOS = {"soft_pool": 1.5}
# (batch, channels, height, width), laid out per backend.
SIZES = (
    (32, 64, 32, 32),
    (128, 32, 64, 64),
    (64, 256, 8, 8),
    (32, 128, 16, 16),
)
SMOKE_SIZE = (2, 4, 8, 8)
# Graham's ratio: the fractional pooling's output is int(n / sqrt(2)).
FRACTIONAL_RATIO = 1 / math.sqrt(2)
DATA_FORMATS = {
    "torch": "channels_first",
    "tensorflow": "channels_last",
    "jax": "channels_last",
}
LIBRARIES = ("keras", "torch", "tensorflow", "jax", "jaxlib", "kornia", "numpy")
TABLE_COLUMNS = (
    "op",
    "setting",
    "peer",
    "batch_shape",
    "passes",
    "kpool_median_ms",
    "peer_median_ms",
    "ratio",
    "meets_goal",
    "values_match",
)


@dataclasses.dataclass(frozen=True)
class PeerCase:
    """kpool's `op` (run as `kpool`) and its `peer` (run as `peer_call`).

    Both take the input batch and return one tensor. `same_values` is
    False where the peer draws its own random regions, so that only the
    output shapes can agree.
    """

    op: str
    setting: str
    peer: str
    kpool: object
    peer_call: object
    same_values: bool = True


def kpool_ops(shape, data_format, samples):
    """`{op: (setting, function)}`: kpool's side of every case, for inputs
    of `shape` (batch, channels, height, width) in `data_format`."""
    ops = kpool.ops
    df = data_format
    size = fractional_output_size(shape)
    tensorflow = keras.backend.backend() == "tensorflow"

    def argmax_unpool(x):
        values, indices = ops.max_pool_with_argmax(x, 2, 2, data_format=df)
        return ops.max_unpool(values, indices, 2, data_format=df)

    return {
        "min_pool": ("2x2/s2", lambda x: ops.min_pool(x, 2, 2, data_format=df)),
        "mixed_pool": (
            "2x2/s2 alpha=0.5 inference",
            lambda x: ops.mixed_pool(x, 2, 2, data_format=df, alpha=0.5),
        ),
        "median_pool": (
            "3x3/s2",
            lambda x: ops.median_pool(x, 3, 2, data_format=df),
        ),
        "max_blur_pool": (
            "max 2x2/s1, filter 3/s2, zero padding",
            lambda x: ops.max_blur_pool(
                x, 2, 2, 3, padding_mode="zero", data_format=df
            ),
        ),
        "spatial_pyramid_pool": (
            "bins 1,2,4 max",
            lambda x: ops.spatial_pyramid_pool(x, [1, 2, 4], data_format=df),
        ),
        "stochastic_pool": (
            "2x2/s2 inference",
            lambda x: ops.stochastic_pool(x, 2, 2, data_format=df),
        ),
        "lp_pool": (
            "p=2 3x3/s2",
            lambda x: ops.lp_pool(x, 2, 3, 2, data_format=df),
        ),
        "global_gem_pool": (
            "p=3 eps=1e-6",
            lambda x: ops.global_gem_pool(x, 3.0, 1e-6, data_format=df),
        ),
        "soft_pool": (
            "2x2/s2",
            lambda x: ops.soft_pool(x, 2, 2, data_format=df),
        ),
        "max_pool_with_argmax+max_unpool": ("2x2/s2", argmax_unpool),
        "blur_pool": (
            "filter 3/s2, zero padding",
            lambda x: ops.blur_pool(x, 3, 2, "zero", df),
        ),
        "fractional_max_pool": (
            f"output {size[0]}x{size[1]}"
            + (", one sequence per batch" if tensorflow else ""),
            lambda x: ops.fractional_max_pool(
                x,
                output_size=size,
                pool_size=None if tensorflow else 2,
                # tf.nn.fractional_max_pool draws one sequence of rows and
                # one of columns for the whole batch; torch's, one per
                # example and channel.
                samples=samples[:1, :1] if tensorflow else samples,
                data_format=df,
            ),
        ),
    }


def fractional_output_size(shape):
    return tuple(int(n * FRACTIONAL_RATIO) for n in shape[2:])


def torch_peers(shape, samples):
    """`{op: (peer, function)}` on NCHW torch tensors."""
    import torch
    import torch.nn.functional as F

    size = fractional_output_size(shape)
    # kpool's samples list the spatial dims in order; torch's, width first.
    # On Keras's device, as the batch is (a GPU where there is one).
    torch_samples = torch.flip(keras.ops.convert_to_tensor(samples), dims=[-1])

    def stochastic(x):
        a = F.relu(x)
        mean = F.avg_pool2d(a, 2)
        return F.avg_pool2d(a * a, 2) / torch.where(mean > 0, mean, 1)

    def median(x):
        # timm's MedianPool2d(3, stride=2): pad (none here), unfold, median.
        x = F.pad(x, (0, 0, 0, 0), mode="reflect")
        x = x.unfold(2, 3, 2).unfold(3, 3, 2)
        return x.contiguous().view(x.size()[:4] + (-1,)).median(dim=-1)[0]

    def gem(x):
        # Radenovic et al.'s GeM.
        pooled = F.avg_pool2d(x.clamp(min=1e-6).pow(3.0), x.shape[-2:])
        return pooled.pow(1.0 / 3.0).flatten(1)

    def soft(x):
        e = torch.exp(x)
        return F.avg_pool2d(e * x, 2) / F.avg_pool2d(e, 2)

    def argmax_unpool(x):
        values, indices = F.max_pool2d(x, 2, return_indices=True)
        return F.max_unpool2d(values, indices, 2)

    def pyramid(x):
        levels = [F.adaptive_max_pool2d(x, b).flatten(1) for b in (1, 2, 4)]
        return torch.cat(levels, 1)

    peers = {
        "min_pool": ("-F.max_pool2d(-x)", lambda x: -F.max_pool2d(-x, 2)),
        "mixed_pool": (
            "0.5*max_pool2d + 0.5*avg_pool2d",
            lambda x: 0.5 * F.max_pool2d(x, 2) + 0.5 * F.avg_pool2d(x, 2),
        ),
        "median_pool": ("timm MedianPool2d formula", median),
        "spatial_pyramid_pool": ("3x F.adaptive_max_pool2d", pyramid),
        "stochastic_pool": ("avg_pool2d(a*a) / avg_pool2d(a)", stochastic),
        "lp_pool": ("F.lp_pool2d", lambda x: F.lp_pool2d(x, 2, 3, 2)),
        "global_gem_pool": ("GeM formula (Radenovic)", gem),
        "soft_pool": ("avg_pool2d(e*x) / avg_pool2d(e)", soft),
        "max_pool_with_argmax+max_unpool": (
            "F.max_pool2d(return_indices) + F.max_unpool2d",
            argmax_unpool,
        ),
        "fractional_max_pool": (
            "F.fractional_max_pool2d",
            lambda x: F.fractional_max_pool2d(
                x, 2, output_size=size, _random_samples=torch_samples
            ),
        ),
    }
    try:
        from kornia import filters
    except ImportError:
        print("Skipping blur_pool and max_blur_pool: kornia is not installed")
        return peers
    peers["max_blur_pool"] = (
        "kornia max_blur_pool2d",
        lambda x: filters.max_blur_pool2d(x, 3),
    )
    peers["blur_pool"] = (
        "kornia blur_pool2d",
        lambda x: filters.blur_pool2d(x, 3),
    )
    return peers


def _binomial_kernel(channels, dtype="float32"):
    """The 3x3 binomial filter per channel, `(3, 3, channels, 1)`."""
    row = np.array([1.0, 2.0, 1.0]) / 4
    kernel = np.multiply.outer(row, row)[:, :, None, None]
    return np.broadcast_to(kernel, (3, 3, channels, 1)).astype(dtype)


def tensorflow_peers(shape, samples):
    """`{op: (peer, function)}` on NHWC TensorFlow tensors."""
    import tensorflow as tf

    height, width = shape[2:]
    kernel = tf.constant(_binomial_kernel(shape[1]))

    def blur(x):
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        return tf.nn.depthwise_conv2d(padded, kernel, [1, 2, 2, 1], "VALID")

    def median(x):
        patches = tf.image.extract_patches(
            x, [1, 3, 3, 1], [1, 2, 2, 1], [1, 1, 1, 1], "VALID"
        )
        patches = tf.reshape(patches, [*patches.shape[:3], 9, x.shape[-1]])
        return tf.sort(patches, axis=3)[:, :, :, 4]

    def pyramid(x):
        levels = []
        for b in (1, 2, 4):
            window = [height // b, width // b]
            pooled = tf.nn.max_pool2d(x, window, window, "VALID")
            levels.append(tf.reshape(pooled, [x.shape[0], -1]))
        return tf.concat(levels, 1)

    def stochastic(x):
        a = tf.nn.relu(x)
        mean = tf.nn.avg_pool2d(a, 2, 2, "VALID")
        denominator = tf.where(mean > 0, mean, tf.ones_like(mean))
        return tf.nn.avg_pool2d(a * a, 2, 2, "VALID") / denominator

    def argmax_unpool(x):
        # TensorFlow Addons' MaxUnpooling2D: a scatter at the flat argmax.
        values, argmax = tf.nn.max_pool_with_argmax(
            x, 2, 2, "VALID", include_batch_in_index=True
        )
        flat = tf.scatter_nd(
            tf.reshape(argmax, [-1, 1]),
            tf.reshape(values, [-1]),
            [math.prod(x.shape)],
        )
        return tf.reshape(flat, x.shape)

    def soft(x):
        e = tf.exp(x)
        pool = tf.nn.avg_pool2d
        return pool(e * x, 2, 2, "VALID") / pool(e, 2, 2, "VALID")

    return {
        "min_pool": (
            "-tf.nn.max_pool2d(-x)",
            lambda x: -tf.nn.max_pool2d(-x, 2, 2, "VALID"),
        ),
        "mixed_pool": (
            "0.5*max_pool2d + 0.5*avg_pool2d",
            lambda x: (
                0.5 * tf.nn.max_pool2d(x, 2, 2, "VALID")
                + 0.5 * tf.nn.avg_pool2d(x, 2, 2, "VALID")
            ),
        ),
        "median_pool": ("extract_patches + sort", median),
        "max_blur_pool": (
            "max_pool2d + depthwise_conv2d",
            lambda x: blur(tf.nn.max_pool2d(x, 2, 1, "VALID")),
        ),
        "spatial_pyramid_pool": ("3x tf.nn.max_pool2d", pyramid),
        "stochastic_pool": ("avg_pool2d(a*a) / avg_pool2d(a)", stochastic),
        "lp_pool": (
            "sqrt(9 * avg_pool2d(x*x))",
            lambda x: tf.sqrt(9.0 * tf.nn.avg_pool2d(x * x, 3, 2, "VALID")),
        ),
        "global_gem_pool": (
            "GeM formula (Radenovic)",
            lambda x: (
                tf.reduce_mean(tf.maximum(x, 1e-6) ** 3.0, [1, 2])
                ** (1.0 / 3.0)
            ),
        ),
        "soft_pool": ("avg_pool2d(e*x) / avg_pool2d(e)", soft),
        "max_pool_with_argmax+max_unpool": (
            "tf.nn.max_pool_with_argmax + scatter_nd",
            argmax_unpool,
        ),
        "blur_pool": ("depthwise_conv2d", blur),
        "fractional_max_pool": (
            "tf.nn.fractional_max_pool",
            lambda x: tf.nn.fractional_max_pool(
                x, [1.0, 1 / FRACTIONAL_RATIO, 1 / FRACTIONAL_RATIO, 1.0], True
            )[0],
        ),
    }


def jax_peers(shape, samples):
    """`{op: (peer, function)}` on NHWC JAX arrays: the formulas written
    with `jax.lax.reduce_window` (and convolutions, sorts and scatters
    where no reduction does). JAX has no fractional max pooling."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    height, width = shape[2:]
    # A grouped convolution's HWIO kernel: one input channel per group.
    kernel = jnp.asarray(_binomial_kernel(shape[1]).reshape(3, 3, 1, -1))

    def window_reduce(x, init, op, size, stride):
        return lax.reduce_window(
            x, init, op, (1, size, size, 1), (1, stride, stride, 1), "VALID"
        )

    def max_pool(x, size=2, stride=2):
        return window_reduce(x, -jnp.inf, lax.max, size, stride)

    def sum_pool(x, size=2, stride=2):
        return window_reduce(x, 0.0, lax.add, size, stride)

    def blur(x):
        return lax.conv_general_dilated(
            x,
            kernel,
            (2, 2),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
        )

    def median(x):
        out_h, out_w = (height - 3) // 2 + 1, (width - 3) // 2 + 1
        cells = [
            x[:, i : i + 2 * out_h - 1 : 2, j : j + 2 * out_w - 1 : 2]
            for i in range(3)
            for j in range(3)
        ]
        return jnp.median(jnp.stack(cells, axis=-1), axis=-1)

    def pyramid(x):
        levels = []
        for b in (1, 2, 4):
            pooled = lax.reduce_window(
                x,
                -jnp.inf,
                lax.max,
                (1, height // b, width // b, 1),
                (1, height // b, width // b, 1),
                "VALID",
            )
            levels.append(pooled.reshape(x.shape[0], -1))
        return jnp.concatenate(levels, axis=1)

    def stochastic(x):
        a = jax.nn.relu(x)
        total = sum_pool(a)
        return sum_pool(a * a) / jnp.where(total > 0, total, 1.0)

    def argmax_unpool(x):
        # Disjoint 2x2 windows: each window's argmax as a one-hot mask.
        b, h, w, c = x.shape
        cells = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(
            0, 1, 3, 5, 2, 4
        )
        cells = cells.reshape(b, h // 2, w // 2, c, 4)
        mask = jax.nn.one_hot(jnp.argmax(cells, axis=-1), 4, dtype=x.dtype)
        unpooled = mask * jnp.max(cells, axis=-1, keepdims=True)
        unpooled = unpooled.reshape(b, h // 2, w // 2, c, 2, 2)
        return unpooled.transpose(0, 1, 4, 2, 5, 3).reshape(x.shape)

    def soft(x):
        e = jnp.exp(x)
        return sum_pool(e * x) / sum_pool(e)

    return {
        "min_pool": ("-reduce_window max of -x", lambda x: -max_pool(-x)),
        "mixed_pool": (
            "0.5*max + 0.5*mean, reduce_window",
            lambda x: 0.5 * max_pool(x) + 0.5 * sum_pool(x) / 4,
        ),
        "median_pool": ("strided slices + jnp.median", median),
        "max_blur_pool": (
            "reduce_window max + grouped conv",
            lambda x: blur(max_pool(x, 2, 1)),
        ),
        "spatial_pyramid_pool": ("3x reduce_window max", pyramid),
        "stochastic_pool": ("sum(a*a) / sum(a), reduce_window", stochastic),
        "lp_pool": (
            "sqrt(reduce_window sum of x*x)",
            lambda x: jnp.sqrt(sum_pool(x * x, 3, 2)),
        ),
        "global_gem_pool": (
            "GeM formula (Radenovic)",
            lambda x: (
                jnp.mean(jnp.maximum(x, 1e-6) ** 3.0, axis=(1, 2))
                ** (1.0 / 3.0)
            ),
        ),
        "soft_pool": ("sum(e*x) / sum(e), reduce_window", soft),
        "max_pool_with_argmax+max_unpool": (
            "argmax one-hot of 2x2 cells",
            argmax_unpool,
        ),
        "blur_pool": ("grouped conv_general_dilated", blur),
    }


PEERS = {"torch": torch_peers, "tensorflow": tensorflow_peers, "jax": jax_peers}
# Peers that draw their own random regions: only shapes can agree.
RANDOM_PEERS = {"tensorflow": ("fractional_max_pool",)}


def peer_cases(shape, seed=0):
    """The `PeerCase`s of this backend for inputs of `shape` (batch,
    channels, height, width), in kpool's order."""
    backend = keras.backend.backend()
    data_format = DATA_FORMATS[backend]
    rng = np.random.default_rng(seed)
    samples = rng.uniform(0, 1, (*shape[:2], 2)).astype("float32")
    ours = kpool_ops(shape, data_format, samples)
    peers = PEERS[backend](shape, samples)
    for op in ours:
        if op not in peers:
            print(f"Skipping {op}: no {backend} peer")
    return [
        PeerCase(
            op,
            setting,
            peers[op][0],
            function,
            peers[op][1],
            op not in RANDOM_PEERS.get(backend, ()),
        )
        for op, (setting, function) in ours.items()
        if op in peers
    ]


def batch(shape, seed=0):
    """A float32 normal batch of `shape` (NCHW), in this backend's layout."""
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    if DATA_FORMATS[keras.backend.backend()] == "channels_last":
        x = np.moveaxis(x, 1, -1).copy()
    return keras.ops.convert_to_tensor(x)


def values_match(case, x, rtol=1e-4, atol=1e-5):
    """Whether the peer's output is kpool's (`"shape"`: only the shapes
    can be compared, and they agree; `False` otherwise)."""
    ours = np.asarray(keras.ops.convert_to_numpy(case.kpool(x)))
    theirs = np.asarray(keras.ops.convert_to_numpy(case.peer_call(x)))
    if ours.shape != theirs.shape:
        return False
    if not case.same_values:
        return "shape"
    return bool(np.allclose(ours, theirs, rtol=rtol, atol=atol))


def function_step(function, inputs, backward, compile_mode):
    """A callable that runs `function` on `inputs` forward (and backward,
    the gradient with respect to `inputs` for a fixed random output
    gradient), then synchronises."""
    backend = keras.backend.backend()
    compiled = bench.compile_function(function, compile_mode)
    if backend == "torch":
        import torch

        if not backward:

            def forward():
                with torch.no_grad():
                    outputs = compiled(inputs)
                bench.synchronize(outputs)

            return forward
        x = inputs.detach().requires_grad_()
        gradient = _output_gradient(function(inputs))

        def forward_backward():
            (grad,) = torch.autograd.grad(compiled(x), x, gradient)
            bench.synchronize(grad)

        return forward_backward
    if not backward:
        return lambda: bench.synchronize(compiled(inputs))
    gradient = _output_gradient(function(inputs))
    if backend == "jax":
        import jax

        def vjp(x, dy):
            outputs, pullback = jax.vjp(function, x)
            return outputs, pullback(dy)[0]

    else:
        import tensorflow as tf

        def vjp(x, dy):
            with tf.GradientTape() as tape:
                tape.watch(x)
                outputs = function(x)
            return outputs, tape.gradient(outputs, x, output_gradients=dy)

    step = bench.compile_function(vjp, compile_mode)
    return lambda: bench.synchronize(step(inputs, gradient))


def _output_gradient(outputs):
    return keras.random.normal(tuple(outputs.shape), seed=1)


def benchmark_peers(sizes=SIZES, repeats=30, warmup=5, ops=None):
    """One row per case, size and passes: kpool's and its peer's median
    times from interleaved rounds, and their ratio. `ops`: the op names to
    time (default all). Yields each size's rows when it is done."""
    compile_mode = bench.default_compile_mode()
    for shape in sizes:
        rows = []
        x = batch(shape)
        for case in peer_cases(shape):
            if ops is not None and case.op not in ops:
                continue
            match = values_match(case, x)
            for backward in (True, False):
                steps = {
                    "kpool": function_step(
                        case.kpool, x, backward, compile_mode
                    ),
                    "peer": function_step(
                        case.peer_call, x, backward, compile_mode
                    ),
                }
                times = bench.time_interleaved(
                    steps, repeats=repeats, warmup=warmup
                )
                kpool_ms = bench.median_ms(times["kpool"])
                peer_ms = bench.median_ms(times["peer"])
                # The verdict is the written ratio's.
                ratio = round(kpool_ms / peer_ms, 3)
                goal = GOAL_RATIOS.get(case.op, GOAL_RATIO)
                rows.append(
                    {
                        "op": case.op,
                        "setting": case.setting,
                        "peer": case.peer,
                        "data_format": DATA_FORMATS[keras.backend.backend()],
                        "batch_shape": "x".join(map(str, shape)),
                        "passes": "fwd+bwd" if backward else "fwd",
                        "compile_mode": compile_mode,
                        "kpool_median_ms": round(kpool_ms, 4),
                        "peer_median_ms": round(peer_ms, 4),
                        "ratio": ratio,
                        "goal_ratio": goal,
                        "meets_goal": ratio <= goal,
                        "values_match": match,
                        "repeats": repeats,
                        "warmup": warmup,
                        "dtype": "float32",
                    }
                )
        yield rows


def load_average():
    """The 1-minute load average."""
    return os.getloadavg()[0]


def library_versions(names=LIBRARIES):
    """`<name>_version` of each installed distribution, "" where absent."""
    versions = {}
    for name in names:
        try:
            versions[f"{name}_version"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[f"{name}_version"] = ""
    return versions


def run_columns(args, load_before, others):
    """The columns that say under what load, on what and from what code
    the rows were timed (up to now)."""
    others_cores = others.cores()
    return {
        "load_average_before": round(load_before, 2),
        # Includes the benchmark's own threads.
        "load_average_after": round(load_average(), 2),
        "others_cpu_cores": (
            "" if others_cores is None else round(others_cores, 3)
        ),
        "quiet": load_before <= QUIET_LOAD
        and (others_cores is None or others_cores <= bench.QUIET_OTHERS_CORES),
        "smoke": args.smoke,
        "python_version": platform.python_version(),
        **library_versions(),
        **bench.git_state(),
        **environment(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="results/peers")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--allow-loaded",
        action="store_true",
        help=f"run above a load average of {QUIET_LOAD} (rows say quiet=False)",
    )
    parser.add_argument(
        "--ops",
        type=lambda text: text.split(","),
        help="comma-separated op names: time only these, and replace "
        "their rows in the backend's CSV (the others are kept, each row "
        "with its own date, load and commit)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one tiny size, few rounds: checks that it runs, nothing more",
    )
    return parser.parse_args(argv)


def quiet_load_before(args):
    """The load average now; exits above `QUIET_LOAD` unless
    `args.allow_loaded` or `args.smoke`."""
    load_before = load_average()
    if load_before > QUIET_LOAD and not (args.allow_loaded or args.smoke):
        raise SystemExit(
            f"The load average is {load_before:.2f}, above {QUIET_LOAD}: "
            "timings would be off. Run on a quiet machine, or pass "
            "--allow-loaded to record them with quiet=False."
        )
    return load_before


def main(argv=None):
    args = parse_args(argv)
    backend = keras.backend.backend()
    load_before = quiet_load_before(args)
    sizes, repeats, warmup = SIZES, args.repeats, args.warmup
    if args.smoke:
        sizes, repeats, warmup = (SMOKE_SIZE,), 2, 1
    others = bench.OthersCpu()
    if args.ops is not None:
        known = {case.op for case in peer_cases(SMOKE_SIZE)}
        unknown = sorted(set(args.ops) - known)
        if unknown:
            raise SystemExit(
                f"--ops: unknown op(s) {', '.join(unknown)}; the ops are "
                f"{', '.join(sorted(known))}"
            )
    path = os.path.join(args.output_dir, f"{backend}.csv")
    rows, kept = [], None
    # Written after each size, so that a run stopped early (a time limit
    # on a lent GPU) keeps every size it finished.
    for size_rows in benchmark_peers(
        sizes, repeats=repeats, warmup=warmup, ops=args.ops
    ):
        run = run_columns(args, load_before, others)
        rows = [{**row, **run} for row in rows + size_rows]
        if kept is None:
            # Before the first write: the other ops' rows of an earlier
            # run, which --ops keeps.
            kept = []
            if args.ops is not None and os.path.exists(path):
                kept = bench.kept_rows(path, "op", args.ops, list(rows[0]))
        bench.write_csv(kept + rows, path)
    print(bench.format_table(rows, TABLE_COLUMNS))
    print(
        f"Wrote {path} ({run['machine']}, load average "
        f"{run['load_average_before']} before, "
        f"{run['load_average_after']} after with its own threads, other "
        f"processes {run['others_cpu_cores']} cores, quiet={run['quiet']})"
    )
    return rows


if __name__ == "__main__":
    main()
