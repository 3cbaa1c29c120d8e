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

import bench
import keras
import numpy as np
import pytest

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


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


def case(layer, mode=""):
    """The training fwd+bwd case of `bench.LAYER_CASES` for that layer."""
    return next(
        c
        for c in bench.LAYER_CASES
        if (c.layer, c.mode) == (layer, mode) and c.backward
    )


WINDOW = dict(pool_size=2, strides=2, padding="valid")


def test_layer_step_returns_weight_gradients_and_advances_the_seed():
    inputs = keras.random.uniform((2, 8, 8, 3), seed=0)
    mode = bench.default_compile_mode()
    learned, _ = bench.make_case(
        case("MixedPooling2D", "learned"), WINDOW, inputs
    )
    _, grads = bench.layer_step(
        learned, inputs, training=True, compile_mode=mode
    )()
    assert [tuple(g.shape) for g in grads] == [(2, 8, 8, 3), ()]

    stochastic, _ = bench.make_case(case("StochasticPooling2D"), WINDOW, inputs)
    step = bench.layer_step(
        stochastic, inputs, training=True, compile_mode=mode
    )
    first, _ = step()
    second, _ = step()
    assert not np.array_equal(
        keras.ops.convert_to_numpy(first), keras.ops.convert_to_numpy(second)
    )


def test_forward_only_step_is_the_inference_forward():
    inputs = keras.random.uniform((2, 8, 8, 3), seed=0)
    layer = keras.layers.MaxPooling2D(2)
    outputs, grads = bench.layer_step(
        layer,
        inputs,
        training=False,
        backward=False,
        compile_mode=bench.default_compile_mode(),
    )()
    assert grads == []
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(outputs),
        keras.ops.convert_to_numpy(layer(inputs)),
    )


def test_every_layer_is_timed_fwd_bwd_in_training_and_forward_in_inference():
    layers = {c.layer for c in bench.LAYER_CASES}
    for layer in layers:
        passes = {
            (c.phase, c.passes) for c in bench.LAYER_CASES if c.layer == layer
        }
        assert passes == {("training", "fwd+bwd"), ("inference", "fwd")}
    assert all(c.baseline in bench.BASELINES for c in bench.LAYER_CASES)
    assert all(c.window in bench.WINDOW_KINDS for c in bench.LAYER_CASES)
    keys = [c.key for c in bench.LAYER_CASES]
    assert len(keys) == len(set(keys))


def test_goals_are_the_issues():
    goals = {
        (c.layer, c.mode, c.phase): c.goal
        for c in bench.LAYER_CASES
        if c.goal is not None
    }
    assert goals == {
        ("MinPooling2D", "", "training"): 1.5,
        ("MinPooling2D", "", "inference"): 1.5,
        **{
            ("MixedPooling2D", mode, "training"): 2.5
            for mode in ("random", "learned", "gated")
        },
        ("MixedPooling2D", "random", "inference"): 1.5,
        ("MixedPooling2D", "learned", "inference"): 1.5,
        ("MixedPooling2D", "gated", "inference"): 2.0,
        ("StochasticPooling2D", "", "training"): 4.0,
        ("StochasticPooling2D", "", "inference"): 1.5,
        ("LPPooling2D", "p=2", "training"): 2.0,
        ("GlobalGeMPooling2D", "", "training"): 2.0,
        ("SpatialPyramidPooling2D", "bins=1,2,4", "training"): 2.0,
        ("FractionalMaxPooling2D", "", "training"): 3.0,
        ("MaxUnpooling2D", "", "training"): 2.0,
        ("BlurPooling2D", "", "training"): 2.0,
        ("MaxBlurPooling2D", "", "training"): 2.0,
        ("SoftPooling2D", "", "training"): 2.0,
        ("TreePooling2D", "", "training"): 3.0,
        ("MedianPooling2D", "", "training"): 4.0,
    }


