"""The ASR engine over WebSocket: one stream per connection, health and metrics on the same port.

One asyncio loop serves every connection; the engine's scheduler thread does the model work, so
nothing here blocks. Each connection has a receive loop (audio in, control messages), a task that
forwards the engine's partial transcripts, a sender task (one writer per socket) and an idle
watchdog. Whatever a connection does wrong is answered on that connection only.

Admission (auth, stream limit, overload, shutdown), ``/health``, ``/ready`` and ``/metrics`` live
in :class:`ASRServer`; the session protocol runs on a transport-free connection
(``transport.Connection``). ``ASRServer.start`` binds the ``websockets`` front end; a Ray Serve
replica (``services/asr/serve/``) feeds Starlette WebSockets to :meth:`ASRServer.handle` instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import protocol as P
from .metrics import front_counters, render_metrics
from .transport import Connection, ConnectionLost, WebsocketsConnection, query_token, split_path

logger = logging.getLogger(__name__)
# The websockets library logs every plain HTTP answer (/health, /metrics) as "connection
# rejected" at INFO; keep its log for warnings and errors.
_ws_logger = logging.getLogger(f"{__name__}.websockets")
_ws_logger.setLevel(logging.WARNING)


@dataclass
class ServerConfig:
    """Limits and network settings of an :class:`ASRServer`.

    Attributes:
        host: Interface to bind; 127.0.0.1 unless you mean to serve other machines.
        port: TCP port (0 picks a free one; read :attr:`ASRServer.port`).
        token: Bearer token clients must present (header or ``?token=``); None: no auth.
        max_streams: Concurrent streams; more connections are closed with 1013.
        max_message_bytes: Largest message accepted; bigger ones close the socket with 1009.
        idle_timeout: Seconds without any message before the server closes the connection.
        max_audio_rate: Sustained audio rate allowed, as a multiple of real time.
        audio_burst_s: Audio (seconds) a client may send ahead of that rate.
        max_text_per_s: Sustained control messages per second.
        text_burst: Control messages allowed in a burst.
        max_errors: Protocol errors on one connection before it is closed with 1008.
        max_pending_events: Events queued for a slow reader before partials are dropped.
        max_inflight_finals: Finalize requests one connection may have pending at once.
        finalize_timeout: Seconds to wait for the engine to finish a final. A timeout means
            the engine is behind: the server reports itself overloaded (new connections get
            1013, ``/ready`` 503) for ``overload_hold_s``, and a connection whose finals time
            out ``shed_after_timeouts`` times in a row is closed with 1013, dropping its
            backlog so the engine can recover.
        overload_hold_s: How long one final timeout keeps the server in the overloaded state.
        shed_after_timeouts: Consecutive final timeouts after which a connection is shed.
        ping_interval: Seconds between keepalive pings (a vanished peer is dropped after
            ``ping_interval + ping_timeout``; a closed socket is noticed at once).
        ping_timeout: Seconds to wait for a pong.
        reuse_port: Bind with SO_REUSEPORT, so several front-end processes share the port
            (the kernel spreads new connections over them).
        front_end: Index of this front end among them (0: the main process); reported in
            ``ready`` and ``/health``.
        replica: Name of this server among the replicas behind one endpoint, reported in
            ``ready`` and ``/health`` (None: ``hostname:pid``; a Ray Serve replica uses its id).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_streams: int = 256
    max_message_bytes: int = 64 * 1024
    idle_timeout: float = 30.0
    max_audio_rate: float = 4.0
    audio_burst_s: float = 10.0
    max_text_per_s: float = 20.0
    text_burst: int = 100
    max_errors: int = 200
    max_pending_events: int = 256
    max_inflight_finals: int = 4
    finalize_timeout: float = 5.0
    overload_hold_s: float = 10.0
    shed_after_timeouts: int = 2
    ping_interval: float | None = 10.0
    ping_timeout: float | None = 10.0
    reuse_port: bool = False
    front_end: int = 0
    replica: str | None = None


@dataclass(frozen=True)
class HttpAnswer:
    """A plain HTTP answer of the server (a probe, or a refused WebSocket upgrade)."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


class _TokenBucket:
    """Allows ``rate`` units per second with bursts of up to ``burst`` units."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.capacity = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, amount: float) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if amount > self.tokens:
            return False
        self.tokens -= amount
        return True


