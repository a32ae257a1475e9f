"""Start ``voice-agent run`` as a subprocess on a free port and wait until it serves.

Used by the end-to-end tests and by ``scripts/bench_v2v.py --start``. The agent loads (prewarms)
its models before it opens the HTTP port, so "the room page answers" means "ready for calls".
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.lifetime import set_parent_death_signal

REPO_ROOT = Path(__file__).resolve().parents[2]


def _die_with_this_process() -> None:
    # In the child before exec: SIGTERM it when the test run or benchmark dies (a killed bench
    # once left an agent and its llama.cpp server running).
    set_parent_death_signal(signal.SIGTERM)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def webrtc_host_address() -> str | None:
    """An IPv4 address other than 127.x, which aiortc needs for ICE (it drops loopback ones)."""
    try:
        import ifaddr
    except ImportError:  # aioice depends on it, so this only happens without aiortc
        return None
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return ip.ip
    return None


@dataclass
class AgentProcess:
    """A running agent: its URL, process and log file."""

    url: str
    process: subprocess.Popen
    log_path: Path
    command: list[str] = field(default_factory=list)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGINT (graceful: the runner and the LLM server shut down), then SIGKILL the group."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(5)


def agent_command() -> list[str]:
    """How to run the CLI: the installed console script, or the module in this checkout."""
    script = Path(sys.executable).with_name("voice-agent")
    if script.exists():
        return [str(script)]
    found = shutil.which("voice-agent")
    return [found] if found else [sys.executable, "-m", "agent.cli"]


def start_agent(
    *,
    profile: str | None = "cpu",
    port: int | None = None,
    overrides: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    log_path: Path | str,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 300.0,
) -> AgentProcess:
    """Start the agent and wait until its room page answers.

    Args:
        profile: ``--profile`` value; None leaves the choice to the agent (``auto``).
        port: HTTP port; a free one when None.
        overrides: ``--set KEY=VALUE`` pairs.
        extra_args: More ``voice-agent run`` arguments.
        log_path: File that receives the agent's stdout and stderr.
        env: Extra environment variables.
        ready_timeout: Seconds to wait for models to load and the port to open.

    Raises:
        RuntimeError: If the agent exits or does not answer in time (the message has its log).
    """
    port = port or free_port()
    command = [*agent_command(), "run", "--host", "127.0.0.1", "--port", str(port)]
    if profile:
        command += ["--profile", profile]
    for key, value in (overrides or {}).items():
        command += ["--set", f"{key}={value}"]
    command += list(extra_args)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        # Its own process group, so stop() also reaches the LLM server it starts.
        start_new_session=True,
        preexec_fn=_die_with_this_process,
    )
    agent = AgentProcess(f"http://127.0.0.1:{port}", process, log_path, command)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"agent exited with code {process.returncode}: {' '.join(command)}\n"
                + agent.log_tail()
            )
        try:
            with urllib.request.urlopen(agent.url + "/", timeout=2) as response:
                if response.status == 200:
                    return agent
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    agent.stop()
    raise RuntimeError(f"agent not ready after {ready_timeout:.0f} s\n" + agent.log_tail())
