#!/usr/bin/env bash
# Installs the agent with its test extras into .venv and runs the test suite.
# Extra arguments go to pytest (e.g. -k config, -m slow for the long soaks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "cpu,dev,piper,cluster"
if [ -x scripts/setup_test_host.sh ]; then bash scripts/setup_test_host.sh; fi
# Tests run in a private network namespace when we can make one (root, unshare, ip): only
# loopback plus one address of our own (aiortc ignores 127.x ICE candidates, so WebRTC peers need
# a non-loopback address to meet on). No test traffic can leave it. TEST_NETNS=0 turns this off.
if [ "${TEST_NETNS:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v ip >/dev/null \
    && unshare -n true 2>/dev/null; then
  echo "[test] running in a private network namespace (lo + 10.203.0.1/32)"
  exec unshare -n bash -c \
    'ip link set lo up && ip addr add 10.203.0.1/32 dev lo && exec .venv/bin/python -m pytest "$@"' \
    bash "$@"
fi
exec .venv/bin/python -m pytest "$@"
