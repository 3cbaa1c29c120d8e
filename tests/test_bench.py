"""Smoke tests of the benchmark helpers and scripts, on tiny shapes.

They check that every function runs on this backend and that the tables
carry the columns and values the scripts promise, not how fast anything is.
"""

import csv
import os
import runpy
import subprocess
import sys
import types

import keras
import numpy as np
import pytest

from kpool import bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Makes `import tensorflow` fail, as on a machine without it. (Setting
# `sys.modules["tensorflow"] = None` would not do: Keras reads a name in
# `sys.modules` as a sign that TensorFlow is in use.)
BLOCK_TENSORFLOW = """
import sys

class BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ImportError("tensorflow is blocked")

sys.meta_path.insert(0, BlockTensorFlow())
"""


def load_script(name):
    return runpy.run_path(os.path.join(REPO, "experiments", name))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_time_interleaved_warms_up_then_rotates_the_order():
    calls = []
    candidates = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    times = bench.time_interleaved(candidates, repeats=3, warmup=2)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: len(t) for name, t in times.items()} == dict.fromkeys(
        "abc", 3
    )
    assert all(t >= 0 for seconds in times.values() for t in seconds)


def test_median_ms():
    assert bench.median_ms([0.003, 0.001, 0.002]) == pytest.approx(2.0)
    assert bench.median_ms([0.001, 0.004]) == pytest.approx(2.5)


def test_pooling_bytes_counts_three_inputs_and_two_outputs():
    # 2x8x8x3 in, 2x4x4x3 out: 384 and 96 elements.
    assert bench.pooling_bytes((2, 8, 8, 3), (2, 4, 4, 3), "float32") == 4 * (
        3 * 384 + 2 * 96
    )
    assert bench.pooling_bytes((2, 8, 8, 3), (2, 4, 4, 3), "bfloat16") == 2 * (
        3 * 384 + 2 * 96
    )


def test_unknown_compile_mode_names_the_allowed_ones():
    allowed = list(bench.COMPILE_MODES[keras.backend.backend()])
    with pytest.raises(ValueError, match="`compile_mode` must be one of") as e:
        bench.compile_function(lambda x: x, "fastest")
    assert str(allowed) in str(e.value)


def test_default_compile_mode_is_what_keras_auto_resolves_to():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse", jit_compile="auto")
    compiled = bench.default_compile_mode() not in ("graph", "eager")
    assert model.jit_compile == compiled


def test_layer_step_runs_forward_and_backward():
    # Distinct inputs: each 2x2 window has one maximum, which alone gets the
    # (random, non-zero) output gradient of its window.
    x = np.random.default_rng(0).permutation(96).reshape(2, 4, 4, 3)
    x = x.astype("float32")
    step = bench.layer_step(
        keras.layers.MaxPooling2D(2),
        keras.ops.convert_to_tensor(x),
        training=True,
        compile_mode=bench.default_compile_mode(),
    )
    outputs, grads = step()
    windows = x.reshape(2, 2, 2, 2, 2, 3).transpose(0, 1, 3, 5, 2, 4)
    windows = windows.reshape(2, 2, 2, 3, 4)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(outputs), windows.max(-1)
    )
    assert len(grads) == 1
    input_grad = keras.ops.convert_to_numpy(grads[0])
    is_max = x == np.repeat(np.repeat(windows.max(-1), 2, 1), 2, 2)
    assert np.all((input_grad != 0) == is_max)


def test_layer_step_returns_weight_gradients_and_advances_the_seed():
    inputs = keras.random.uniform((2, 8, 8, 3), seed=0)
    mode = bench.default_compile_mode()
    learned = bench.make_layer("MixedPooling2D", "learned", pool_size=2)
    _, grads = bench.layer_step(
        learned, inputs, training=True, compile_mode=mode
    )()
    assert [tuple(g.shape) for g in grads] == [(2, 8, 8, 3), ()]

    stochastic = bench.make_layer(
        "StochasticPooling2D", "training", pool_size=2
    )
    step = bench.layer_step(
        stochastic, inputs, training=True, compile_mode=mode
    )
    first, _ = step()
    second, _ = step()
    assert not np.array_equal(
        keras.ops.convert_to_numpy(first), keras.ops.convert_to_numpy(second)
    )


def test_format_table_aligns_columns():
    rows = [{"a": 1, "b": "xyz"}, {"a": 22, "b": "w"}]
    assert bench.format_table(rows, ["a", "b"]).splitlines() == [
        "a   b  ",
        "1   xyz",
        "22  w  ",
    ]


