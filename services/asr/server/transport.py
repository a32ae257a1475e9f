"""The connection a stream session runs on, and its bindings to WebSocket libraries.

The per-connection protocol (``server._Connection``, ``realtime.RealtimeConnection``) and the
admission in ``ASRServer.handle`` are written against :class:`Connection` only, so the same code
serves the ``websockets`` front end of ``asr-server`` and a Starlette (FastAPI) WebSocket, which
is what a Ray Serve replica gets (``services/asr/serve/``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed

from . import protocol as P

if TYPE_CHECKING:
    from starlette.websockets import WebSocket
    from websockets.asyncio.server import ServerConnection


class ConnectionLost(ConnectionError):
    """The peer is gone: nothing more can be sent on this connection."""


class Connection(Protocol):
    """One accepted WebSocket, whatever library holds it.

    Attributes:
        path: The URL path of the request, without the query (``/v1/stream``).
        query: The query string (``token=...``), without the ``?``.
        headers: Request headers; lookups ignore case.
        close_code: The close code once the socket is closed (ours or the peer's), else None.
    """

    path: str
    query: str
    headers: Mapping[str, str]

    @property
    def close_code(self) -> int | None: ...

    def __aiter__(self) -> AsyncIterator[bytes | str]:
        """Messages until the peer closes (the iteration then ends, it does not raise)."""
        ...

    async def send(self, text: str) -> None:
        """Send one text message; raises :class:`ConnectionLost` when the socket is gone."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``; never raises."""
        ...


def split_path(raw: str) -> tuple[str, str]:
    """``/v1/stream/?token=x`` -> (``/v1/stream``, ``token=x``)."""
    parts = urlsplit(raw)
    return parts.path.rstrip("/") or "/", parts.query


def query_token(query: str) -> str:
    """The ``token`` query parameter, or ''."""
    values = parse_qs(query).get("token", [])
    return values[0] if values else ""


class WebsocketsConnection:
    """A ``websockets`` (asyncio API) server connection as a :class:`Connection`."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        request = ws.request
        self.path, self.query = split_path(request.path) if request else ("", "")
        self.headers: Mapping[str, str] = request.headers if request else {}

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def __aiter__(self) -> AsyncIterator[bytes | str]:
        try:
            async for message in self.ws:
                yield message
        except ConnectionClosed:
            return

    async def send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except ConnectionClosed as exc:
            raise ConnectionLost(str(exc)) from None

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)


class StarletteConnection:
    """A Starlette (FastAPI) WebSocket as a :class:`Connection`; :meth:`accept` it first.

    Starlette enforces no message size, so this binding does what ``websockets`` does with
    ``max_size``: a message over ``max_message_bytes`` closes the socket with 1009. ``path`` is
    the route's own path (``/v1/stream``): behind a route prefix the URL's path is longer.
    """

    def __init__(self, websocket: WebSocket, *, path: str, max_message_bytes: int) -> None:
        self.websocket = websocket
        self.path = path
        self.query = websocket.url.query
        self.headers: Mapping[str, str] = websocket.headers
        self.max_message_bytes = max_message_bytes
        self._close_code: int | None = None

    async def accept(self) -> None:
        """Finish the handshake (before any send)."""
        await self.websocket.accept()

    @property
    def close_code(self) -> int | None:
        return self._close_code

    async def __aiter__(self) -> AsyncIterator[bytes | str]:
        while self._close_code is None:
            try:
                message = await self.websocket.receive()
            except RuntimeError:  # receive after a disconnect: the socket is gone
                self._close_code = self._close_code or 1006
                return
            kind = message["type"]
            if kind == "websocket.disconnect":
                self._close_code = int(message.get("code") or 1005)
                return
            if kind != "websocket.receive":
                continue
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
            if data is None:
                continue
            size = len(data) if isinstance(data, bytes) else len(data.encode())
            if size > self.max_message_bytes:
                await self.close(P.CLOSE_TOO_BIG, "message too big")
                return
            yield data

    async def send(self, text: str) -> None:
        if self._close_code is not None:
            raise ConnectionLost(f"connection closed ({self._close_code})")
        try:
            await self.websocket.send_text(text)
        except Exception as exc:  # the ASGI server's own disconnect errors vary by library
            self._close_code = self._close_code or 1006
            raise ConnectionLost(str(exc)) from None

    async def close(self, code: int, reason: str) -> None:
        if self._close_code is not None:
            return
        self._close_code = code
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason)
