#!/usr/bin/env bash
# Runs the test suite under every Keras backend, each group in its own
# process (KERAS_BACKEND must be set before Keras is imported).
#
# - The library (tests/layers) runs under tensorflow, jax and torch.
#   TensorFlow proves the formulas over the full grid of ranks, paddings
#   and formats; jax and torch run a sample of it (tests/conftest.py).
# - The harness (tests/harness) runs under jax, the backend of the GPU
#   path, and tensorflow, the default; augmentation and metrics also under
#   torch. The command's end-to-end tests run under jax, and the two that
#   do not depend on the backend (table columns, shards merged) under
#   tensorflow. Every model family with every choice is built under
#   tensorflow; jax builds each choice in one family. The benchmark
#   scripts (tests/experiments) run under tensorflow; the peer benchmark
#   under every backend, the serving benchmark under torch too (ONNX
#   Runtime), the GPU benchmark under jax only.
# - Facts that hold whatever the backend (shipped configs, the package's
#   import floors, SciPy equivalences) run once.
#
# KPOOL_COVERAGE=1 runs every group under coverage.py and prints the
# combined line coverage of kpool/ at the end.
#
# Two lanes run side by side (two cores are the minimum we test on); each
# group's output is printed when it ends. Any failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONHASHSEED=0
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pytest=(python -m pytest)
if [[ ${KPOOL_COVERAGE:-0} == 1 ]]; then
  rm -f .coverage .coverage.*
  pytest=(python -m coverage run -p --source=kpool,kpool_cli -m pytest)
fi

# What holds whatever the backend, run once (under jax): the shipped
# configs, the SciPy equivalences and the package's import floors.
once=(tests/harness/test_configs_shipped.py
  tests/harness/test_scipy_equivalence.py tests/test_layout.py)
# The harness under tensorflow: everything but the once-only tests. The
# benchmark scripts' end-to-end tests (tests/experiments) run here; under
# jax and torch only the peer benchmark's (each backend has its peers) and,
# under jax, the GPU benchmark's.
harness_tf=(tests/harness tests/experiments
  --ignore=tests/harness/test_configs_shipped.py
  --ignore=tests/harness/test_scipy_equivalence.py)
# Of the command's end-to-end tests (test_cli.py, run under jax in lane
# A), tensorflow runs the two it alone runs and its own; the GPU
# benchmark's test runs under jax only (it must run without TensorFlow).
harness_tf_skip="(not test_cli or test_tables_columns_and_values or \
test_shards_then_merge or tensorflow) and not test_bench_gpu_script"
# The library under jax, less one file that lane A runs with the command's
# tests (below), so that the lanes end together.
jax_moved_layers=tests/layers/test_spatial_pyramid_pooling.py
jax_layers=(tests/layers "--ignore=$jax_moved_layers")
# The harness under jax, the GPU path's backend, in two parts so that the
# lanes take about as long: the command's end-to-end runs, the GPU
# benchmark (which must run without TensorFlow) and the once-only tests in
# lane A, the rest in lane B. (An --ignore also drops a path named
# explicitly, so the parts name their files.)
jax_cli=(tests/harness/test_cli.py "${once[@]}"
  tests/experiments/test_bench_peers.py
  tests/experiments/test_bench.py::test_bench_gpu_script_runs_end_to_end_without_tensorflow
  "$jax_moved_layers")
# Two end-to-end runs of the command whose checks (table columns, shards
# merged) do not depend on the backend run under tensorflow only.
jax_cli_skip="not test_tables_columns_and_values and not test_shards_then_merge"
jax_harness=(tests/harness --ignore=tests/harness/test_cli.py
  --ignore=tests/harness/test_configs_shipped.py
  --ignore=tests/harness/test_scipy_equivalence.py)

group() {
  local backend=$1
  shift
  local log="$logs/$backend-$RANDOM.log"
  # pytest exits 4 for a missing path and 5 when it collects no tests;
  # both count as failures, not as a silent pass.
  if KERAS_BACKEND=$backend "${pytest[@]}" -q -p no:cacheprovider -rs \
    "$@" >"$log" 2>&1; then
    status=passed
  else
    status=FAILED
  fi
  {
    echo "=== KERAS_BACKEND=$backend ($status): $*"
    cat "$log"
  } >>"$logs/report"
  [[ $status == passed ]]
}

lane_a() {
  group tensorflow tests/layers &&
    group tensorflow "${harness_tf[@]}" -k "$harness_tf_skip" &&
    group torch tests/layers tests/harness/test_augment.py \
      tests/harness/test_metrics.py tests/experiments/test_bench_peers.py \
      tests/experiments/test_bench_serving.py &&
    group jax "${jax_cli[@]}" -k "$jax_cli_skip"
}
lane_b() {
  group jax "${jax_layers[@]}" && group jax "${jax_harness[@]}"
}

start=$SECONDS
lane_a &
a=$!
lane_b &
b=$!
status=0
wait $a || status=1
wait $b || status=1
cat "$logs/report"
echo "run_all.sh: $([[ $status == 0 ]] && echo passed || echo FAILED)" \
  "in $((SECONDS - start)) s"
if [[ ${KPOOL_COVERAGE:-0} == 1 ]]; then
  python -m coverage combine -q && python -m coverage report | tail -1
fi
exit $status
