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
  session carries on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from loguru import logger
from openai import AsyncOpenAI, DefaultAsyncHttpxClient
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.openai.llm import OpenAILLMService

from services.llm.think import ThinkStripper


class OpenAICompatibleLLMService(OpenAILLMService):
    """``OpenAILLMService`` with a thinking toggle, ``<think>`` stripping and model discovery."""

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
            **kwargs: Passed to ``OpenAILLMService`` (``base_url``, ``api_key``, ``settings``).
        """
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
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
        return await super().get_chat_completions(context)

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
        if self._stripper is None:
            await super()._process_context(context)
            return
        self._stripper.reset()
        try:
            await super()._process_context(context)
        finally:
            rest = self._stripper.flush()
        if rest.strip():
            await super()._push_llm_text(rest)

    async def _push_llm_text(self, text: str):
        if self._stripper is None:
            await super()._push_llm_text(text)
            return
        speakable = self._stripper.feed(text)
        if speakable:
            await super()._push_llm_text(speakable)
