#!/usr/bin/env bash
# Runs the test suite under every Keras backend, each in its own process
# (KERAS_BACKEND must be set before Keras is imported).
#
# Layer, data, augmentation and metric tests run under tensorflow, jax and
# torch. The harness and benchmark tests (models, training, experiments, CLI,
# benchmark scripts) run under jax, the backend of the GPU path, and
# tensorflow.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONHASHSEED=0
# Skips are expected: tests of one backend's behaviour (export, TFLite,
# XLA) skip under the others, and each skip says why (`-rs` lists them).
all_backends=(tests/layers tests/test_data.py tests/test_augment.py
  tests/test_metrics.py)
harness=(tests/test_config.py tests/test_models.py tests/test_training.py
  tests/test_results.py tests/test_experiment.py tests/test_cli.py
  tests/test_bench.py)
# What one backend proves: the shipped configs build and train (configs are
# backend-agnostic data), and facts about Keras's built-in poolings.
one_backend=(tests/test_configs_shipped.py tests/test_scipy_equivalence.py)

run() {
  local backend=$1
  shift
  echo "=== KERAS_BACKEND=$backend: $*"
  # pytest exits 4 for a missing path and 5 when it collects no tests;
  # `set -e` turns both into a failure rather than a silent pass.
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@"
}

for backend in tensorflow jax torch; do
  run "$backend" "${all_backends[@]}"
done
run jax "${harness[@]}" "${one_backend[@]}"
run tensorflow "${harness[@]}"
