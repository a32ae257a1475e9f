"""A real local OpenAI-compatible server for LLM tests (aiohttp, streaming SSE).

It speaks ``GET /v1/models`` and ``POST /v1/chat/completions`` with ``stream: true`` the way vLLM,
NIM and llama.cpp do, records every request (body and headers), and streams a scripted reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from aiohttp import web


@dataclass
class FakeOpenAIServer:
    """A scripted OpenAI-compatible server.

    Parameters:
        base_url: ``http://127.0.0.1:PORT/v1``.
        served_model: What ``/v1/models`` lists.
        chunks: Content pieces streamed for each completion.
        reasoning: ``reasoning_content`` pieces streamed first (vLLM's reasoning parser style).
        requests: Bodies of received chat completion requests.
        headers: Headers of received chat completion requests.
    """

    base_url: str = ""
    served_model: str = "served/model-x"
    chunks: list[str] = field(default_factory=lambda: ["Hello", " there."])
    reasoning: list[str] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    model_lists: int = 0


def _chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


@pytest.fixture
async def fake_llm():
    server = FakeOpenAIServer()

    async def models(request: web.Request) -> web.Response:
        server.model_lists += 1
        return web.json_response(
            {"object": "list", "data": [{"id": server.served_model, "object": "model"}]}
        )

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        server.requests.append(body)
        server.headers.append(dict(request.headers))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        model = body.get("model", "")
        await response.write(_chunk(model, {"role": "assistant", "content": ""}))
        for piece in server.reasoning:
            await response.write(_chunk(model, {"reasoning_content": piece}))
        for piece in server.chunks:
            await response.write(_chunk(model, {"content": piece}))
        await response.write(_chunk(model, {}, finish="stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    server.base_url = f"http://127.0.0.1:{port}/v1"
    yield server
    await runner.cleanup()