@pytest.mark.parametrize(
    "layer, mode, shape",
    [
        ("LPPooling2D", "p=2", (2, 4, 4, 3)),
        ("BlurPooling2D", "", (2, 4, 4, 3)),
        ("MaxBlurPooling2D", "", (2, 4, 4, 3)),
        ("GlobalGeMPooling2D", "", (2, 3)),
        ("MaxUnpooling2D", "", (2, 8, 8, 3)),
    ],
)
def test_make_case_gives_the_window_as_the_layer_takes_it(layer, mode, shape):
    if not bench.available_cases([case(layer, mode)]):
        pytest.skip(f"{layer} not in kpool.layers yet")
    images = keras.random.uniform((2, 8, 8, 3), seed=0)
    built, inputs = bench.make_case(case(layer, mode), WINDOW, images)
    if layer == "MaxUnpooling2D":
        # Unpooled from MaxPooling2D's values back to the input's size.
        assert tuple(inputs.shape) == (2, 4, 4, 3)
    if layer == "BlurPooling2D":
        config = built.get_config()
        assert np.ravel(config["filter_size"]).tolist() in ([2], [2, 2])
        assert np.ravel(config["strides"]).tolist() in ([2], [2, 2])
    assert tuple(built(inputs).shape) == shape


def test_fractional_pooling_gets_max_poolings_output_size():
    class BySize:
        def __init__(self, pool_size=2, output_size=None, seed=None):
            pass

    class ByRatio:
        def __init__(self, output_ratio=None, seed=None):
            pass

    window = dict(pool_size=3, strides=2, padding="valid")
    arguments = bench._output_size_arguments(BySize, window, (2, 32, 32, 3))
    assert arguments == {"output_size": (15, 15), "pool_size": 3}
    arguments = bench._output_size_arguments(ByRatio, window, (2, 32, 32, 3))
    assert arguments == {"output_ratio": (15 / 32, 15 / 32)}


def test_missing_and_failing_layers_are_skipped_with_a_note(capsys):
    cases = (
        bench.LayerCase("MinPooling2D", goal=1.5),
        bench.LayerCase("NoSuchPooling2D"),
        # Fails in its first step: blur pooling takes no `padding`.
        bench.LayerCase("BlurPooling2D", kwargs={"padding": "same"}),
    )
    rows = bench.benchmark_layers(
        pools=[(2, 2)],
        compile_modes=[bench.default_compile_mode()],
        batch_shape=(2, 8, 8, 3),
        repeats=1,
        warmup=0,
        cases=cases,
    )
    assert [r["layer"] for r in rows] == ["MinPooling2D"]
    printed = capsys.readouterr().out
    assert "Skipping NoSuchPooling2D" in printed
    assert "Skipping BlurPooling2D" in printed


def test_model_fit_choices_are_the_windowed_poolings_then_convolutions():
    from kpool.harness import models

    choices = bench.model_fit_choices()
    assert choices[-2:] == ("strided", "allconv")
    assert "max" not in choices
    assert not any(c.startswith("global_") for c in choices)
    assert {"min", "mixed", "stochastic"} <= set(choices)
    assert set(choices) <= set(models.downsampling_choices())


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


def expected_rows(pools=("2x2/s2/valid", "3x3/s2/valid")):
    """(layer, mode, phase, passes, pool) of every case kpool has, in the
    order the benchmark writes them."""
    cases = bench.available_cases()
    return [
        (*c.key, "global" if c.window == "none" else pool)
        for index, pool in enumerate(pools)
        for c in cases
        if index == 0 or c.window != "none"
    ]


def row_key(row):
    return tuple(row[k] for k in ("layer", "mode", "phase", "passes", "pool"))


def git_head():
    """This checkout's commit read by git itself ("" outside a clone)."""
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()


