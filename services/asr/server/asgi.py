"""The ASR server as ASGI routes: the Starlette (FastAPI) front end of :class:`ASRServer`.

Ray Serve replicas (``services/asr/serve/``) call these from their FastAPI routes;
:func:`asgi_app` mounts them on a plain Starlette app (any ASGI server: uvicorn). Admission,
probes and metrics are the server's own, so the answers match ``asr-server`` byte for byte.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from . import protocol as P
from .transport import StarletteConnection

if TYPE_CHECKING:
    from .server import ASRServer, HttpAnswer

PROBE_PATHS = ("/health", "/ready", "/metrics")
SOCKET_PATHS = ("/v1/stream", "/", P.REALTIME_PATH)


def _response(answer: HttpAnswer) -> Response:
    body = answer.body if answer.body.endswith("\n") else answer.body + "\n"
    response = Response(body, status_code=int(answer.status), headers=dict(answer.headers))
    response.headers["content-type"] = answer.content_type
    return response


def probe_response(server: ASRServer, path: str, request: Request) -> Response:
    """The answer to ``GET`` of one of :data:`PROBE_PATHS` (``path``: which one)."""
    answer = server.http_answer(path, request.headers, request.url.query)
    assert answer is not None, f"{path} is not a probe path"
    return _response(answer)


async def serve_websocket(server: ASRServer, websocket: WebSocket, *, path: str) -> None:
    """Admit ``websocket`` (401 before the upgrade without the token) and serve its stream.

    Args:
        server: The server whose limits, engine and counters the stream uses.
        websocket: The Starlette WebSocket, not yet accepted.
        path: The route (``/v1/stream`` or ``/v1/realtime``): it picks the protocol.
    """
    refusal = server.refuse_upgrade(websocket.headers, websocket.url.query)
    if refusal is not None:
        # Needs the ASGI "websocket.http.response" extension (uvicorn, Ray Serve have it).
        await websocket.send_denial_response(_response(refusal))
        return
    conn = StarletteConnection(
        websocket, path=path, max_message_bytes=server.config.max_message_bytes
    )
    await conn.accept()
    await server.handle(conn)


def asgi_app(server: ASRServer) -> Starlette:
    """A Starlette app serving ``server`` (probes, ``/v1/stream``, ``/v1/realtime``).

    ``server.start()`` is not called: the ASGI server owns the socket. Call
    ``await server.stop()`` before the ASGI server stops, to close streams with 1001.
    """

    def probe(path: str):
        async def endpoint(request: Request) -> Response:
            return probe_response(server, path, request)

        return endpoint

    def socket_route(path: str):
        async def endpoint(websocket: WebSocket) -> None:
            await serve_websocket(server, websocket, path=path)

        return endpoint

    routes = [Route(path, probe(path), methods=["GET"]) for path in PROBE_PATHS]
    routes += [WebSocketRoute(path, socket_route(path)) for path in SOCKET_PATHS]
    return Starlette(routes=routes)