@dataclass
class _Counters:
    connections_total: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)
    closed: collections.Counter = field(default_factory=collections.Counter)
    events: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    audio_seconds: float = 0.0
    dropped_partials: int = 0
    # Recent samples (seconds) for summaries: engine latency of partials, time to final.
    partial_latency: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=4096)
    )
    final_latency: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1024))


class ASRServer:
    """Serves one engine to many WebSocket clients.

    Example::

        server = ASRServer(engine, ServerConfig(port=0))
        await server.start()
        ...  # ws://127.0.0.1:{server.port}/v1/stream
        await server.stop()
    """

    def __init__(self, engine: Any, config: ServerConfig | None = None) -> None:
        """Initialize the server.

        Args:
            engine: An ``ASREngine`` (``open_stream``, ``stats``, ``sample_rate``).
            config: Network settings and limits.
        """
        self.engine = engine
        self.config = config or ServerConfig()
        if getattr(engine, "sample_rate", P.SAMPLE_RATE) != P.SAMPLE_RATE:
            raise ValueError(f"the engine must take {P.SAMPLE_RATE} Hz audio")
        self.counters = _Counters()
        self._server: Server | None = None
        self._connections: dict[int, _Connection] = {}
        self._ids = itertools.count(1)
        self._started_at = time.time()
        self._stopping = False
        self._overloaded_until = 0.0
        # Set by whoever runs more front ends beside this one until they are all serving.
        self.starting_reason: str | None = None
        self.replica = self.config.replica or f"{socket.gethostname()}:{os.getpid()}"

    # ---- lifecycle ----

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None:
            return self.config.port
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """``ws://host:port/v1/stream`` of this server."""
        return f"ws://{self.config.host}:{self.port}/v1/stream"

    @property
    def overloaded(self) -> bool:
        """A final timed out within the last ``overload_hold_s`` seconds."""
        return time.monotonic() < self._overloaded_until

    def note_overload(self) -> None:
        """The engine missed a final's deadline: refuse new streams for a while."""
        if not self.overloaded:
            logger.warning("ASR engine is behind (a final timed out): refusing new streams")
        self._overloaded_until = time.monotonic() + self.config.overload_hold_s

    @property
    def live_streams(self) -> int:
        """Connections holding an engine stream right now."""
        return len(self._connections)

    async def start(self) -> None:
        """Bind and start accepting connections."""
        cfg = self.config
        self._stopping = False
        share = getattr(self.engine, "share_front_stats", None)
        if share is not None:  # an engine process other front ends may share (--workers)
            share(cfg.front_end, lambda: front_counters(self))
        self._server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            max_size=cfg.max_message_bytes,
            max_queue=64,
            # Audio does not compress: permessage-deflate cost ~10% of the loop's CPU.
            compression=None,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            close_timeout=2,
            logger=_ws_logger,
            reuse_port=cfg.reuse_port or None,
        )
        logger.info(
            "ASR server listening on ws://%s:%d/v1/stream and /v1/realtime (max %d streams, "
            "auth %s)",
            cfg.host,
            self.port,
            cfg.max_streams,
            "on" if cfg.token else "off",
        )

    async def stop(self) -> None:
        """Tell every client the server is going away, close them (1001) and stop."""
        self._stopping = True
        if self._server is not None:
            self._server.close(close_connections=False)
        for conn in list(self._connections.values()):
            await conn.shutdown()
        if self._server is None:
            return  # connections of another front end (handle()) are closed; nothing bound
        self._server.close(close_connections=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None

    async def serve_forever(self) -> None:
        """Start (if needed) and run until cancelled."""
        if self._server is None:
            await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    # ---- HTTP side: auth, health, readiness, metrics ----

    def authorized(self, headers: Mapping[str, str], query: str = "") -> bool:
        """The request carries the token (``Authorization: Bearer`` or ``?token=``), or none
        is needed."""
        token = self.config.token
        if not token:
            return True
        header = headers.get("Authorization", "") or ""
        presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not presented:
            presented = query_token(query)
        return bool(presented) and hmac.compare_digest(presented.encode(), token.encode())

    def http_answer(
        self, path: str, headers: Mapping[str, str], query: str = ""
    ) -> HttpAnswer | None:
        """What to answer a request for ``path`` over plain HTTP, or None: upgrade it.

        Probes (``/health``, ``/ready``) need no token; ``/metrics`` and the stream paths do.
        Every front end asks this, so all of them answer the same statuses and bodies.
        """
        path = path.rstrip("/") or "/"
        if path == "/health":
            return HttpAnswer(HTTPStatus.OK, self.health(), "application/json")
        if path == "/ready":
            ready, body = self.readiness()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            return HttpAnswer(status, body, "application/json")
        if path == "/metrics":
            if not self.authorized(headers, query):
                return _UNAUTHORIZED
            return HttpAnswer(HTTPStatus.OK, self.metrics_text(), "text/plain; version=0.0.4")
        if path not in P.STREAM_PATHS and path != P.REALTIME_PATH:
            return HttpAnswer(HTTPStatus.NOT_FOUND, f"no such path {path!r}")
        return self.refuse_upgrade(headers, query)

    def refuse_upgrade(self, headers: Mapping[str, str], query: str = "") -> HttpAnswer | None:
        """The HTTP answer that refuses a WebSocket upgrade (401), or None: accept it."""
        if not self.authorized(headers, query):
            self.counters.rejected["unauthorized"] += 1
            return _UNAUTHORIZED
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, query = split_path(request.path)
        answer = self.http_answer(path, request.headers, query)
        return None if answer is None else _respond(connection, answer)

    def health(self) -> str:
        """JSON for ``/health``: the process is up; counts and limits."""
        return json.dumps(
            {
                "status": "ok",
                "front_end": self.config.front_end,
                "replica": self.replica,
                "live_streams": self.live_streams,
                "max_streams": self.config.max_streams,
                "uptime_s": round(time.time() - self._started_at, 1),
                "protocol": P.PROTOCOL_VERSION,
            }
        )

    def readiness(self) -> tuple[bool, str]:
        """(ready, JSON) for ``/ready``: the engine answers and a slot is free."""
        reason = ""
        try:
            stats = self.engine.stats()
        except Exception as exc:  # an engine that cannot report is not ready
            stats, reason = {}, f"engine stats failed: {exc}"
        if not reason and self._stopping:
            reason = "shutting down"
        if not reason and self.starting_reason:
            reason = self.starting_reason
        if not reason and self.live_streams >= self.config.max_streams:
            reason = "all stream slots are in use"
        if not reason and self.overloaded:
            reason = "overloaded: the engine is behind real time"
        body = {"ready": not reason, "live_streams": self.live_streams}
        if reason:
            body["reason"] = reason
        for key in ("live_streams", "max_streams", "device", "model"):
            if key in stats and key != "live_streams":
                body[f"engine_{key}"] = stats[key]
        return not reason, json.dumps(body, default=str)

    def metrics_text(self) -> str:
        """Prometheus text exposition of server counters and engine stats."""
        try:
            stats = self.engine.stats()
        except Exception:
            stats = {}
        return render_metrics(self, stats)

    # ---- WebSocket side ----

    async def _handle(self, ws: ServerConnection) -> None:
        await self.handle(WebsocketsConnection(ws))

    async def handle(self, ws: Connection) -> None:
        """Serve one accepted connection (already authorized) until it closes: admission,
        then the stream protocol its path names."""
        self.counters.connections_total += 1
        realtime = ws.path == P.REALTIME_PATH
        if self._stopping:
            await _refuse(
                ws, P.E_SHUTTING_DOWN, "server is shutting down", P.CLOSE_GOING_AWAY, realtime
            )
            return
        if self.live_streams >= self.config.max_streams:
            self.counters.rejected["server_full"] += 1
            await _refuse(
                ws,
                P.E_SERVER_FULL,
                f"all {self.config.max_streams} stream slots are in use; try again later",
                P.CLOSE_TRY_AGAIN_LATER,
                realtime,
            )
            return
        if self.overloaded:
            self.counters.rejected["overloaded"] += 1
            await _refuse(
                ws,
                P.E_OVERLOADED,
                "the ASR engine is behind real time; try again later",
                P.CLOSE_TRY_AGAIN_LATER,
                realtime,
            )
            return
        conn_id = next(self._ids)
        try:
            stream = self.engine.open_stream()
        except Exception as exc:
            full = type(exc).__name__ == "EngineFullError"
            self.counters.rejected["server_full" if full else "engine_error"] += 1
            await _refuse(
                ws,
                P.E_SERVER_FULL if full else P.E_ENGINE,
                f"engine refused a stream: {exc}",
                P.CLOSE_TRY_AGAIN_LATER if full else P.CLOSE_INTERNAL,
                realtime,
            )
            return
        if realtime:
            from .realtime import RealtimeConnection  # imports this module: import it late

            conn: _Connection = RealtimeConnection(self, ws, stream, conn_id)
        else:
            conn = _Connection(self, ws, stream, conn_id)
        self._connections[conn_id] = conn
        try:
            await conn.run()
        finally:
            # The slot is freed the moment the socket is gone, whatever ended it.
            self._connections.pop(conn_id, None)
            conn.close_stream()
            code = ws.close_code if ws.close_code is not None else 1006
            self.counters.closed[str(code)] += 1


class _Connection:
    """One client: its engine stream, its clocks and its limits."""

    def __init__(self, server: ASRServer, ws: Connection, stream: Any, conn_id: int) -> None:
        self.server = server
        self.cfg = server.config
        self.ws = ws
        self.stream = stream
        self.id = conn_id
        self.received_samples = 0
        # Connection-clock offset (seconds) of each engine utterance: reset restarts its clock.
        self.utterance = 0
        self.utterance_offset: dict[int, float] = {0: 0.0}
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.last_activity = time.monotonic()
        self.audio_bucket = _TokenBucket(self.cfg.max_audio_rate, self.cfg.audio_burst_s)
        self.text_bucket = _TokenBucket(self.cfg.max_text_per_s, float(self.cfg.text_burst))
        self.errors = 0
        self.error_bucket = _TokenBucket(10.0, 20.0)  # error events sent, not errors counted
        self.started = False
        self.inflight_finals = 0
        self.final_timeouts = 0
        self.tasks: set[asyncio.Task] = set()
        self.closing = False
        self.stream_closed = False

    # -- helpers --

    def error_event(self, code: str, message: str, *, fatal: bool = False, **extra: Any) -> dict:
        """An error event in this connection's protocol (overridden by other protocols)."""
        return P.error_event(code, message, fatal=fatal, **extra)

    def greeting(self) -> dict[str, Any]:
        """The first event sent on the connection."""
        return {
            "type": "ready",
            "protocol": P.PROTOCOL_VERSION,
            "stream_id": str(getattr(self.stream, "id", self.id)),
            "sample_rate": P.SAMPLE_RATE,
            "encoding": P.ENCODING,
            "channels": P.CHANNELS,
            "max_message_bytes": self.cfg.max_message_bytes,
            "idle_timeout_s": self.cfg.idle_timeout,
            "front_end": self.cfg.front_end,
            "replica": self.server.replica,
        }

    @property
    def received_s(self) -> float:
        return self.received_samples / P.SAMPLE_RATE

    def close_stream(self) -> None:
        if not self.stream_closed:
            self.stream_closed = True
            with contextlib.suppress(Exception):
                self.stream.close()

    def send(self, event: dict[str, Any]) -> None:
        """Queue an event for the sender task; partials are dropped for a reader that lags."""
        if event["type"] == "partial" and self.outbox.qsize() >= self.cfg.max_pending_events:
            self.server.counters.dropped_partials += 1
            return
        self.server.counters.events[event["type"]] += 1
        self.outbox.put_nowait(event)

    def error(self, code: str, message: str) -> None:
        """Count a protocol error, tell the client (throttled), close on too many."""
        self.errors += 1
        self.server.counters.errors[code] += 1
        if self.errors > self.cfg.max_errors:
            self.send(
                self.error_event(
                    P.E_TOO_MANY_ERRORS, f"more than {self.cfg.max_errors} errors", fatal=True
                )
            )
            self._close_soon(P.CLOSE_POLICY, "too many errors")
            return
        if self.error_bucket.take(1):
            self.send(self.error_event(code, message))

    def offset_of(self, ev: Any) -> float:
        """Connection-clock time (seconds) at which ``ev``'s utterance began."""
        utterance = int(getattr(ev, "utterance", self.utterance))
        return self.utterance_offset.get(utterance, self.utterance_offset[self.utterance])

    def _to_event(self, kind: str, ev: Any, **extra: Any) -> dict[str, Any]:
        offset = self.offset_of(ev)
        event = {
            "type": kind,
            "utterance": int(getattr(ev, "utterance", self.utterance)),
            "text": ev.text,
            "audio_start_s": round(offset + float(ev.audio_start_s), P.CLOCK_DECIMALS),
            "audio_end_s": round(offset + float(ev.audio_end_s), P.CLOCK_DECIMALS),
            "latency_s": round(float(ev.latency_s or 0.0), 4),
            "received_s": round(self.received_s, P.CLOCK_DECIMALS),
            "server_time": time.time(),
            **extra,
        }
        words = P.word_times(getattr(ev, "words", None), offset)
        if words is not None:
            event["words"] = words
        return event

    # -- tasks --

    def _spawn(self, coro) -> None:
        """Run ``coro`` as a task of this connection (cancelled when it ends)."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _close_soon(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self._spawn(self._close_after_flush(code, reason))

    async def run(self) -> None:
        for coro in (self._sender(), self._forward_partials(), self._watchdog()):
            self._spawn(coro)
        self.send(self.greeting())
        try:
            async for message in self.ws:
                self.last_activity = time.monotonic()
                if self.closing:
                    continue  # closing after a fatal error: nothing more is processed
                if isinstance(message, bytes):
                    self._on_audio(message)
                else:
                    self._on_text(message)
        except ConnectionLost:
            pass
        finally:
            self.close_stream()
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _on_audio(self, data: bytes) -> None:
        if not data:
            return
        if len(data) % 2:
            self.error(
                P.E_BAD_AUDIO, f"binary message of {len(data)} bytes: send whole 16-bit samples"
            )
            return
        if not self.audio_bucket.take(len(data) / P.BYTES_PER_SECOND):
            self.error(
                P.E_RATE_LIMITED,
                f"audio faster than {self.cfg.max_audio_rate:g}x real time; excess dropped",
            )
            return
        try:
            self.stream.push_audio(data)
        except Exception as exc:
            if type(exc).__name__ != "EngineOverloadedError":
                self.error(P.E_ENGINE, f"engine rejected audio: {exc}")
                return
            # Behind real time by more than the engine's backlog bound: shed this stream so
            # the others keep up, and tell the client to come back later.
            self.server.note_overload()
            self.server.counters.errors[P.E_OVERLOADED] += 1
            self.send(self.error_event(P.E_OVERLOADED, str(exc), fatal=True))
            self._close_soon(P.CLOSE_TRY_AGAIN_LATER, "overloaded")
            return
        self.received_samples += len(data) // 2
        self.server.counters.audio_seconds += len(data) / P.BYTES_PER_SECOND

    def _on_text(self, text: str) -> None:
        if not self.text_bucket.take(1):
            self.error(P.E_RATE_LIMITED, "too many control messages; message dropped")
            return
        try:
            message = P.parse_client_message(text)
        except P.ProtocolError as exc:
            if exc.code == P.E_UNSUPPORTED_FORMAT:
                self.server.counters.errors[exc.code] += 1
                self.send(self.error_event(exc.code, exc.message, fatal=True))
                self._close_soon(P.CLOSE_UNSUPPORTED, exc.code)
            else:
                self.error(exc.code, exc.message)
            return
        kind = message["type"]
        if kind == "start":
            if self.started or self.received_samples:
                self.error(P.E_BAD_MESSAGE, "start must be the first message and sent once")
            self.started = True
        elif kind == "finalize":
            if self.inflight_finals >= self.cfg.max_inflight_finals:
                self.error(P.E_RATE_LIMITED, "too many finalize requests pending")
                return
            self.inflight_finals += 1
            self._spawn(self._finalize(message.get("id")))
        elif kind == "reset":
            self._reset()
        elif kind == "ping":
            self.send({"type": "pong", "id": message.get("id"), "server_time": time.time()})

    def _reset(self) -> None:
        try:
            self.stream.reset()
        except Exception as exc:
            self.error(P.E_ENGINE, f"reset failed: {exc}")
            return
        self.utterance += 1
        self.utterance_offset[self.utterance] = self.received_s
        # Only the current and the previous utterance can still have events in flight.
        for old in [u for u in self.utterance_offset if u < self.utterance - 1]:
            del self.utterance_offset[old]
        self.send(
            {
                "type": "reset",
                "utterance": self.utterance,
                "audio_start_s": round(self.received_s, P.CLOCK_DECIMALS),
            }
        )

    async def _finalize(self, ident: Any) -> None:
        requested = time.perf_counter()
        utterance = self.utterance
        try:
            ev = await asyncio.wait_for(self.stream.finalize(), self.cfg.finalize_timeout)
        except Exception as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            reason = "timed out" if timed_out else str(exc)
            self.error(P.E_ENGINE, f"finalize failed: {reason}")
            self.send({**self.error_event(P.E_ENGINE, f"finalize failed: {reason}"), "id": ident})
            if timed_out:
                self._on_final_timeout()
            return
        finally:
            self.inflight_finals -= 1
        self.final_timeouts = 0
        took = time.perf_counter() - requested
        self.server.counters.final_latency.append(took)
        if getattr(ev, "utterance", utterance) < self.utterance - 1:
            logger.debug("connection %d: final of an old utterance dropped", self.id)
        self.send(self._to_event("final", ev, id=ident, finalize_s=round(took, 4)))

    def _on_final_timeout(self) -> None:
        self.server.note_overload()
        self.final_timeouts += 1
        if self.final_timeouts >= self.cfg.shed_after_timeouts:
            self.server.counters.errors[P.E_OVERLOADED] += 1
            self.send(
                self.error_event(
                    P.E_OVERLOADED,
                    "the ASR engine is behind real time; closing this stream, reconnect later",
                    fatal=True,
                )
            )
            self._close_soon(P.CLOSE_TRY_AGAIN_LATER, "overloaded")

    def on_partial(self, ev: Any) -> None:
        """Send one of the engine's partial transcripts (this protocol: a ``partial`` event)."""
        self.send(self._to_event("partial", ev))

    async def _forward_partials(self) -> None:
        try:
            async for ev in self.stream.events():
                if getattr(ev, "is_final", False):
                    continue
                self.server.counters.partial_latency.append(float(ev.latency_s or 0.0))
                self.on_partial(ev)
        except Exception as exc:  # the engine failed this stream: tell the client, close
            if self.stream_closed:
                return
            logger.exception("connection %d: engine stream failed", self.id)
            self.send(self.error_event(P.E_ENGINE, f"engine stream failed: {exc}", fatal=True))
            await self._close_after_flush(P.CLOSE_INTERNAL, "engine error")

    async def _sender(self) -> None:
        while True:
            event = await self.outbox.get()
            try:
                await self.ws.send(P.dumps(event))
            except ConnectionLost:
                return

    async def _watchdog(self) -> None:
        timeout = self.cfg.idle_timeout
        if not timeout or timeout <= 0:
            return
        while True:
            idle = time.monotonic() - self.last_activity
            if idle >= timeout:
                self.server.counters.errors[P.E_IDLE_TIMEOUT] += 1
                self.send(
                    self.error_event(
                        P.E_IDLE_TIMEOUT, f"nothing received for {timeout:g} s", fatal=True
                    )
                )
                await self._close_after_flush(P.CLOSE_IDLE, "idle timeout")
                return
            await asyncio.sleep(min(timeout - idle, 1.0) + 0.01)

    async def _close_after_flush(self, code: int, reason: str) -> None:
        """Let the sender write what is queued (bounded), then close with ``code``."""
        self.closing = True
        deadline = time.monotonic() + 1.0
        while not self.outbox.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.close_stream()
        await self.ws.close(code, reason)

    async def shutdown(self) -> None:
        self.send(self.error_event(P.E_SHUTTING_DOWN, "server is shutting down", fatal=True))
        await self._close_after_flush(P.CLOSE_GOING_AWAY, "server shutting down")


_UNAUTHORIZED = HttpAnswer(
    HTTPStatus.UNAUTHORIZED,
    "missing or wrong token: send 'Authorization: Bearer <token>' or ?token=<token>",
    headers={"WWW-Authenticate": "Bearer"},
)


def _respond(connection: ServerConnection, answer: HttpAnswer) -> Response:
    body = answer.body if answer.body.endswith("\n") else answer.body + "\n"
    response = connection.respond(HTTPStatus(answer.status), body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = answer.content_type
    for name, value in answer.headers.items():
        response.headers[name] = value
    return response


async def _refuse(
    ws: Connection, code: str, message: str, close_code: int, realtime: bool = False
) -> None:
    event = P.error_event(code, message, fatal=True)
    if realtime:  # OpenAI's shape for Realtime clients
        kind = "invalid_request_error" if close_code == P.CLOSE_TRY_AGAIN_LATER else "server_error"
        error = {"type": kind, "code": code, "message": message, "param": None, "event_id": None}
        event = {"type": "error", "event_id": f"event_refused_{code}", "error": error}
    with contextlib.suppress(ConnectionLost):
        await ws.send(P.dumps(event))
    await ws.close(close_code, code)


__all__ = ["ASRServer", "HttpAnswer", "ServerConfig", "Headers"]