def test_bench_layers_script_writes_every_case_with_its_ratio(tmp_path):
    backend = run_bench_layers(
        tmp_path, "--model-fit", "--fit-choices", "min", "strided"
    )
    rows = read_csv(tmp_path / f"layers_{backend}.csv")
    assert [row_key(r) for r in rows] == expected_rows()
    for row in rows:
        assert row["backend"] == backend
        assert row["compile_mode"] == bench.default_compile_mode()
        assert row["dtype"] == "float32"
        assert row["baseline"] in bench.BASELINES
        assert row["device"] and row["machine"] and row["date"]
        assert row["git_commit"] == git_head()
        ratio = float(row["median_ms"]) / float(row["baseline_median_ms"])
        assert float(row["ratio"]) == pytest.approx(ratio, rel=1e-2)
        if row["goal_ratio"]:
            goal = float(row["goal_ratio"])
            assert row["meets_goal"] == str(float(row["ratio"]) <= goal)
        else:
            assert row["meets_goal"] == ""

    rows = read_csv(tmp_path / f"model_fit_{backend}.csv")
    assert [r["downsampling"] for r in rows] == ["min", "strided"]
    for row in rows:
        assert row["model"] == "small_cnn" and row["backend"] == backend
        assert row["compile_mode"] == bench.default_compile_mode()
        assert row["device"] and row["machine"] and row["date"]
        assert float(row["load_average_before"]) >= 0
        assert float(row["others_cpu_cores"]) >= 0
        assert row["git_commit"] == git_head()
        assert row["git_dirty"] in ("True", "False")
        step_ratio = float(row["median_ms_per_step"]) / float(
            row["max_median_ms_per_step"]
        )
        assert float(row["ratio"]) == pytest.approx(step_ratio, rel=1e-2)
        assert float(row["goal_ratio"]) == bench.MODEL_FIT_GOAL
        assert row["meets_goal"] == str(float(row["ratio"]) <= 1.25)

    # A rerun of one choice replaces its row and keeps the other's.
    before = {r["downsampling"]: r for r in rows}
    run_bench_layers(
        tmp_path, "--model-fit", "--skip-layers", "--fit-choices", "strided"
    )
    rows = read_csv(tmp_path / f"model_fit_{backend}.csv")
    assert [r["downsampling"] for r in rows] == ["min", "strided"]
    assert rows[0] == before["min"]
    assert rows[1]["date"] >= before["strided"]["date"]


def test_fit_parts_split_the_choices_and_join_in_one_csv(tmp_path):
    script = load_script("bench_layers.py")
    choices = list(bench.model_fit_choices())
    for n in (1, 2, 3, len(choices)):
        parts = [script["part_choices"]((i, n)) for i in range(1, n + 1)]
        assert sum(parts, []) == choices
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for bad in ("0/2", "3/2", "2", "a/b"):
        with pytest.raises(SystemExit):
            script["parse_args"](["--fit-part", bad])
    with pytest.raises(SystemExit, match="--fit-part picks"):
        run_bench_layers(
            tmp_path, "--model-fit", "--fit-part", "1/2", "--fit-choices", "min"
        )

    # Two processes' parts (as the GPU session runs them) in one CSV, in
    # the benchmark's order whichever ran first.
    n = len(choices)
    for part in (f"2/{n}", f"1/{n}"):
        backend = run_bench_layers(
            tmp_path, "--model-fit", "--skip-layers", "--fit-part", part
        )
    rows = read_csv(tmp_path / f"model_fit_{backend}.csv")
    assert [r["downsampling"] for r in rows] == choices[:2]


def test_bench_layers_times_an_experiments_own_runs(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: tiny\n"
        "model: {family: small_cnn, width: 4}\n"
        "downsampling: [min, max, strided]\n"
        "seeds: [3]\n"
        "data: {source: synthetic, subset: 40, test_subset: 20}\n"
        "train: {epochs: 2, batch_size: 10}\n"
    )
    backend = run_bench_layers(
        tmp_path,
        "--model-fit",
        "--skip-layers",
        "--fit-config",
        str(config),
        "--fit-set",
        "train.batch_size=8",
        "--fit-repeats",
        "2",
    )
    # The data set is in the name: a synthetic stand-in says so.
    rows = read_csv(tmp_path / f"model_fit_tiny_synthetic_{backend}.csv")
    assert not (tmp_path / f"model_fit_{backend}.csv").exists()
    # Every choice but the baseline ("max", a choice), in the config's order.
    assert [r["downsampling"] for r in rows] == ["min", "strided"]
    for row in rows:
        assert row["experiment"] == "tiny" and row["baseline"] == "max"
        assert row["dataset"] == "synthetic" and row["n_train"] == "40"
        # The override reached the runs: 40 images in 5 steps of 8.
        assert row["batch_size"] == "8" and row["steps"] == "5"
        assert row["width"] == "4" and row["backend"] == backend
        assert float(row["load_average_before"]) >= 0
        step_ratio = float(row["median_ms_per_step"]) / float(
            row["baseline_median_ms_per_step"]
        )
        assert float(row["ratio"]) == pytest.approx(step_ratio, rel=1e-2)
        assert row["meets_goal"] == str(float(row["ratio"]) <= 1.25)

    with pytest.raises(SystemExit, match="--fit-set 'downsampling"):
        run_bench_layers(
            tmp_path,
            "--model-fit",
            "--skip-layers",
            "--fit-config",
            str(config),
            "--fit-choices",
            "min",
        )


