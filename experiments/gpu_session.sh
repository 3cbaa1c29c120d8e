#!/usr/bin/env bash
# Everything kpool measures on a lent GPU, in one call that fits the device
# tool's 10 minutes (issue 20's deliverable: the peer and model-level
# benchmarks on torch and JAX, then the GPU benchmark):
#
#   1. peers_torch   bench_peers.py under torch: kpool's ops next to torch's
#                    functional ops, kornia and timm's formulas (kornia's
#                    rows only where kornia is installed), forward +
#                    backward and forward only, at issue 20's four sizes.
#   2. fit_torch     bench_layers.py --model-fit under torch: model.fit step
#                    time of the small CNN with every choice over max
#                    pooling, interleaved.
#   3. peers_jax     bench_peers.py under JAX: next to the same formulas
#                    written with jax.lax.
#   4. fit_jax_*     the model-level benchmark under JAX, its choices in
#                    three processes (`--fit-part 1/3` ...).
#   5. throughput    bench_gpu.py (JAX): layers' bandwidth and the training
#                    throughput of the small CNN on synthetic data of
#                    CIFAR-10's size.
#
#     bash experiments/gpu_session.sh OUTPUT_DIR [--quick] [--budget SECONDS]
#
# On the GPU machine (no TensorFlow, Keras from the carried wheels):
#
#     python3 -m pip install -q --no-index --no-deps --no-compile \
#       --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#       && export PYTHONPATH=/tmp/site:$PWD \
#       && bash experiments/gpu_session.sh "$OUT/gpu"
#
# Each part runs in its own process under `timeout`, with a share of the
# budget (default 540 s, so that the files are written before the device
# tool's 600 s limit); a part that ends early or is skipped leaves its time
# to the next. A part at its limit gets SIGINT, then SIGKILL 10 s later.
# A part that fails or runs out of time is recorded and the next one runs:
# bench_peers.py writes its CSV after each size, so a part stopped by its
# limit keeps the sizes it finished. Writes under OUTPUT_DIR:
#
#   peers/<backend>.csv, fit/model_fit_<backend>.csv, throughput/*,
#   logs/<part>.log, parts.csv (each part's exit status, seconds and limit),
#   device.txt (nvidia-smi's view of the device, where it has one).
#
# `--quick` runs every part at tiny sizes: it checks the plumbing on a CPU,
# and its timings mean nothing.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

usage="usage: bash experiments/gpu_session.sh OUTPUT_DIR [--quick] [--budget SECONDS]"
out=""
quick=0
budget=540
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) quick=1 ;;
    --budget)
      shift
      budget=${1:-}
      ;;
    -*)
      echo "$usage" >&2
      exit 2
      ;;
    *) out=$1 ;;
  esac
  shift
done
if [[ -z $out || ! $budget =~ ^[0-9]+$ ]]; then
  echo "$usage" >&2
  echo "OUTPUT_DIR is required and --budget must be a whole number of seconds." >&2
  exit 2
fi
mkdir -p "$out/logs" || exit 2
out=$(cd "$out" && pwd)
cd "$root" || exit 2
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONHASHSEED=0
# The interpreter: $PYTHON, else python3 (the GPU machine's).
python=${PYTHON:-python3}

peers=()
fit=(--skip-layers --model-fit)
throughput=(--families small_cnn)
if [[ $quick == 1 ]]; then
  peers=(--smoke)
  fit+=(--quick)
  throughput+=(--quick --choices max mixed)
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi >"$out/device.txt" 2>&1
else
  echo "no nvidia-smi: no GPU on this machine" >"$out/device.txt"
fi
echo "part,backend,exit_status,seconds,limit_seconds" >"$out/parts.csv"

start=$SECONDS
saved=0
status=0
# run_part NAME BACKEND SHARE SCRIPT [ARGS...]: SCRIPT under KERAS_BACKEND,
# limited to SHARE percent of the budget plus what earlier parts left.
run_part() {
  local name=$1 backend=$2 share=$3
  shift 3
  local limit=$((budget * share / 100 + saved))
  # A part stopped at its limit gets 10 s more to write its files before
  # it is killed: those stay inside the budget too.
  local left=$((budget - (SECONDS - start) - 10))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then
    # Its share goes to the parts after it.
    saved=$((limit > 0 ? limit : 0))
    echo "$name,$backend,skipped,0,$limit" >>"$out/parts.csv"
    echo "=== $name: skipped, $limit s for it"
    status=1
    return
  fi
  echo "=== $name (KERAS_BACKEND=$backend, at most $limit s)"
  local begin=$SECONDS code
  KERAS_BACKEND=$backend timeout --signal=INT --kill-after=10 "$limit" \
    "$python" "$@" >"$out/logs/$name.log" 2>&1
  code=$?
  local took=$((SECONDS - begin))
  saved=$((limit - took))
  ((saved < 0)) && saved=0
  echo "$name,$backend,$code,$took,$limit" >>"$out/parts.csv"
  tail -n 3 "$out/logs/$name.log"
  echo "=== $name: exit status $code in $took s"
  ((code != 0)) && status=1
}

# Shares of the budget add to 100. torch's parts run eagerly and take
# seconds; JAX's compile every function first, and take the rest.
run_part peers_torch torch 10 experiments/bench_peers.py --allow-loaded \
  --output-dir "$out/peers" "${peers[@]}"
run_part fit_torch torch 10 experiments/bench_layers.py \
  --output-dir "$out/fit" "${fit[@]}"
run_part peers_jax jax 30 experiments/bench_peers.py --allow-loaded \
  --output-dir "$out/peers" "${peers[@]}"
# JAX compiles every choice's train step: in three processes, so that one
# stopped at its limit loses only its third (each joins the CSV).
for part in 1 2 3; do
  run_part "fit_jax_${part}of3" jax 10 experiments/bench_layers.py \
    --output-dir "$out/fit" "${fit[@]}" --fit-part "$part/3"
done
run_part throughput jax 20 experiments/bench_gpu.py \
  --output-dir "$out/throughput" "${throughput[@]}"
echo "gpu_session.sh: $((SECONDS - start)) s; parts in $out/parts.csv"
exit $status
