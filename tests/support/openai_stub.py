"""A real local OpenAI-compatible server for tests (aiohttp, streaming SSE).

It speaks ``GET /v1/models`` and ``POST /v1/chat/completions`` with ``stream: true`` the way vLLM,
NIM and llama.cpp do, records every request (body and headers), and streams a scripted reply.
It stands in for an LLM server: only the words are scripted, the protocol is the real one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.loopback_http import LoopbackHTTPServer


@dataclass
class FakeOpenAIServer(LoopbackHTTPServer):
    """A scripted OpenAI-compatible server.

    Parameters:
        base_url: ``http://127.0.0.1:PORT/v1`` once started.
        served_model: What ``/v1/models`` lists.
        chunks: Content pieces streamed for each completion.
        reasoning: ``reasoning_content`` pieces streamed first (vLLM's reasoning parser style).
        finish: The last chunk's ``finish_reason``; None ends the stream without one (as
            llama.cpp's server does when it cuts a completion short).
        error_status: Answer every completion with this HTTP error instead (None: stream).
        requests: Bodies of received chat completion requests.
        headers: Headers of received chat completion requests.
    """

    base_url: str = ""
    served_model: str = "served/model-x"
    chunks: list[str] = field(default_factory=lambda: ["Hello", " there."])
    reasoning: list[str] = field(default_factory=list)
    finish: str | None = "stop"
    error_status: int | None = None
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    model_lists: int = 0

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/models", self._models)
        router.add_post("/v1/chat/completions", self._completions)

    async def start(self) -> FakeOpenAIServer:
        """Listen on a free loopback port and set :attr:`base_url`."""
        self.base_url = await self.serve() + "/v1"
        return self

    async def _models(self, _request: web.Request) -> web.Response:
        self.model_lists += 1
        return web.json_response(
            {"object": "list", "data": [{"id": self.served_model, "object": "model"}]}
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.error_status is not None:
            return web.json_response(
                {"error": {"message": "scripted failure", "type": "server_error"}},
                status=self.error_status,
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        model = body.get("model", "")
        await response.write(_chunk(model, {"role": "assistant", "content": ""}))
        for piece in self.reasoning:
            await response.write(_chunk(model, {"reasoning_content": piece}))
        for piece in self.chunks:
            await response.write(_chunk(model, {"content": piece}))
        if self.finish is not None:
            await response.write(_chunk(model, {}, finish=self.finish))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()
