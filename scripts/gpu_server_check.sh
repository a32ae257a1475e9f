#!/usr/bin/env bash
# The ASR server on a GPU: how many real-time streams hold through WebSocket front ends.
#
# A second device run after scripts/gpu_check.sh (same `.whl` preparation). It saves the full
# Nemotron-0.6B shape with random weights as a .nemo (same compute as the trained model), starts
# `voice-agent asr-server --workers $WORKERS` on it and finds the largest N with no lag drift,
# with the load spread over $CLIENTS client processes. Compare with the engine's capacity from
# gpu_check.sh (the target: within 10%). Front ends and clients share the box's CPU cores: one
# front end carries a few hundred streams, one client process about as many.
#
#   WORKERS=8 CLIENTS=6 bash scripts/gpu_server_check.sh
#   DEVICE=cpu DTYPE=fp32 MODEL=path/to/tiny.nemo START=8 bash scripts/gpu_server_check.sh  # plumbing
set -euo pipefail
source "$(dirname "$0")/device_env.sh"
out="${OUT:-bench_results/gpu-server}"
mkdir -p "$out"
model="${MODEL:-/tmp/nemotron-0.6b-random.nemo}"
if [ ! -f "$model" ]; then
  echo "saving the Nemotron-0.6B shape with random weights to $model ..."
  python3 -c "import sys; from services.asr.engine.arch import build_model; \
build_model('nemotron-0.6b').save_to(sys.argv[1])" "$model"
fi
python3 scripts/loadtest_asr.py --model "$model" --device "${DEVICE:-cuda}" \
  --dtype "${DTYPE:-bf16}" --server-workers "${WORKERS:-8}" --client-procs "${CLIENTS:-6}" \
  --find-max --start "${START:-256}" --limit "${LIMIT:-8192}" -t "${SECONDS_PER_TRIAL:-20}" \
  --out "$out" 2>&1 | tee "$out/loadtest.log" | grep -vE "^\s*$" | tail -30