def test_benchmark_experiment_fit_uses_the_report_baseline():
    from kpool.harness.config import config_from_dict
    from kpool.harness.data import load_dataset

    config = config_from_dict(
        {
            "name": "tiny",
            "model": {"family": "small_cnn", "width": 4},
            "downsampling": ["max", "avg", "strided"],
            "seeds": [0],
            "data": {"source": "synthetic", "subset": 20, "test_subset": 10},
            "train": {"epochs": 1, "batch_size": 10},
            "report": {"baseline": "strided"},
        }
    )
    dataset = load_dataset("synthetic", subset=20, test_subset=10)
    rows = bench.benchmark_experiment_fit(config, dataset, repeats=1)
    assert [(r["downsampling"], r["baseline"]) for r in rows] == [
        ("max", "strided"),
        ("avg", "strided"),
    ]


def test_summarize_runs_takes_each_cases_median_ratio_over_runs():
    ratios = {
        ("MinPooling2D", ""): [1.7, 1.4, 1.6],
        ("MixedPooling2D", "learned"): [3.0, 1.0, 2.0],
    }
    goals = {("MinPooling2D", ""): 1.5, ("MixedPooling2D", "learned"): 2.5}
    kept = {
        "baseline": "MaxPooling2D",
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
            "mode": mode,
            "phase": "training",
            "passes": "fwd+bwd",
            "pool": "2x2/s2/valid",
            "compile_mode": "graph",
            "median_ms": 10.0 * ratio,
            "baseline_median_ms": 10.0,
            "ratio": ratio,
            "goal_ratio": goals[layer, mode],
            "date": f"2026-11-21T09:0{run}:00",
            **kept,
        }
        for run in range(3)
        for (layer, mode), case_ratios in ratios.items()
        for ratio in [case_ratios[run]]
    ]
    summary = bench.summarize_runs(rows)
    assert [(r["layer"], r["mode"]) for r in summary] == list(ratios)
    for row in summary:
        case_ratios = ratios[row["layer"], row["mode"]]
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
    backend = run_bench_layers(
        tmp_path, "--runs", "2", "--layers", "MinPooling2D", "SoftPooling2D"
    )
    rows = read_csv(tmp_path / f"layers_{backend}.csv")
    summary = read_csv(tmp_path / f"layers_{backend}_summary.csv")
    layers = ("MinPooling2D", "SoftPooling2D")
    assert [row_key(r) for r in summary] == [
        key for key in expected_rows() if key[0] in layers
    ]
    for row in summary:
        runs = [r for r in rows if row_key(r) == row_key(row)]
        assert sorted(r["run"] for r in runs) == ["0", "1"]
        ratio = np.median([float(r["ratio"]) for r in runs])
        assert row["runs"] == "2"
        assert float(row["ratio"]) == pytest.approx(ratio, abs=1e-3)


def test_bench_layers_script_rejects_zero_runs_and_unknown_layers():
    main = load_script("bench_layers.py")["main"]
    with pytest.raises(SystemExit):
        main(["--runs", "0"])
    with pytest.raises(SystemExit, match="NoSuchPooling2D"):
        main(["--layers", "NoSuchPooling2D"])


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
# As `python experiments/bench_gpu.py` does: the script's directory first on
# the path, for its `import bench` (runpy.run_path does not add it).
sys.path.insert(0, {os.path.dirname(script)!r})
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
    assert len(layers) == len(expected_rows(["2x2/s2/valid"]))
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


def test_others_cpu_is_the_machines_busy_time_less_the_benchmarks(monkeypatch):
    others_cpu = bench.OthersCpu
    # (machine busy s, own CPU s, wall s): 3 s busy of which 1 s own, in 2 s.
    readings = iter([(10.0, 4.0, 100.0), (13.0, 5.0, 102.0)])
    monkeypatch.setattr(
        others_cpu, "_readings", staticmethod(lambda: next(readings))
    )
    assert others_cpu().cores() == pytest.approx(1.0)


def test_others_cpu_counts_another_process():
    others = bench.OthersCpu()
    if others.start is None:
        pytest.skip("no /proc/stat (not Linux)")
    burn = "import time\nend = time.time() + 1\nwhile time.time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    # About 1 core for about 1 s (more if the machine is busy otherwise).
    assert others.cores() > 0.5
