"""The child-process side of :class:`~services.asr.engine.process.EngineProcess`.

The process runs one :class:`ASREngine` and nothing else, so the engine's scheduler thread never
competes for the interpreter lock with a busy network loop. It serves one or more front ends,
each over its own socket with two threads: one reads operation batches and applies them (each
only appends to a stream's inbox), one batches results back. The scheduler thread runs the
model for all of them. Operations and results are described in ``process.py``.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import wire
from .config import EngineConfig
from .events import EngineFullError, EngineOverloadedError, StreamClosedError

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.5


def run_engine_worker(
    config: EngineConfig,
    socks: socket.socket | list[socket.socket],
    init: Callable[[], None] | None = None,
    torch_threads: int | None = None,
) -> None:
    """Entry point of the engine process: load, serve every connection until all close."""
    # Ctrl-C reaches the whole process group; the front end decides when the engine stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if init is not None:
        init()
    socks = socks if isinstance(socks, list) else [socks]
    try:
        import torch

        from .engine import ASREngine

        if torch_threads:
            torch.set_num_threads(torch_threads)
        engine = ASREngine(config)
    except BaseException as exc:  # report why, so the front ends can tell the user
        loader = sys.modules.get(f"{__package__}.loader")  # not loaded: not a ModelLoadError
        if loader is not None and isinstance(exc, loader.ModelLoadError):
            # The user's to fix, and its message says how; the front end reports it, so a
            # traceback here would only bury it (kept for DEBUG).
            logger.debug("ASR engine failed to start", exc_info=True)
            reason = str(exc)
        else:
            logger.exception("ASR engine failed to start")
            reason = f"{type(exc).__name__}: {exc}"
        for sock in socks:
            _send_now(sock, [("fatal", reason)])
        return
    fronts: dict[int, dict] = {}  # front end -> its latest counters, for every /metrics
    threads = [
        threading.Thread(target=_serve_connection, args=(engine, sock, fronts), daemon=True)
        for sock in socks
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.shutdown()


def _serve_connection(engine: Any, sock: socket.socket, fronts: dict[int, dict]) -> None:
    """One front end: its streams, its results; returns when it closes the socket."""
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    sender = threading.Thread(
        target=_send_loop, args=(sock, outbox, engine, fronts), name="engine-sender", daemon=True
    )
    sender.start()
    outbox.put(("ready", {"pid": os.getpid(), **engine.stats()}))
    dispatcher = _Dispatcher(engine, outbox, fronts)
    dispatcher.serve(sock)
    if dispatcher.front_end is not None:  # its counters no longer add to the others'
        fronts.pop(dispatcher.front_end, None)
    for stream in list(dispatcher.streams.values()):  # the front end is gone: free its slots
        stream.close()
    outbox.put(None)
    sender.join(5)


class _Dispatcher:
    """Applies the front end's operations to the engine (main thread of the process)."""

    def __init__(self, engine: Any, outbox: queue.SimpleQueue, fronts: dict[int, dict]) -> None:
        self.engine = engine
        self.outbox = outbox
        self.fronts = fronts
        self.front_end: int | None = None
        self.streams: dict[int, Any] = {}
        self.overloaded: set[int] = set()

    def serve(self, sock: socket.socket) -> None:
        while True:
            try:
                ops = wire.recv_frame(sock)
            except OSError:
                ops = None
            if ops is None:  # the front end is gone (or asked us to stop by closing)
                return
            for op in ops:
                try:
                    getattr(self, "op_" + op[0])(*op[1:])
                except Exception as exc:  # one stream's trouble never stops the others
                    logger.exception("engine process: operation %s failed", op[0])
                    if len(op) > 1:
                        self.outbox.put(("stream_error", op[1], "engine", str(exc)))

    def op_open(self, sid: int) -> None:
        def on_event(event, sid=sid) -> None:  # scheduler thread: only a queue put
            self.outbox.put(("partial", sid, event))

        try:
            self.streams[sid] = self.engine.open_stream(on_event=on_event)
        except (EngineFullError, StreamClosedError) as exc:
            self.outbox.put(("stream_error", sid, "full", str(exc)))

    def op_audio(self, sid: int, data: bytes) -> None:
        stream = self.streams.get(sid)
        if stream is None or sid in self.overloaded:
            return
        try:
            stream.push_audio(data)
        except EngineOverloadedError as exc:
            self.overloaded.add(sid)
            self.outbox.put(("stream_error", sid, "overloaded", str(exc)))

    def op_final(self, sid: int, rid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            self.outbox.put(("final_error", sid, rid, "stream is closed"))
            return

        def done(future, sid=sid, rid=rid) -> None:
            exc = future.exception()
            if exc is None:
                self.outbox.put(("final", sid, rid, future.result()))
            else:
                self.outbox.put(("final_error", sid, rid, str(exc)))

        stream.request_final().add_done_callback(done)

    def op_reset(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.reset()

    def op_front_stats(self, front_end: int, counters: dict) -> None:
        self.front_end = front_end
        self.fronts[front_end] = counters

    def op_close(self, sid: int) -> None:
        self.overloaded.discard(sid)
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.close()


def _send_loop(
    sock: socket.socket, outbox: queue.SimpleQueue, engine: Any, fronts: dict[int, dict]
) -> None:
    """Send results in batches (whatever queued up while the last batch was written).

    ``None`` in the outbox sends what came before it and stops.
    """
    next_stats = 0.0
    stop = False
    while not stop:
        batch = []
        try:
            batch.append(outbox.get(timeout=STATS_INTERVAL_S))
            while True:
                batch.append(outbox.get_nowait())
        except queue.Empty:
            pass
        if None in batch:
            stop = True
            batch = batch[: batch.index(None)]
        now = time.monotonic()
        if now >= next_stats:
            next_stats = now + STATS_INTERVAL_S
            try:
                batch.append(("stats", {**engine.stats(), "front_ends": dict(fronts)}))
            except Exception:
                logger.exception("engine stats failed")
        if batch and not _send_now(sock, batch):
            return


def _send_now(sock: socket.socket, ops: list) -> bool:
    try:
        sock.sendall(wire.encode(ops))
        return True
    except OSError:
        return False
