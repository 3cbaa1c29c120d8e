"""Smoke test of experiments/bench_serving.py: on TensorFlow (TFLite and
ONNX Runtime) and torch (ONNX Runtime) it converts each model, gets the
Keras model's outputs back from the runtime, and writes the columns it
promises. Not how fast anything is."""

import os
import runpy

import bench_peers
import keras
import pytest

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SCRIPT = os.path.join(REPO, "experiments", "bench_serving.py")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "torch"),
    reason="TFLite needs TensorFlow; ONNX export runs on TensorFlow and torch",
)


@pytest.fixture(scope="module")
def bench_serving():
    return runpy.run_path(SCRIPT)


def test_smoke_run_serves_the_keras_models_values(bench_serving, tmp_path):
    pytest.importorskip("onnxruntime")
    if keras.backend.backend() == "tensorflow":
        pytest.importorskip("tf2onnx")
    rows = bench_serving["main"](["--smoke", "--output-dir", str(tmp_path)])
    runtimes = {"tensorflow": {"tflite", "onnx"}, "torch": {"onnx"}}[
        keras.backend.backend()
    ]
    # Every inference case of the smoke layers, at both windows, in every
    # runtime of the backend: none was skipped.
    cases = {
        (case.layer, case.mode)
        for case in bench_serving["bench"].LAYER_CASES
        if not case.training and case.layer in bench_serving["SMOKE_LAYERS"]
    }
    pools = {"2x2/s2/valid", "3x3/s2/valid"}
    assert {
        (row["layer"], row["mode"], row["runtime"], row["pool"]) for row in rows
    } == {
        (*case, runtime, pool)
        for case in cases
        for runtime in runtimes
        for pool in pools
    }
    goals = bench_serving["SERVING_GOALS"]
    for row in rows:
        assert row["values_match"] is True, row
        assert row["batch_shape"] == "2x8x8x4"
        assert row["baseline"] == "MaxPooling2D"
        assert row["median_ms"] > 0 and row["ratio"] > 0
        goal = goals.get((row["layer"], row["mode"]))
        assert row["goal_ratio"] == goal
        if goal is None:
            assert row["meets_goal"] is None
        else:
            assert row["meets_goal"] == (row["ratio"] <= goal)
        assert row["smoke"] is True
        for column in ("onnxruntime_version", "git_commit", "machine", "date"):
            assert row[column] != "", column
    path = tmp_path / f"{keras.backend.backend()}.csv"
    assert path.exists()
    with open(path) as f:
        assert len(f.readlines()) == len(rows) + 1


def test_refuses_to_time_on_a_loaded_machine(bench_serving, monkeypatch):
    monkeypatch.setattr(
        bench_peers, "load_average", lambda: bench_peers.QUIET_LOAD + 1
    )
    with pytest.raises(SystemExit, match="load average is .*--allow-loaded"):
        bench_serving["main"]([])


def test_unknown_layer_is_named(bench_serving):
    with pytest.raises(SystemExit, match=r"--layers .*\['NoSuchPooling'\]"):
        bench_serving["main"](["--layers", "NoSuchPooling"])
