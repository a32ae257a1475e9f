"""The environment Ray starts with: what the user set wins, and Serve reads the lean values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.asr.serve import ray_env

ROOT = Path(__file__).resolve().parents[2]


def test_apply_fills_only_what_is_unset():
    env = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1"}  # the user's choice
    ray_env.apply(env)
    assert env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.1"
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["RAY_enable_metrics_collection"] == "0"
    plain: dict[str, str] = {}
    ray_env.apply(plain, lean=False)
    assert plain == ray_env.LOCAL_ENV


def test_serve_reads_the_lean_values_at_import():
    pytest.importorskip("ray")
    # A fresh interpreter: Serve's constants are read once, when ray.serve is first imported.
    code = (
        "import json; from services.asr.serve import ray_env; ray_env.apply(); "
        "from ray.serve._private import constants as c; "
        "print(json.dumps([c.CONTROL_LOOP_INTERVAL_S, c.RAY_SERVE_METRICS_EXPORT_INTERVAL_MS, "
        "c.RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ray_env.LEAN_ENV}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    loop_s, export_ms, separate_thread = json.loads(out.stdout.strip().splitlines()[-1])
    assert loop_s == float(ray_env.LEAN_ENV["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"])
    assert export_ms == int(ray_env.LEAN_ENV["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"])
    assert separate_thread is False  # replica code on Serve's own event loop
