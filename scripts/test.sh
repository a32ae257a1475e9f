#!/usr/bin/env bash
# Installs the agent with its test extras into .venv and runs the test suite.
# Extra arguments go to pytest (e.g. -k config, -m slow for the long soaks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "cpu,dev,piper"
if [ -x scripts/setup_test_host.sh ]; then bash scripts/setup_test_host.sh; fi
exec .venv/bin/python -m pytest "$@"
