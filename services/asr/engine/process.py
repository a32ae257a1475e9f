"""EngineProcess: the ASR engine in a child process, behind the engine's own interface.

Why a process: a server's event loop handles thousands of small audio messages per second, and
the engine's scheduler thread makes hundreds of short torch calls per tick. In one process they
pass the interpreter lock back and forth on every torch call, and each tick waits for the loop.
On 2 CPU cores that made a tick 3-6x slower than the same tick alone and the server fell behind
real time at 64 streams; in its own process the engine runs at full speed.

The front end (this module, on the caller's asyncio loop) batches what streams send: audio of
one stream is merged and written at most every ``flush_interval_s``; control operations
(finalize, reset, close) go out on the next loop iteration. The child (``worker.py``) answers
with partials, finals, errors and a stats snapshot every 0.5 s.

Operations, front end -> engine: ``("open", sid)``, ``("audio", sid, bytes)``,
``("final", sid, request_id)``, ``("reset", sid)``, ``("close", sid)``. Results, engine -> front
end: ``("ready", stats)``, ``("fatal", message)``, ``("partial", sid, TranscriptEvent)``,
``("final", sid, request_id, TranscriptEvent)``, ``("final_error", sid, request_id, message)``,
``("stream_error", sid, kind, message)``, ``("stats", dict)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from services.lifetime import on_lasting_thread, run_as_child

from . import wire
from .config import EngineConfig
from .events import (
    SAMPLE_RATE,
    EngineFullError,
    EngineOverloadedError,
    StreamClosedError,
    TranscriptEvent,
    to_pcm16,
)
from .worker import run_engine_worker

logger = logging.getLogger(__name__)


class EngineProcessError(RuntimeError):
    """The engine process failed to start, or exited while serving."""


class EngineProcess:
    """An ``ASREngine`` in a child process; use it from one asyncio loop.

    Example::

        engine = EngineProcess(EngineConfig(model="model.nemo", device="cpu"))
        await engine.start()          # loads the model in the child
        stream = engine.open_stream()
        stream.push_audio(pcm)
        final = await stream.finalize()
        await engine.aclose()
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        torch_threads: int | None = None,
        init: Callable[[], None] | None = None,
        flush_interval_s: float = 0.004,
        start_timeout_s: float = 900.0,
    ) -> None:
        """Describe the engine process; nothing starts until :meth:`start`.

        Args:
            config: Engine settings (the model loads in the child).
            torch_threads: torch intra-op threads of the child (None: torch's default).
            init: Picklable callable run first in the child (logging set-up).
            flush_interval_s: Longest time audio waits in the front end before it is sent.
            start_timeout_s: Longest wait for the model to load.
        """
        self.config = config or EngineConfig()
        self._torch_threads = torch_threads
        self._init = init
        self._flush_interval = flush_interval_s
        self._start_timeout = start_timeout_s
        self._process: multiprocessing.process.BaseProcess | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[int, ProcessStream] = {}
        self._ids = itertools.count(1)
        self._ops: list[tuple] = []
        self._open_audio: dict[int, bytearray] = {}  # stream -> its audio op in ``_ops``
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._stats: dict[str, Any] = {}
        self._stats_at = 0.0
        self._engine_pid: int | None = None
        self.spare_sockets: list[socket.socket] = []
        self._spawned_sock: socket.socket | None = None
        self._first_ops: list[tuple] | None = None  # the child's first message, read early
        self._front: tuple[int, Callable[[], dict]] | None = None
        self._dead: str | None = None
        self._closing = False

    # ---------------- lifecycle ----------------

    @property
    def chunk_ms(self) -> int:
        return self.config.chunk_ms

    @property
    def pid(self) -> int | None:
        """The engine process's id (None before :meth:`start` or :meth:`attach`)."""
        return self._process.pid if self._process else self._engine_pid

    @property
    def is_shutdown(self) -> bool:
        return self._closing or self._dead is not None

    async def start(self, *, extra_connections: int = 0) -> None:
        """Start the child and wait until its engine is loaded and warmed up.

        Args:
            extra_connections: More connections to the same engine, for other processes (each
                runs its own ``EngineProcess.attach``); take them from :attr:`spare_sockets`.

        Raises:
            EngineProcessError: the model failed to load (the child's reason is in the message)
                or the child died or did not become ready in ``start_timeout_s``.
        """
        if self._process is None:
            self.spawn(extra_connections=extra_connections)
        elif extra_connections:
            raise ValueError("extra_connections must be given to spawn(), which already ran")
        sock, self._spawned_sock = self._spawned_sock, None
        await self.attach(sock)

    def spawn(self, *, extra_connections: int = 0) -> None:
        """Start the child now, without an event loop; :meth:`start` later waits for it.

        The model loads while the caller does other things (the bot's start-up), and the
        event loop that will use the engine attaches once it runs.
        """
        pairs = [socket.socketpair() for _ in range(1 + extra_connections)]
        context = multiprocessing.get_context("spawn")
        socks = [theirs for _, theirs in pairs]
        self._process = context.Process(
            # The child dies with this process, even one killed with SIGKILL.
            target=run_as_child,
            args=(os.getpid(), run_engine_worker, self.config, socks, self._init),
            kwargs={"torch_threads": self._torch_threads},
            name="asr-engine",
            daemon=True,
        )
        on_lasting_thread(self._process.start)
        for _, theirs in pairs:
            theirs.close()
        self._spawned_sock = pairs[0][0]
        self.spare_sockets = [ours for ours, _ in pairs[1:]]
        logger.info("ASR engine process started (pid %d); loading the model...", self._process.pid)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the spawned child has loaded its model (no event loop needed).

        Raises:
            EngineProcessError: the model failed to load, or not within ``timeout``.
        """
        sock = self._spawned_sock
        if sock is None or self._first_ops is not None:
            return
        limit = timeout or self._start_timeout
        sock.settimeout(limit)
        try:
            ops = wire.recv_frame(sock)
        except TimeoutError:
            self._process.kill()
            self._dead = _load_timeout(limit)
            raise EngineProcessError(self._dead) from None
        finally:
            sock.settimeout(None)
        if not _is_ready(ops):
            self._process.join(5)
            self._dead = _start_failure(ops, self._process.exitcode)
            raise EngineProcessError(self._dead)
        self._first_ops = ops

    async def attach(self, sock: socket.socket) -> None:
        """Serve streams over ``sock``, one connection to an engine process started elsewhere.

        Raises:
            EngineProcessError: as :meth:`start`.
        """
        self._loop = asyncio.get_running_loop()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        started = time.monotonic()
        try:
            ops, self._first_ops = self._first_ops, None
            if ops is None:
                ops = await asyncio.wait_for(self._read_frame(), self._start_timeout)
        except TimeoutError:
            if self._process is not None:
                self._process.kill()
            raise EngineProcessError(_load_timeout(self._start_timeout)) from None
        if not _is_ready(ops):
            await self._reap()
            code = self._process.exitcode if self._process is not None else None
            raise EngineProcessError(_start_failure(ops, code))
        self._stats = dict(ops[0][1])
        self._stats_at = time.monotonic()
        self._engine_pid = self._stats.get("pid")
        logger.info(
            "ASR engine process ready in %.1f s (pid %s)", time.monotonic() - started, self.pid
        )
        self._read_task = asyncio.create_task(self._read_loop(), name="asr-engine-reader")

    async def aclose(self, timeout: float = 10.0) -> None:
        """Close every stream and this connection; the child stops when all are closed."""
        if self._closing:
            return
        self._closing = True
        for stream in list(self._streams.values()):
            stream.close()
        self._flush()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
                await self._writer.wait_closed()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task
        await self._reap(timeout)
        logger.info("ASR engine process stopped")

    async def _reap(self, timeout: float = 10.0) -> None:
        process = self._process
        if process is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, process.join, timeout)
        if process.is_alive():
            logger.warning("ASR engine process did not stop in %g s; killing it", timeout)
            process.kill()
            await loop.run_in_executor(None, process.join, 5)

    # ---------------- engine interface ----------------

    def open_stream(self, on_event: Callable[[TranscriptEvent], None] | None = None):
        """Open a stream (on the loop that called :meth:`start`).

        Args:
            on_event: called with each partial ``TranscriptEvent`` on the event loop.

        Raises:
            EngineFullError: ``max_streams`` streams are already open.
            StreamClosedError: the engine process is stopped or gone.
        """
        if self._dead is not None:
            raise StreamClosedError(self._dead)
        if self._closing or self._writer is None:
            raise StreamClosedError("the ASR engine process is not running")
        if len(self._streams) >= self.config.max_streams:
            raise EngineFullError(
                f"{len(self._streams)} streams open: max_streams={self.config.max_streams}"
            )
        sid = next(self._ids)
        stream = ProcessStream(self, sid, on_event)
        self._streams[sid] = stream
        self._send(("open", sid))
        return stream

    def stats(self) -> dict:
        """The child's latest stats (at most 0.5 s old), plus this side's stream count.

        Raises:
            EngineProcessError: the child is gone.
        """
        if self._dead is not None:
            raise EngineProcessError(self._dead)
        return {
            **self._stats,
            "live_streams": len(self._streams),
            "engine_pid": self.pid,
            "stats_age_s": round(time.monotonic() - self._stats_at, 3),
        }

    # ---------------- sending ----------------

    def share_front_stats(self, front_end: int, counters: Callable[[], dict]) -> None:
        """Send ``counters()`` with each stats report, for front ends sharing this engine.

        The engine process hands every front end's latest counters back to all of them in its
        stats (``front_ends``), so any one can report the whole server (``--workers``).
        """
        self._front = (front_end, counters)

    def _send(self, op: tuple) -> None:
        """Queue a stream's control operation; it leaves on the next loop iteration."""
        self._open_audio.pop(op[1], None)  # later audio of that stream must follow it
        self._ops.append(op)
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Flush on the next loop iteration (sooner than a pending audio timer would)."""
        if self._flush_handle is None or isinstance(self._flush_handle, asyncio.TimerHandle):
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = self._loop.call_soon(self._flush)

    def _send_audio(self, sid: int, data: bytes) -> None:
        pending = self._open_audio.get(sid)
        if pending is not None:
            pending += data
        else:
            pending = self._open_audio[sid] = bytearray(data)
            self._ops.append(("audio", sid, pending))
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_later(self._flush_interval, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._ops:
            return
        # Audio ops carry their bytearray as is: nothing appends to it after this point.
        ops, self._ops = self._ops, []
        self._open_audio.clear()
        if self._writer is None or self._dead is not None:
            return
        try:
            self._writer.write(wire.encode(ops))
        except (ConnectionError, RuntimeError) as exc:
            self._on_dead(f"cannot write to the ASR engine process: {exc}")

    # ---------------- receiving ----------------

    async def _read_frame(self) -> list[tuple] | None:
        try:
            header = await self._reader.readexactly(wire.HEADER_SIZE)
            body = await self._reader.readexactly(wire.body_size(header))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return wire.decode(body)

    async def _read_loop(self) -> None:
        try:
            while True:
                ops = await self._read_frame()
                if ops is None:
                    break
                for op in ops:
                    try:
                        self._dispatch(op)
                    except Exception:
                        logger.exception("ASR engine process: bad result %r", op[:2])
        finally:
            if not self._closing:
                await self._reap(2.0)
                code = self._process.exitcode if self._process else None
                self._on_dead(
                    f"the ASR engine process exited (exit code {code}); see its log above"
                )

    def _dispatch(self, op: tuple) -> None:
        kind = op[0]
        if kind == "stats":
            self._stats = op[1]
            self._stats_at = time.monotonic()
            if self._front is not None:
                front_end, counters = self._front
                # Not a stream operation: it needs no ordering, only a flush.
                self._ops.append(("front_stats", front_end, counters()))
                self._flush_soon()
            return
        stream = self._streams.get(op[1])
        if stream is None:
            return  # closed meanwhile
        if kind == "partial":
            stream._on_partial(op[2])
        elif kind == "final":
            stream._on_final(op[2], op[3])
        elif kind == "final_error":
            stream._on_final(op[2], StreamClosedError(op[3]))
        elif kind == "stream_error":
            stream._on_error(op[2], op[3])

    def _on_dead(self, reason: str) -> None:
        if self._dead is not None:
            return
        self._dead = reason
        logger.error(reason)
        for stream in list(self._streams.values()):
            stream._fail(EngineProcessError(reason))
        self._streams.clear()

    def _forget(self, sid: int) -> None:
        if self._streams.pop(sid, None) is not None and self._dead is None and self._writer:
            self._send(("close", sid))


def _is_ready(ops: list[tuple] | None) -> bool:
    return bool(ops) and ops[0][0] == "ready"


def _start_failure(ops: list[tuple] | None, exit_code: int | None) -> str:
    """Why the child did not become ready: its own reason when it sent one."""
    if ops and ops[0][0] == "fatal":
        return f"the ASR engine process failed to start: {ops[0][1]}"
    return (
        f"the ASR engine process failed to start: it exited (exit code {exit_code}); "
        "see the log above"
    )


def _load_timeout(limit: float) -> str:
    return f"the ASR engine process did not load its model in {limit:g} s"


# One engine process per (settings, event loop): every session of a bot process shares it.
_shared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Started before any event loop ran (``prespawn_engine_process``), waiting for one to attach.
_prespawned: dict[EngineConfig, EngineProcess] = {}


def prespawn_engine_process(
    config: EngineConfig, *, init: Callable[[], None] | None = None
) -> EngineProcess:
    """Start loading the shared engine process for ``config`` now (no event loop needed).

    The first :func:`shared_engine_process` call for ``config`` takes it over.
    """
    engine = _prespawned.get(config)
    if engine is None:
        engine = _prespawned[config] = EngineProcess(config, init=init)
        engine.spawn()
    return engine


async def shared_engine_process(
    config: EngineConfig, *, init: Callable[[], None] | None = None
) -> EngineProcess:
    """The running engine process for ``config`` on this event loop, started on first use.

    A process that died is replaced by a new one on the next call (its streams have failed).

    Raises:
        EngineProcessError: the model failed to load in the new process.
    """
    lock, engines = _shared.setdefault(asyncio.get_running_loop(), (asyncio.Lock(), {}))
    async with lock:
        engine = engines.get(config)
        if engine is None or engine.is_shutdown:
            engine = _prespawned.pop(config, None)
            if engine is None or engine.is_shutdown:  # none spawned, or it failed to load
                engine = EngineProcess(config, init=init)
            await engine.start()
            engines[config] = engine
        return engine


class ProcessStream:
    """One stream of an :class:`EngineProcess`; the same methods as ``ASRStream``.

    Audio travels as 16-bit PCM: float arrays are converted (clipped) before they are sent.
    """

    def __init__(
        self,
        engine: EngineProcess,
        sid: int,
        on_event: Callable[[TranscriptEvent], None] | None,
    ) -> None:
        self._engine = engine
        self._sid = sid
        self._on_event = on_event
        self._subscribers: list[asyncio.Queue] = []
        self._finals: dict[int, asyncio.Future] = {}
        self._final_ids = itertools.count(1)
        self._error: Exception | None = None
        self._closed = False
        self.utterance = 0

    @property
    def id(self) -> str:
        return f"p{self._sid}"

    @property
    def closed(self) -> bool:
        return self._closed

    def push_audio(self, pcm: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Append 16 kHz mono audio; never waits.

        Raises:
            ValueError: malformed audio.
            EngineOverloadedError: the engine is further behind than its backlog bound.
            StreamClosedError: after ``close`` (or when the engine process is gone).
        """
        self._check_open()
        data = to_pcm16(pcm)
        if data:
            self._engine._send_audio(self._sid, data)

    async def events(self) -> AsyncIterator[TranscriptEvent]:
        """Partial transcripts of the current utterance; ends when the stream closes.

        Raises:
            EngineProcessError: the engine process died.
        """
        if self._closed:
            if self._error is not None:
                raise self._error
            return
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(queue)

    async def finalize(self) -> TranscriptEvent:
        """Speculative final of the utterance so far (see ``ASRStream.finalize``)."""
        self._check_open(overload_ok=True)
        rid = next(self._final_ids)
        future = asyncio.get_running_loop().create_future()
        self._finals[rid] = future
        self._engine._send(("final", self._sid, rid))
        try:
            return await future
        finally:
            self._finals.pop(rid, None)

    def reset(self) -> None:
        """Accept the utterance; the next one starts fresh (see ``ASRStream.reset``)."""
        self._check_open(overload_ok=True)
        self.utterance += 1
        self._engine._send(("reset", self._sid))

    def close(self) -> None:
        """Free the stream's slot; pending finals fail; ``events()`` ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._fail_finals(StreamClosedError(f"stream {self.id} closed before its final"))
        self._end_events(None)
        self._engine._forget(self._sid)

    # -- called by the engine process proxy --

    def _check_open(self, overload_ok: bool = False) -> None:
        if self._closed:
            raise self._error or StreamClosedError(f"stream {self.id} is closed")
        if self._error is not None and not overload_ok:
            raise self._error

    def _on_partial(self, event: TranscriptEvent) -> None:
        if self._closed or event.utterance != self.utterance:
            return  # in flight across a reset: the old utterance's partials are dropped
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event callback of stream %s failed", self.id)
        for queue in self._subscribers:
            queue.put_nowait(event)

    def _on_final(self, rid: int, result: TranscriptEvent | Exception) -> None:
        future = self._finals.get(rid)
        if future is None or future.done():
            return
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)

    def _on_error(self, kind: str, message: str) -> None:
        if kind == "overloaded":
            self._error = EngineOverloadedError(message)
        elif kind == "full":
            self._fail(EngineFullError(message))
        else:
            self._fail(EngineProcessError(message))

    def _fail(self, exc: Exception) -> None:
        """The engine cannot serve this stream any more: everything waiting gets ``exc``."""
        if self._closed:
            return
        self._closed = True
        self._error = exc
        self._fail_finals(exc)
        self._end_events(exc)
        self._engine._forget(self._sid)

    def _fail_finals(self, exc: Exception) -> None:
        for future in self._finals.values():
            if not future.done():
                future.set_exception(exc)

    def _end_events(self, item: Exception | None) -> None:
        for queue in self._subscribers:
            queue.put_nowait(item)

    def __repr__(self) -> str:
        return f"ProcessStream(id={self.id!r}, closed={self.closed})"
