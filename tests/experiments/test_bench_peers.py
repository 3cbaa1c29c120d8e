"""Smoke test of experiments/bench_peers.py: it runs on this backend,
writes the columns it promises, and every peer computes kpool's values, so
that each ratio compares the same computation. Not how fast anything is."""

import csv
import os
import runpy

import bench
import keras
import numpy as np
import pytest

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SCRIPT = os.path.join(REPO, "experiments", "bench_peers.py")

COLUMNS = {
    "op",
    "setting",
    "peer",
    "data_format",
    "batch_shape",
    "passes",
    "compile_mode",
    "kpool_median_ms",
    "peer_median_ms",
    "ratio",
    "goal_ratio",
    "meets_goal",
    "values_match",
    "repeats",
    "warmup",
    "load_average_before",
    "load_average_after",
    "others_cpu_cores",
    "quiet",
    "smoke",
    "keras_version",
    "torch_version",
    "tensorflow_version",
    "jax_version",
    "kornia_version",
    "git_commit",
    "git_dirty",
    "backend",
    "machine",
    "date",
}


@pytest.fixture(scope="module")
def bench_peers():
    return runpy.run_path(SCRIPT)


def expected_ops(bench_peers):
    ops = set(bench_peers["kpool_ops"]((2, 4, 8, 8), "channels_last", None))
    backend = keras.backend.backend()
    if backend == "jax":
        ops.discard("fractional_max_pool")
    if backend == "torch":
        try:
            import kornia  # noqa: F401
        except ImportError:
            ops -= {"blur_pool", "max_blur_pool"}
    return ops


def test_every_peer_computes_kpools_values(bench_peers):
    shape = bench_peers["SMOKE_SIZE"]
    x = bench_peers["batch"](shape)
    cases = bench_peers["peer_cases"](shape)
    assert {case.op for case in cases} == expected_ops(bench_peers)
    for case in cases:
        ours = keras.ops.convert_to_numpy(case.kpool(x))
        theirs = keras.ops.convert_to_numpy(case.peer_call(x))
        assert ours.shape == theirs.shape, case.op
        if case.same_values:
            np.testing.assert_allclose(
                ours, theirs, rtol=1e-4, atol=1e-5, err_msg=case.op
            )


def test_smoke_run_writes_every_case_with_its_columns(bench_peers, tmp_path):
    bench_peers["main"](["--smoke", "--output-dir", str(tmp_path)])
    path = tmp_path / f"{keras.backend.backend()}.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert COLUMNS <= set(rows[0])
    ops = expected_ops(bench_peers)
    assert {(row["op"], row["passes"]) for row in rows} == {
        (op, passes) for op in ops for passes in ("fwd+bwd", "fwd")
    }
    for row in rows:
        assert row["values_match"] in ("True", "shape"), row["op"]
        assert float(row["ratio"]) > 0
        # Issue 20: 1.2 for every op; SoftPool (overflow-safe) 1.5.
        goal = 1.5 if row["op"] == "soft_pool" else 1.2
        assert float(row["goal_ratio"]) == goal, row["op"]
        assert row["meets_goal"] == str(float(row["ratio"]) <= goal)
        assert row["smoke"] == "True"
        others = row["others_cpu_cores"]
        assert row["quiet"] == str(
            float(row["load_average_before"]) <= bench_peers["QUIET_LOAD"]
            and (others == "" or float(others) <= bench.QUIET_OTHERS_CORES)
        )


def test_refuses_a_loaded_machine(bench_peers, tmp_path, monkeypatch):
    main = bench_peers["main"]
    monkeypatch.setitem(
        main.__globals__, "load_average", lambda: bench_peers["QUIET_LOAD"] + 1
    )
    with pytest.raises(SystemExit, match="load average"):
        main(["--output-dir", str(tmp_path)])
    assert not os.listdir(tmp_path)


def test_ops_replaces_only_their_rows(bench_peers, tmp_path):
    main = bench_peers["main"]
    main(["--smoke", "--output-dir", str(tmp_path)])
    path = tmp_path / f"{keras.backend.backend()}.csv"
    with open(path, newline="") as f:
        before = list(csv.DictReader(f))
    main(["--smoke", "--output-dir", str(tmp_path), "--ops", "min_pool"])
    with open(path, newline="") as f:
        after = list(csv.DictReader(f))
    assert len(after) == len(before)
    kept = [row for row in before if row["op"] != "min_pool"]
    assert after[: len(kept)] == kept
    new = after[len(kept) :]
    assert {(row["op"], row["passes"]) for row in new} == {
        ("min_pool", "fwd+bwd"),
        ("min_pool", "fwd"),
    }


def test_ops_names_an_unknown_op(bench_peers, tmp_path):
    with pytest.raises(SystemExit, match="--ops: unknown op.*min_pooling"):
        bench_peers["main"](
            ["--smoke", "--output-dir", str(tmp_path), "--ops", "min_pooling"]
        )
    assert not os.listdir(tmp_path)


def test_a_run_stopped_early_keeps_the_sizes_it_finished(
    bench_peers, tmp_path, monkeypatch
):
    # As when a time limit stops the run on a lent GPU after some sizes.
    main = bench_peers["main"]
    benchmark = main.__globals__["benchmark_peers"]

    def stopped_after_one_size(sizes, **kwargs):
        yield from benchmark(sizes, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setitem(
        main.__globals__, "benchmark_peers", stopped_after_one_size
    )
    with pytest.raises(KeyboardInterrupt):
        main(["--smoke", "--output-dir", str(tmp_path), "--ops", "min_pool"])
    with open(tmp_path / f"{keras.backend.backend()}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(row["op"], row["passes"]) for row in rows} == {
        ("min_pool", "fwd+bwd"),
        ("min_pool", "fwd"),
    }
    assert COLUMNS <= set(rows[0])
    assert os.listdir(tmp_path) == [f"{keras.backend.backend()}.csv"]
