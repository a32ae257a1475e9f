"""A FAKE LLM server for turn and context tests: OpenAI-compatible, scripted, window-checked.

It stands in for an LLM endpoint where none can run fast enough for the test (a hosted model,
or the embedded llama.cpp server over a hundred turns). The protocol is the real one (aiohttp,
``/v1/chat/completions``, streamed SSE or a JSON body for ``stream: false``); only the words are
scripted. It records when each request arrived, can wait before its first token (to stand for
a model's time to first token), and can refuse prompts that do not fit a context window the way
llama.cpp's server does (HTTP 400, "Requested tokens (N) exceed context window of M"), counting
tokens with the real tokenizer and chat template of the packaged SmolLM2 model when it is
installed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from aiohttp import web

from tests.support.loopback_http import LoopbackHTTPServer


@cache
def _smollm2_vocab():
    """The packaged SmolLM2 GGUF's tokenizer (vocabulary only, ~0.2 s), or None."""
    try:
        import llama_cpp

        from services.llm.llama_server import default_gguf_path

        path = Path(default_gguf_path())
        if not path.is_file():
            return None
        return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except Exception:
        return None


def chatml(messages: list[dict]) -> str:
    """SmolLM2's chat template (ChatML) with the generation prompt, as llama.cpp renders it."""
    text = ""
    if not messages or messages[0].get("role") != "system":
        text += "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
        text += "Hugging Face<|im_end|>\n"
    for message in messages:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        text += f"<|im_start|>{message.get('role')}\n{content}<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def smollm2_prompt_tokens(messages: list[dict]) -> int:
    """Prompt tokens of ``messages`` for SmolLM2 (real tokenizer; 3 chars a token without it)."""
    vocab = _smollm2_vocab()
    text = chatml(messages)
    if vocab is None:
        return len(text) // 3 + 1
    return len(vocab.tokenize(text.encode(), add_bos=False, special=True))


@dataclass
class ScriptedLLMServer(LoopbackHTTPServer):
    """FAKE OpenAI-compatible server with scripted replies.

    Parameters:
        reply: ``(request_index, body) -> text`` of each streamed reply.
        summary: ``(body) -> text`` answered to ``stream: false`` requests (summaries).
        first_token_delay: Seconds before a streamed reply's first text (time to first token).
        word_delay: Seconds between streamed words.
        n_ctx: Refuse prompts of at least this many tokens, as llama.cpp does (None: never).
        summary_status: Answer ``stream: false`` requests with this HTTP error instead.
        count_tokens: Counts a request's prompt tokens.
        port: Loopback port to listen on (0: a free one), for an agent started before it.
    """

    reply: Callable[[int, dict], str] = lambda index, body: f"Reply number {index + 1}."
    summary: Callable[[dict], str] = lambda body: "The user and the assistant talked."
    first_token_delay: float = 0.0
    word_delay: float = 0.0
    n_ctx: int | None = None
    summary_status: int | None = None
    count_tokens: Callable[[list[dict]], int] = smollm2_prompt_tokens
    port: int = 0
    base_url: str = ""
    requests: list[dict] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    replies_started: int = 0
    abandoned: int = 0

    @property
    def streamed(self) -> list[dict]:
        """The streamed (conversation) requests, in arrival order."""
        return [r for r in self.requests if r.get("stream")]

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/models", self._models)
        router.add_post("/v1/chat/completions", self._completions)

    async def start(self) -> ScriptedLLMServer:
        """Listen on :attr:`port` of the loopback interface and set :attr:`base_url`."""
        self.base_url = await self.serve(self.port) + "/v1"
        return self

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.arrivals.append(time.time())
        self.requests.append(body)
        tokens = self.count_tokens(body.get("messages", []))
        self.prompt_tokens.append(tokens)
        if self.n_ctx is not None and tokens >= self.n_ctx:
            self.refused.append(tokens)
            message = f"Requested tokens ({tokens}) exceed context window of {self.n_ctx}"
            return web.json_response(
                {"error": {"message": message, "type": "invalid_request_error"}}, status=400
            )
        model = body.get("model", "")
        if not body.get("stream"):
            if self.summary_status is not None:
                error = {"message": "scripted failure", "type": "server_error"}
                return web.json_response({"error": error}, status=self.summary_status)
            return web.json_response(_completion(model, self.summary(body)))
        index = len(self.streamed) - 1
        text = self.reply(index, body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(_chunk(model, {"role": "assistant", "content": ""}))
            await asyncio.sleep(self.first_token_delay)
            self.replies_started += 1
            for i, word in enumerate(text.split(" ")):
                if i and self.word_delay:
                    await asyncio.sleep(self.word_delay)
                await response.write(_chunk(model, {"content": word if i == 0 else f" {word}"}))
            await response.write(_chunk(model, {}, finish="stop"))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:
            self.abandoned += 1  # the client stopped reading: a withdrawn speculative answer
        return response


def _chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def _completion(model: str, text: str) -> dict:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
