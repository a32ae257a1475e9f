"""An OpenAI-compatible LLM service for speech: a thinking toggle and no reasoning text spoken.

Pipecat's ``OpenAILLMService`` talks to any server with ``/v1/chat/completions`` (vLLM, NIM,
llama.cpp, Ollama, hosted APIs). This subclass adds what a voice agent needs on top:

- a thinking toggle sent as ``extra_body.chat_template_kwargs.enable_thinking`` (how vLLM, NIM,
  SGLang and llama.cpp pass it to the chat template); an ``enable_thinking`` the user put in
  ``extra_body`` themselves wins;
- streaming removal of ``<think>...</think>`` text, so reasoning never reaches the TTS
  (reasoning a server returns separately, as ``reasoning_content``, is never spoken anyway);
- model discovery (``GET /v1/models``) when no model is configured, retried until it works;
- short connect timeouts, so a dead endpoint fails the turn quickly with an error and the
  session carries on;
- no silent turns: a reply that ends with nothing to say (an empty stream, only ``<think>``
  text, a failed request) is logged with its session and what happened, and a short fallback
  sentence is spoken instead (``fallback_reply``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger
from openai import AsyncOpenAI, DefaultAsyncHttpxClient, Timeout
from pipecat.frames.frames import LLMTextFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.openai.llm import OpenAILLMService

from services.llm.think import ThinkStripper

# Spoken when a reply comes back with nothing to say: a turn must never end in silence, or the
# user cannot tell a lost reply from a slow one.
DEFAULT_FALLBACK_REPLY = "Sorry, I lost my train of thought. Could you say that again?"


@dataclass
class _ReplyWatch:
    """What one completion brought: streamed chunks, its finish reason, text in and out."""

    chunks: int = 0
    finish_reason: str | None = None
    text_chars: int = 0
    spoken_chars: int = 0
    tool_calls: bool = False

    def describe(self) -> str:
        """Why nothing was spoken, in words for the log."""
        if self.text_chars:
            return (
                f"{self.text_chars} characters of text, none speakable (only <think> text or "
                f"whitespace), finish_reason={self.finish_reason}"
            )
        ended = (
            f"finish_reason={self.finish_reason}"
            if self.finish_reason
            else "no finish_reason: the server closed the stream early"
        )
        return f"the stream had no text ({self.chunks} chunks, {ended})"


class _WatchedStream:
    """A chat completion stream that counts what passes through it for a :class:`_ReplyWatch`."""

    def __init__(self, stream: Any, watch: _ReplyWatch):
        self._stream = stream
        self._watch = watch

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        async for chunk in self._stream:
            self._watch.chunks += 1
            choice = chunk.choices[0] if chunk.choices else None
            if choice is not None:
                self._watch.finish_reason = choice.finish_reason or self._watch.finish_reason
                if choice.delta and choice.delta.tool_calls:
                    self._watch.tool_calls = True
            yield chunk

    async def close(self) -> None:
        close = getattr(self._stream, "close", None) or getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class OpenAICompatibleLLMService(OpenAILLMService):
    """``OpenAILLMService`` with a thinking toggle, ``<think>`` stripping, model discovery and a
    spoken fallback for replies with nothing to say."""

    def __init__(
        self,
        *,
        thinking: bool | None = None,
        send_chat_template_kwargs: bool = True,
        strip_think: bool = True,
        reasoning_opens_in_prompt: bool = False,
        discover_model: bool = False,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_retries: int = 1,
        ensure_server: Callable[[], Awaitable[Any]] | None = None,
        developer_role: bool = False,
        fallback_reply: str | None = DEFAULT_FALLBACK_REPLY,
        session_id: str | None = None,
        **kwargs,
    ):
        """Initialize the service.

        Args:
            thinking: True/False sends ``enable_thinking`` to the chat template; None sends
                nothing (the model's default).
            send_chat_template_kwargs: Whether the server understands ``chat_template_kwargs``
                (OpenAI's own API does not: the toggle is then not sent).
            strip_think: Remove ``<think>...</think>`` blocks from the streamed text.
            reasoning_opens_in_prompt: The chat template opens the reasoning block itself, so the
                reply starts inside it (text up to ``</think>`` is dropped).
            discover_model: Ask the server for its model (``GET /models``) before the first
                request; used when no model is configured.
            connect_timeout_s: Connect timeout of each request.
            read_timeout_s: Longest wait between streamed chunks.
            max_retries: Client retries of a failed request.
            ensure_server: Awaited before each request, e.g. to (re)start an embedded server.
            developer_role: Whether the server accepts the ``developer`` message role that
                Pipecat adds (for example after a user-turn timeout). Only OpenAI's own API
                does; llama.cpp answers HTTP 500, and the message would poison every later
                request of the session, so by default such messages are sent as ``user``.
            fallback_reply: Spoken when a reply has nothing to say (empty, only reasoning, or
                the request failed before any text); None speaks nothing.
            session_id: Names the session in log messages (the bot sets it per connection).
            **kwargs: Passed to ``OpenAILLMService`` (``base_url``, ``api_key``, ``settings``).
        """
        # The SDK's own Timeout type: openai >= 3.63 runs on httpx2, whose client refuses
        # httpx's (TypeError: Invalid timeout ... got httpx.Timeout).
        self._timeout = Timeout(read_timeout_s, connect=connect_timeout_s)
        self._max_retries = max_retries
        super().__init__(**kwargs)
        self._thinking = thinking
        self._send_chat_template_kwargs = send_chat_template_kwargs
        self._stripper = (
            ThinkStripper(starts_inside=reasoning_opens_in_prompt) if strip_think else None
        )
        self._discover_model = discover_model
        self._ensure_server = ensure_server
        self.supports_developer_role = developer_role
        self.fallback_reply = fallback_reply
        self.session_id = session_id
        self._watch = _ReplyWatch()

    @property
    def thinking(self) -> bool | None:
        """The thinking toggle sent with each request (None: not sent)."""
        return self._thinking

    def create_client(
        self,
        api_key=None,
        base_url=None,
        organization=None,
        project=None,
        default_headers=None,
        **kwargs,
    ):
        """Create the AsyncOpenAI client with voice-friendly timeouts and retries."""
        return AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            timeout=self._timeout,
            max_retries=self._max_retries,
            http_client=DefaultAsyncHttpxClient(timeout=self._timeout),
            default_headers=default_headers,
        )

    async def discover_model(self) -> str | None:
        """Ask the server which model it serves (the first one listed); None if it cannot say."""
        try:
            page = await self._client.models.list()
        except Exception as e:
            logger.warning(f"{self}: could not list models at {self._client.base_url}: {e}")
            return None
        models = [m.id for m in page.data]
        if not models:
            logger.warning(f"{self}: {self._client.base_url} lists no models")
            return None
        if len(models) > 1:
            logger.info(f"{self}: server lists {models}; using {models[0]} (set llm.model)")
        return models[0]

    async def get_chat_completions(self, context: LLMContext):
        """Discover the model if needed, then stream a chat completion."""
        if self._ensure_server is not None:
            await self._ensure_server()
        if self._discover_model:
            model = await self.discover_model()
            if model:
                logger.info(f"{self}: using model {model} served at {self._client.base_url}")
                self._settings.model = model
                self._discover_model = False
        return _WatchedStream(await super().get_chat_completions(context), self._watch)

    def build_chat_completion_params(self, params_from_context) -> dict:
        """Add the thinking toggle to ``extra_body.chat_template_kwargs``."""
        params = super().build_chat_completion_params(params_from_context)
        if self._thinking is not None and self._send_chat_template_kwargs:
            extra_body: dict[str, Any] = dict(params.get("extra_body") or {})
            template_kwargs = dict(extra_body.get("chat_template_kwargs") or {})
            template_kwargs.setdefault("enable_thinking", self._thinking)
            extra_body["chat_template_kwargs"] = template_kwargs
            params["extra_body"] = extra_body
        return params

    async def _process_context(self, context: LLMContext):
        self._watch = watch = _ReplyWatch()
        try:
            await self._stream_reply(context)
        except Exception as e:
            # Re-raised: Pipecat still reports the error (an ErrorFrame); the user hears the
            # fallback instead of silence.
            if not watch.spoken_chars:
                await self._speak_fallback(f"the request failed: {type(e).__name__}: {e}")
            raise
        if not watch.spoken_chars and not watch.tool_calls:
            await self._speak_fallback(f"the reply was empty: {watch.describe()}")

    async def _stream_reply(self, context: LLMContext) -> None:
        if self._stripper is None:
            await super()._process_context(context)
            return
        self._stripper.reset()
        try:
            await super()._process_context(context)
        finally:
            rest = self._stripper.flush()
        if rest.strip():
            await self._push_speakable(rest)

    async def _speak_fallback(self, what: str) -> None:
        session = f"session {self.session_id}" if self.session_id else "a session"
        if self.fallback_reply:
            logger.warning(f"{self} ({session}): {what}; speaking the fallback reply")
            await self.push_frame(LLMTextFrame(self.fallback_reply))
        else:
            logger.warning(f"{self} ({session}): {what}; nothing is spoken this turn")

    async def _push_llm_text(self, text: str):
        self._watch.text_chars += len(text)
        if self._stripper is None:
            await self._push_speakable(text)
            return
        speakable = self._stripper.feed(text)
        if speakable:
            await self._push_speakable(speakable)

    async def _push_speakable(self, text: str) -> None:
        self._watch.spoken_chars += len(text.strip())
        await super()._push_llm_text(text)
