#!/usr/bin/env bash
# Every GPU check of the ASR engine in one device run (~6-8 min on an H100/H200).
#
# Prepare on the build machine (no GPU needed):
#   echo /.whl/ >> .git/info/exclude && bash ../shared/device/wheels.sh .whl
# then run this script on the GPU machine with `.whl` carried along. It installs the wheels,
# benchmarks the full Nemotron-0.6B shape (random weights: same compute as the trained model)
# at 160 ms chunks, bf16, with and without CUDA graphs, against the buffered and NeMo-as-shipped
# baselines measured in the same run, then at 560 ms. Results: JSON + PNG + tables under $OUT
# (or bench_results/gpu).
set -euo pipefail
source "$(dirname "$0")/device_env.sh"
out="${OUT:-bench_results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

bench() {  # name, then bench_asr.py arguments; a part that fails or overruns does not stop the rest
  local name=$1; shift
  echo "=== $name"
  timeout "${PART_TIMEOUT_S:-240}" python3 scripts/bench_asr.py --arch "${ARCH:-nemotron-0.6b}" \
    --device "${DEVICE:-cuda}" --out "$out/$name" "$@" 2>&1 | tee "$out/$name.log" \
    | grep -vE "^\s*$" | tail -40 || echo "=== $name FAILED (see $out/$name.log)"
}
# Outputs first: the fast step against NeMo's (fp32) and the graphed live step against eager, on
# this GPU, at the Nemotron shape; staggered streams so buckets are padded.
echo "=== exactness"
timeout "${PART_TIMEOUT_S:-240}" python3 scripts/gpu_exactness.py --arch "${ARCH:-nemotron-0.6b}" \
  --device "${DEVICE:-cuda}" --streams "${EXACT_STREAMS:-48}" --out "$out/exactness" 2>&1 \
  | tee "$out/exactness.log" | tail -12 || echo "=== exactness FAILED (see $out/exactness.log)"
# Our K/V-cached encoder (engine) against the same engine on NeMo's step (engine-nemo) and NeMo's
# step batched as its own pipeline runs it (shipped-batched): step time and FLOPs vs batch.
bench c160-bf16-encoders --dtype bf16 --chunk-ms 160 --all-batches --streams 0 --repeats 3 \
  --systems engine,engine-nemo,shipped-batched --batches "${ENCODER_BATCHES:-1,8,64,256,1024,2048}"
# Capacity at the serving target (p99 step <= 80 ms at 160 ms chunks: the budget) and 4,000 paced
# streams, against NeMo's step batched (the 1,099-stream baseline), not one stream at a time.
bench c160-bf16-graphs --dtype bf16 --chunk-ms 160 --cuda-graphs --step-budget-ms 80 \
  --systems engine,shipped-batched --batches 1,8,64,256,1024,2048,4096 \
  --streams "${PACED_STREAMS:-4000}" --seconds 20
bench c160-bf16-eager --dtype bf16 --chunk-ms 160 --systems engine --batches 1,64,256,1024
bench c560-bf16-graphs --dtype bf16 --chunk-ms 560 --cuda-graphs --systems engine \
  --batches 1,256,1024,2048
