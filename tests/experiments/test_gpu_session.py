"""experiments/gpu_session.sh, the one call a lent GPU gets: which scripts
it runs under which backend, with what arguments, and how it shares its
time budget. The scripts themselves are tested on their own
(test_bench_peers.py, test_bench.py); here a stand-in interpreter records
each call instead of running it."""

import csv
import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SCRIPT = os.path.join(REPO, "experiments", "gpu_session.sh")
PARTS = [
    ("peers_torch", "torch", "experiments/bench_peers.py"),
    ("fit_torch", "torch", "experiments/bench_layers.py"),
    ("peers_jax", "jax", "experiments/bench_peers.py"),
    ("fit_jax_1of3", "jax", "experiments/bench_layers.py"),
    ("fit_jax_2of3", "jax", "experiments/bench_layers.py"),
    ("fit_jax_3of3", "jax", "experiments/bench_layers.py"),
    ("throughput", "jax", "experiments/bench_gpu.py"),
]


def stand_in(tmp_path, body=""):
    """An executable that appends `KERAS_BACKEND script args...` to
    calls.txt, after checking that the script exists, then runs `body`."""
    calls = tmp_path / "calls.txt"
    python = tmp_path / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        '[[ -f "$1" ]] || { echo "no script $1" >&2; exit 3; }\n'
        f'echo "$KERAS_BACKEND $*" >> {shlex.quote(str(calls))}\n'
        f"{body}\n"
    )
    python.chmod(0o755)
    return python, calls


def run(tmp_path, python, *args, cwd=None):
    return subprocess.run(
        ["bash", SCRIPT, *args],
        env={**os.environ, "PYTHON": str(python)},
        cwd=cwd or tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def read_parts(out):
    with open(out / "parts.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("quick", [False, True])
def test_runs_every_part_with_its_backend_and_arguments(tmp_path, quick):
    python, calls = stand_in(tmp_path)
    # A relative OUTPUT_DIR is the caller's, not the repository's.
    result = run(tmp_path, python, "out", *(["--quick"] if quick else []))
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    lines = [line.split() for line in calls.read_text().splitlines()]
    assert [(line[0], line[1]) for line in lines] == [
        (backend, script) for _, backend, script in PARTS
    ]
    peers_torch, fit_torch, peers_jax, *fit_jax, throughput = lines
    for line, folder in [
        (peers_torch, "peers"),
        (peers_jax, "peers"),
        (fit_torch, "fit"),
        *((line, "fit") for line in fit_jax),
        (throughput, "throughput"),
    ]:
        assert line[line.index("--output-dir") + 1] == str(out / folder)
    # A lent machine is never refused for its load; rows record it.
    assert "--allow-loaded" in peers_torch and "--allow-loaded" in peers_jax
    for line in (fit_torch, *fit_jax):
        assert {"--model-fit", "--skip-layers"} <= set(line)
    # JAX's choices in three processes, each a part; torch's in one.
    assert "--fit-part" not in fit_torch
    assert [line[line.index("--fit-part") + 1] for line in fit_jax] == [
        "1/3",
        "2/3",
        "3/3",
    ]
    assert throughput[throughput.index("--families") + 1] == "small_cnn"
    tiny = {"--smoke", "--quick"}
    for line in lines:
        assert bool(tiny & set(line)) == quick
    parts = read_parts(out)
    assert [(p["part"], p["backend"], p["exit_status"]) for p in parts] == [
        (name, backend, "0") for name, backend, _ in PARTS
    ]
    # torch's peers get their 10% of the default 540 s budget.
    assert int(parts[0]["limit_seconds"]) == 54
    assert (out / "device.txt").exists()
    assert sorted(os.listdir(out / "logs")) == sorted(
        f"{name}.log" for name, _, _ in PARTS
    )


def test_a_failed_part_is_recorded_and_the_rest_still_run(tmp_path):
    python, calls = stand_in(
        tmp_path, "if [[ $1 == *bench_peers.py ]]; then exit 7; fi"
    )
    result = run(tmp_path, python, str(tmp_path / "out"))
    assert result.returncode == 1
    parts = read_parts(tmp_path / "out")
    assert [p["exit_status"] for p in parts] == [
        "7",
        "0",
        "7",
        "0",
        "0",
        "0",
        "0",
    ]
    assert len(calls.read_text().splitlines()) == 7


def test_a_part_past_its_limit_is_stopped_and_its_time_is_not_lost(
    tmp_path,
):
    # Budget 100 s: torch's peers get 10 s and overrun them; it is
    # stopped (exit status 124), and the parts after it still run.
    python, calls = stand_in(
        tmp_path,
        "if [[ $KERAS_BACKEND == torch && $1 == *bench_peers.py ]]; "
        "then sleep 60; fi",
    )
    result = run(tmp_path, python, str(tmp_path / "out"), "--budget", "100")
    parts = read_parts(tmp_path / "out")
    assert parts[0]["exit_status"] == "124"
    assert int(parts[0]["seconds"]) < 20
    ran = [p["part"] for p in parts if p["exit_status"] == "0"]
    assert ran == [name for name, _, _ in PARTS[1:]]
    # fit_torch took no time: its share went to peers_jax.
    assert int(parts[2]["limit_seconds"]) >= 100 * (10 + 30) // 100 - 1
    assert result.returncode == 1


def test_a_part_without_time_left_is_skipped(tmp_path):
    python, _ = stand_in(tmp_path)
    run(tmp_path, python, str(tmp_path / "out"), "--budget", "30")
    parts = read_parts(tmp_path / "out")
    # 10% of 30 s is under the 10 s a part needs at least.
    assert parts[0]["exit_status"] == "skipped"
    assert all(p["exit_status"] in ("0", "skipped") for p in parts)


@pytest.mark.parametrize(
    "args", [[], ["out", "--budget", "soon"], ["out", "--fast"]]
)
def test_bad_arguments_are_refused(tmp_path, args):
    python, calls = stand_in(tmp_path)
    result = run(tmp_path, python, *args)
    assert result.returncode == 2
    assert "usage: bash experiments/gpu_session.sh OUTPUT_DIR" in result.stderr
    assert not calls.exists()