def test_write_csv_round_trips(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    bench.write_csv([{"x": 1, "y": "a"}, {"x": 2, "y": "b"}], str(path))
    assert read_csv(path) == [{"x": "1", "y": "a"}, {"x": "2", "y": "b"}]
    assert os.listdir(path.parent) == ["table.csv"]


def run_bench_layers(output_dir, *args):
    """Runs bench_layers.py quickly in the default compile mode."""
    load_script("bench_layers.py")["main"](
        ["--quick", *args, "--compile-modes", bench.default_compile_mode()]
        + ["--output-dir", str(output_dir)]
    )
    return keras.backend.backend()


def test_bench_layers_script_writes_every_case_with_its_ratio(tmp_path):
    backend = run_bench_layers(tmp_path, "--model-fit")
    rows = read_csv(tmp_path / f"layers_{backend}.csv")
    cases = {(layer, mode) for layer, mode, _ in bench.LAYER_CASES}
    assert {(r["layer"], r["mode_phase"]) for r in rows} == cases
    assert {r["pool"] for r in rows} == {"2x2/s2/valid", "3x3/s2/valid"}
    for row in rows:
        assert row["backend"] == backend
        assert row["compile_mode"] == bench.default_compile_mode()
        assert row["dtype"] == "float32"
        assert row["device"] and row["machine"] and row["date"]
        ratio = float(row["median_ms"]) / float(row["maxpool_median_ms"])
        assert float(row["ratio"]) == pytest.approx(ratio, rel=1e-2)
        goal = float(row["goal_ratio"])
        assert row["meets_goal"] == str(float(row["ratio"]) <= goal)

    rows = read_csv(tmp_path / f"model_fit_{backend}.csv")
    training_cases = {
        (layer, mode) for layer, mode, t in bench.LAYER_CASES if t
    }
    assert {(r["layer"], r["mode_phase"]) for r in rows} == training_cases
    for row in rows:
        step_ratio = float(row["median_ms_per_step"]) / float(
            row["maxpool_median_ms_per_step"]
        )
        assert float(row["ratio"]) == pytest.approx(step_ratio, rel=1e-2)


def test_summarize_runs_takes_each_cases_median_ratio_over_runs():
    ratios = {
        ("MinPooling2D", ""): [1.7, 1.4, 1.6],
        ("MixedPooling2D", "learned"): [3.0, 1.0, 2.0],
    }
    kept = {
        "default_compile_mode": True,
        "batch_shape": "4x8x8x4",
        "repeats": 2,
        "dtype": "float32",
        **bench.environment(),
    }
    del kept["date"]
    rows = [
        {
            "run": run,
            "layer": layer,
            "mode_phase": mode,
            "pool": "2x2/s2/valid",
            "compile_mode": "graph",
            "median_ms": 10.0 * ratio,
            "maxpool_median_ms": 10.0,
            "ratio": ratio,
            "goal_ratio": bench.RATIO_GOALS[layer, mode],
            "date": f"2026-11-21T09:0{run}:00",
            **kept,
        }
        for run in range(3)
        for (layer, mode), case_ratios in ratios.items()
        for ratio in [case_ratios[run]]
    ]
    summary = bench.summarize_runs(rows)
    assert [(r["layer"], r["mode_phase"]) for r in summary] == list(ratios)
    for row in summary:
        case_ratios = ratios[row["layer"], row["mode_phase"]]
        assert row["runs"] == 3
        assert row["ratio"] == pytest.approx(np.median(case_ratios))
        assert row["ratio_min"] == min(case_ratios)
        assert row["ratio_max"] == max(case_ratios)
        assert row["median_ms"] == pytest.approx(10 * np.median(case_ratios))
        median = np.median(case_ratios)
        assert row["meets_goal"] == (median <= row["goal_ratio"])
        assert {k: row[k] for k in kept} == kept
        assert row["first_date"] == "2026-11-21T09:00:00"
        assert row["last_date"] == "2026-11-21T09:02:00"
    # 1.6 > 1.5 misses; 2.0 <= 2.5 meets: the median decides, not any run.
    assert [r["meets_goal"] for r in summary] == [False, True]


def test_bench_layers_script_summarises_fresh_process_runs(tmp_path):
    backend = run_bench_layers(tmp_path, "--runs", "2")
    rows = read_csv(tmp_path / f"layers_{backend}.csv")
    summary = read_csv(tmp_path / f"layers_{backend}_summary.csv")
    cases = [(layer, mode) for layer, mode, _ in bench.LAYER_CASES]
    pools = ["2x2/s2/valid", "3x3/s2/valid"]
    assert [(r["layer"], r["mode_phase"], r["pool"]) for r in summary] == [
        (*case, pool) for pool in pools for case in cases
    ]
    for row in summary:
        runs = [
            r
            for r in rows
            if (r["layer"], r["mode_phase"], r["pool"])
            == (row["layer"], row["mode_phase"], row["pool"])
        ]
        assert sorted(r["run"] for r in runs) == ["0", "1"]
        ratio = np.median([float(r["ratio"]) for r in runs])
        assert row["runs"] == "2"
        assert float(row["ratio"]) == pytest.approx(ratio, abs=1e-3)


def test_bench_layers_script_rejects_zero_runs():
    main = load_script("bench_layers.py")["main"]
    with pytest.raises(SystemExit):
        main(["--runs", "0"])


def test_step_clock_times_steps_between_batch_ends(monkeypatch):
    clock = bench.StepClock()
    for ends in ([10.0, 10.5, 11.25, 11.5], [20.0]):
        clock_module = types.SimpleNamespace(perf_counter=iter(ends).__next__)
        monkeypatch.setattr(bench, "time", clock_module)
        clock.on_train_begin()
        for batch in range(len(ends)):
            clock.on_train_batch_end(batch)
        clock.on_train_end()
    # Three steps in 1.5 s after the first; a one-step call has no steady
    # step to time.
    assert clock.step_seconds[0] == pytest.approx(0.5)
    assert np.isnan(clock.step_seconds[1])


def test_step_clock_sees_every_step_of_fit():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    clock = bench.StepClock()
    x = np.zeros((12, 2), "float32")
    y = np.zeros((12, 1), "float32")
    for _ in range(2):
        model.fit(x, y, batch_size=3, verbose=0, callbacks=[clock])
    assert len(clock.step_seconds) == 2
    assert all(0 < s < 60 for s in clock.step_seconds)


def test_conv_model_uses_the_given_pooling_twice():
    model = bench.conv_model(
        lambda: bench.make_layer("MinPooling2D", "", pool_size=2)
    )
    pools = [layer for layer in model.layers if "min_pooling" in layer.name]
    assert len(pools) == 2
    assert model.output_shape == (None, 10)
    x = np.zeros((1, 32, 32, 3), "float32")
    assert model(x).shape == (1, 10)


@pytest.mark.slow
def test_bench_gpu_script_runs_end_to_end_without_tensorflow(tmp_path):
    # The GPU machine runs JAX without TensorFlow: under JAX the script runs
    # with `import tensorflow` made to fail, and must not import it. (Torch
    # itself probes for TensorFlow's module spec, so it is not blocked there.)
    config = tmp_path / "ablation.yaml"
    config.write_text(
        "name: ablation\n"
        "model: {family: small_cnn}\n"
        "downsampling: [max, mixed]\n"
        "seeds: [0, 1]\n"
        "train: {epochs: 5}\n"
    )
    output_dir = tmp_path / "out"
    backend = keras.backend.backend()
    args = [
        "--quick",
        "--families",
        "small_cnn",
        "--choices",
        "max",
        "mixed",
        "--config",
        str(config),
        "--output-dir",
        str(output_dir),
    ]
    script = os.path.join(REPO, "experiments", "bench_gpu.py")
    code = BLOCK_TENSORFLOW if backend == "jax" else ""
    code += f"""
import runpy, sys
sys.argv = ["bench_gpu.py", *{args!r}]
runpy.run_path({script!r}, run_name="__main__")
assert {backend!r} != "jax" or "tensorflow" not in sys.modules
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(output_dir)) == [
        "layers.csv",
        "projection.csv",
        "throughput.png",
        "training.csv",
    ]

    layers = read_csv(output_dir / "layers.csv")
    assert len(layers) == len(bench.LAYER_CASES)
    for row in layers:
        assert row["dataset"] == "synthetic" and row["backend"] == backend
        achieved = int(row["min_bytes"]) / float(row["median_ms"]) / 1e6
        assert float(row["achieved_gb_per_sec"]) == pytest.approx(
            achieved, rel=0.05, abs=0.01
        )
        fraction = float(row["achieved_gb_per_sec"]) / float(
            row["copy_gb_per_sec"]
        )
        assert float(row["fraction_of_copy"]) == pytest.approx(
            fraction, rel=0.05, abs=0.01
        )

    training = {
        r["downsampling"]: r for r in read_csv(output_dir / "training.csv")
    }
    assert set(training) == {"max", "mixed"}
    assert float(training["max"]["epoch_time_vs_max"]) == 1.0
    for row in training.values():
        assert row["model"] == "small_cnn" and row["device"] == "cpu"
        assert row["dataset"] == "synthetic" and row["precision"]
        assert int(row["n_train"]) == 256 and int(row["epochs"]) == 2
        images_per_sec = float(row["train_images_per_sec"])
        assert images_per_sec > 0
        tflops = 6 * int(row["forward_macs_per_image"]) * images_per_sec / 1e12
        assert float(row["train_tflops"]) == pytest.approx(tflops, abs=1e-3)
        # No peak is known for a CPU.
        assert row["fraction_of_peak"] == "nan"

    projection = read_csv(output_dir / "projection.csv")
    assert [r["downsampling"] for r in projection] == ["max", "mixed"]
    for row in projection:
        run = training[row["downsampling"]]
        run_seconds = (
            float(run["train_seconds"])
            + float(run["eval_seconds"])
            + 3
            * (
                float(run["epoch_seconds"])
                + float(run["validation_seconds_per_epoch"])
            )
        )
        assert float(row["projected_run_seconds"]) == pytest.approx(
            run_seconds, abs=0.1
        )
        # Two seeds.
        assert float(row["projected_seconds"]) == pytest.approx(
            2 * run_seconds, abs=0.2
        )
