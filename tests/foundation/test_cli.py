"""`voice-agent run` serves the room page (the doctor's tests: tests/foundation/test_doctor.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAIN = """
profile = "plain"
[profiles.plain]
stt = { backend = "nemotron" }
tts = { backend = "magpie-nim" }
llm = { preset = "openai", base_url = "http://127.0.0.1:9/v1" }
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def running_agent(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(PLAIN)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "agent.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "run",
            "-c",
            str(config),
            "--no-prewarm",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--env-file",
            str(tmp_path / "none"),
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"agent exited early:\n{(tmp_path / 'agent.log').read_text()[-3000:]}")
        try:
            if http_get(base + "/")[0] == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        pytest.fail("agent did not serve / within 90 s")
    yield base, proc
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_run_serves_room_page_and_survives_a_bad_offer(running_agent):
    base, proc = running_agent
    status, page = http_get(base + "/")
    assert status == 200
    assert "RTCPeerConnection" in page and "/api/offer" in page
    # Pipecat's prebuilt client stays available too.
    assert http_get(base + "/client/")[0] == 200
    bad = urllib.request.Request(
        base + "/api/offer", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bad, timeout=5)
    assert 400 <= info.value.code < 500
    assert proc.poll() is None
    assert http_get(base + "/")[0] == 200
