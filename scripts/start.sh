#!/usr/bin/env bash
# Installs the agent into .venv and starts it: open http://localhost:7860 and press Connect.
# Extra arguments go to `voice-agent run` (e.g. --profile nvidia, -c my.toml, --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "${VOICE_AGENT_EXTRAS:-cpu}"
exec .venv/bin/voice-agent run "$@"
