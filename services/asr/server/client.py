"""A small asyncio client of the ASR server (used by the remote STT service and the load test).

One :class:`ASRClient` is one connection, i.e. one stream. It does not reconnect: callers that
want that (the Pipecat service) wrap it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import protocol as P

EventHandler = Callable[[dict[str, Any]], Awaitable[None] | None]


def http_get(url: str, token: str | None = None, timeout: float = 3.0) -> tuple[int, str]:
    """GET one of the server's HTTP routes (``/ready``, ``/metrics``); blocking.

    Returns:
        ``(status, body)``; an HTTP error status is returned, not raised. Connection errors raise
        ``OSError``.
    """
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class ASRServerError(RuntimeError):
    """The server answered a request with an error event."""

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(f"{event.get('code')}: {event.get('message')}")
        self.event = event
        self.code = event.get("code")


class ASRRejectedError(ConnectionError):
    """The server refused the connection (HTTP status or an immediate close)."""

    def __init__(self, message: str, *, status: int | None = None, close_code: int | None = None):
        super().__init__(message)
        self.status = status
        self.close_code = close_code

    @property
    def permanent(self) -> bool:
        """Retrying cannot help (bad token, wrong path, unsupported format)."""
        return self.status in (401, 403, 404) or self.close_code == P.CLOSE_UNSUPPORTED


class ASRClient:
    """One stream on an ASR server.

    Example::

        client = ASRClient("ws://127.0.0.1:8765/v1/stream", on_event=print)
        await client.connect()
        await client.send_audio(pcm)
        final = await client.finalize()
        await client.close()
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        on_event: EventHandler | None = None,
        open_timeout: float = 5.0,
        start: dict[str, Any] | None = None,
    ) -> None:
        """Initialize the client.

        Args:
            url: ``ws://host:port/v1/stream``.
            token: Bearer token, sent in the Authorization header.
            on_event: Called with every event that does not answer a request (``partial``,
                ``error`` without an id, ``reset``); may be a coroutine function.
            open_timeout: Seconds allowed for the connection and the ``ready`` event.
            start: Extra fields of a ``start`` message sent after connecting (None: no start).
        """
        self.url = url
        self._token = token
        self._on_event = on_event
        self._open_timeout = open_timeout
        self._start = start
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._pending: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.ready: dict[str, Any] | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.last_error: dict[str, Any] | None = None

    @property
    def connected(self) -> bool:
        """Open and not yet closed."""
        return self._ws is not None and not self.closed.is_set()

    async def connect(self) -> dict[str, Any]:
        """Open the connection and wait for ``ready``.

        Returns:
            The ``ready`` event.

        Raises:
            ASRRejectedError: The server refused (full, bad token...).
            OSError, TimeoutError: The server cannot be reached.
        """
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        try:
            self._ws = await asyncio.wait_for(
                connect(
                    self.url,
                    additional_headers=headers,
                    open_timeout=self._open_timeout,
                    max_size=4 * 1024 * 1024,
                    # PCM does not compress; deflate would only cost CPU on both ends.
                    compression=None,
                    ping_interval=10,
                    ping_timeout=10,
                    close_timeout=2,
                ),
                self._open_timeout + 1,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ASRRejectedError(
                f"server refused the connection: HTTP {status}", status=status
            ) from None
        try:
            first = await asyncio.wait_for(self._ws.recv(), self._open_timeout)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            raise ASRRejectedError(
                f"server closed the connection ({code})", close_code=code
            ) from None
        event = json.loads(first)
        if event.get("type") != "ready":
            # A refusal: an error event, then a close (1013 when full).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.wait_closed(), 2)
            code = self._ws.close_code
            await self._ws.close()
            raise ASRRejectedError(
                f"server refused the stream: {event.get('code')}: {event.get('message')}",
                close_code=code,
            )
        self.ready = event
        self._reader = asyncio.create_task(self._read_loop())
        if self._start is not None:
            await self._ws.send(P.dumps({"type": "start", **self._start}))
        return event

    async def send_audio(self, pcm: bytes) -> None:
        """Send PCM16 mono 16 kHz audio.

        Raises:
            ConnectionError: The connection is closed.
        """
        if not self.connected:
            raise ConnectionError("not connected to the ASR server")
        try:
            await self._ws.send(pcm)
        except ConnectionClosed as exc:
            raise ConnectionError(f"ASR server connection closed: {exc}") from None

    async def send_text(self, message: dict[str, Any] | str) -> None:
        """Send a control message (dict) or raw text (tests of malformed input)."""
        if not self.connected:
            raise ConnectionError("not connected to the ASR server")
        text = message if isinstance(message, str) else P.dumps(message)
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise ConnectionError(f"ASR server connection closed: {exc}") from None

    async def send_finalize(self) -> asyncio.Future:
        """Send a finalize request now; the returned future gets the ``final`` event.

        Messages go out in order, so the final covers every audio message sent before.
        The future fails with :class:`ASRServerError` or ``ConnectionError``.
        """
        ident = f"f{next(self._ids)}"
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        future.add_done_callback(lambda _: self._pending.pop(ident, None))
        try:
            await self.send_text({"type": "finalize", "id": ident})
        except ConnectionError:
            future.cancel()
            raise
        return future

    async def finalize(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """Ask for a final of the current utterance and wait for it.

        Returns:
            The ``final`` event.

        Raises:
            ASRServerError: The server reported an error for this request.
            ConnectionError: The connection closed before the answer.
            TimeoutError: No answer in ``timeout`` seconds.
        """
        future = await self.send_finalize()
        return await asyncio.wait_for(future, timeout)

    async def reset(self) -> None:
        """Accept the final: the next audio starts a new utterance."""
        await self.send_text({"type": "reset"})

    async def close(self) -> None:
        """Close the connection (the server frees the stream at once)."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._mark_closed()

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (tests of vanished clients)."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def _read_loop(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if isinstance(message, bytes):
                    continue
                try:
                    event = json.loads(message)
                except json.JSONDecodeError:
                    continue
                ident = event.get("id")
                future = self._pending.get(ident) if isinstance(ident, str) else None
                if future is not None and not future.done():
                    if event.get("type") == "error":
                        future.set_exception(ASRServerError(event))
                    else:
                        future.set_result(event)
                    continue
                if event.get("type") == "error":
                    self.last_error = event
                if self._on_event is not None:
                    result = self._on_event(event)
                    if inspect.isawaitable(result):
                        await result
        except ConnectionClosed:
            pass
        finally:
            self._mark_closed()

    def _mark_closed(self) -> None:
        if self._ws is not None and self.close_code is None:
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(ConnectionError("ASR server connection closed"))
        self.closed.set()
