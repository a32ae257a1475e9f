"""A scripted OpenAI-compatible chat server on loopback (a stand-in for a real LLM server).

It speaks the real protocol (``POST /v1/chat/completions`` with SSE streaming, ``GET /v1/models``)
so the real OpenAI client and Pipecat's service run unchanged; only the words are scripted.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class ScriptedOpenAIServer:
    """Replies with ``reply`` word by word and records every request body."""

    reply: str = "The capital of France is Paris."
    requests: list[dict] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> ScriptedOpenAIServer:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "scripted", "object": "model"}]}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = self.reply.split(" ")
        for index, word in enumerate(words):
            text = word if index == 0 else " " + word
            await response.write(self._chunk(body, {"content": text}, None))
            await asyncio.sleep(0.005)
        await response.write(self._chunk(body, {}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        return response

    @staticmethod
    def _chunk(body: dict, delta: dict, finish: str | None) -> bytes:
        chunk = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()
