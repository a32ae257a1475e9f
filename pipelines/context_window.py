"""Keep a long conversation inside the LLM's context window.

Two layers, both sized from ``llm.n_ctx`` (the window), ``llm.max_tokens`` (room kept for the
reply) and the system prompt (sent with every request, outside the conversation):

- Pipecat's own auto context summarization (``llm.context_strategy = "summarize"``): when the
  conversation passes about 60% of its room, the LLM summarizes the older turns into one
  message and the recent ones stay as they were;
- :class:`ContextWindowGuard`, on the aggregators (Pipecat's ``on_before_push_frame``), so
  every ``LLMContextFrame`` passes it on its way to the LLM: a conversation that still does not
  fit (the summary is late, failed, or summarization is off: ``"trim"``) loses its oldest
  turns, the summary and the latest turns kept.

Token counts are estimates, on the cautious side (3 characters a token; English runs near 4
with the tokenizers of current models), so a request the guard lets through fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger
from pipecat.frames.frames import Frame, LLMContextFrame
from pipecat.processors.aggregators.llm_context import LLMContext, LLMSpecificMessage
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.utils.context.llm_context_summarization import (
    LLMAutoContextSummarizationConfig,
    LLMContextSummaryConfig,
)

if TYPE_CHECKING:
    from pipelines.settings import AgentSettings

CHARS_PER_TOKEN = 3.0
# Role markers and separators a chat template adds around each message.
MESSAGE_OVERHEAD_TOKENS = 8
# Room kept for the reply when llm.max_tokens is unset: a spoken answer is a few sentences.
DEFAULT_REPLY_TOKENS = 256
# Slack for what the estimate cannot see: the template's own preamble, tokenizer quirks.
MARGIN_TOKENS = 32
# How the summary message starts (Pipecat's template is "Conversation summary: {summary}").
SUMMARY_PREFIX = "Conversation summary: "
# A stored conversation over its room is cut to this share of it. Prefix caches (llama.cpp's,
# vLLM's) reuse the unchanged front of the previous prompt: dropping one old message every
# turn would change the front every turn and re-read the whole prompt each time (~4 s a turn
# for SmolLM2 at 1k tokens on two cores); cutting deeper leaves it unchanged for several turns.
STORED_LOW_WATER = 0.6


def estimate_tokens(text: str) -> int:
    """Tokens of ``text``, estimated from its length (rounded up)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def message_tokens(message: Any) -> int:
    """Estimated tokens of one context message, template overhead included."""
    if isinstance(message, LLMSpecificMessage):
        return MESSAGE_OVERHEAD_TOKENS + estimate_tokens(str(message.message))
    content = message.get("content") or ""
    if isinstance(content, list):
        content = " ".join(
            str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content
        )
    total = MESSAGE_OVERHEAD_TOKENS + estimate_tokens(str(content))
    for call in message.get("tool_calls") or []:
        total += estimate_tokens(str(call))
    return total


def messages_tokens(messages: list[Any]) -> int:
    """Estimated tokens of a list of context messages."""
    return sum(message_tokens(m) for m in messages)


def _role(message: Any) -> str | None:
    return None if isinstance(message, LLMSpecificMessage) else message.get("role")


def _is_summary(message: Any) -> bool:
    content = None if isinstance(message, LLMSpecificMessage) else message.get("content")
    return isinstance(content, str) and content.startswith(SUMMARY_PREFIX)


def fit_messages(
    messages: list[Any], limit: int, target: int | None = None
) -> tuple[list[Any], int]:
    """The newest messages that fit, and how many older ones were dropped.

    Messages over ``limit`` tokens are cut down to ``target`` (default: ``limit``). A leading
    system message and the summary message are kept; whole messages are dropped oldest first,
    then any assistant or tool messages left at the front, so the conversation starts on a
    user turn (templates expect one, and a tool result needs its call). The last message is
    always kept, even alone over the limit (the request then fails as it would).
    """
    if messages_tokens(messages) <= limit:
        return list(messages), 0
    target = limit if target is None else min(target, limit)
    head = 0
    while head < len(messages) - 1 and (
        _role(messages[head]) == "system" or _is_summary(messages[head])
    ):
        head += 1
    kept_head = list(messages[:head])
    rest = list(messages[head:])
    room = target - messages_tokens(kept_head)
    total = messages_tokens(rest)
    dropped = 0
    while len(rest) > 1 and (total > room or _role(rest[0]) != "user"):
        total -= message_tokens(rest.pop(0))
        dropped += 1
    return kept_head + rest, dropped


@dataclass(frozen=True)
class ContextBudget:
    """How many tokens the conversation of one request may use.

    Parameters:
        window: The model's context window (``llm.n_ctx``).
        reply_tokens: Room kept for the reply.
        system_tokens: The system prompt, sent with every request.
    """

    window: int
    reply_tokens: int
    system_tokens: int

    @property
    def conversation_limit(self) -> int:
        """Tokens the conversation messages may take in one request."""
        return max(64, self.window - self.reply_tokens - self.system_tokens - MARGIN_TOKENS)


def context_budget(settings: AgentSettings) -> ContextBudget:
    """The budget for these settings (the reply gets at most a quarter of the window)."""
    llm = settings.llm
    reply = min(llm.max_tokens or DEFAULT_REPLY_TOKENS, llm.n_ctx // 4)
    system = MESSAGE_OVERHEAD_TOKENS + estimate_tokens(llm.system_prompt or "")
    return ContextBudget(window=llm.n_ctx, reply_tokens=reply, system_tokens=system)


def context_strategy(settings: AgentSettings) -> str:
    """``summarize`` or ``trim``: what ``llm.context_strategy`` means for this preset."""
    strategy = settings.llm.context_strategy
    if strategy == "auto":
        # The embedded model shares the CPU and serves one request at a time: a summary there
        # holds up the next reply for seconds, and a 135M model's summary says little.
        return "trim" if settings.llm.preset == "local" else "summarize"
    return strategy


def summarization_config(budget: ContextBudget) -> LLMAutoContextSummarizationConfig:
    """Pipecat's auto summarization, triggered at 60% of the conversation's room.

    Pipecat estimates 4 characters a token (~0.75 of the count here), so the summary request
    (those messages, Pipecat's ~230-token prompt and the summary itself) fits the window down
    to ``n_ctx`` 512, and the conversation has room to grow while the summary is made.
    """
    limit = budget.conversation_limit
    return LLMAutoContextSummarizationConfig(
        max_context_tokens=max(32, int(limit * 0.6)),
        max_unsummarized_messages=None,
        summary_config=LLMContextSummaryConfig(
            target_context_tokens=max(48, min(256, limit // 5)),
            min_messages_after_summary=4,
            summary_message_template=SUMMARY_PREFIX + "{summary}",
            summarization_timeout=60.0,
        ),
    )


class ContextWindowGuard:
    """Trims each LLM request to the budget as the aggregator that asks for it pushes it.

    A conversation over its room is cut to ``STORED_LOW_WATER`` of it, in place. With
    summarization on, the summarizer keeps it near 60% and this never acts, unless summaries
    fail or lag: Pipecat's summary request carries everything but the last turns, so a
    conversation over the window could never be summarized again. ``dropped`` counts the
    messages cut so far.
    """

    def __init__(self, budget: ContextBudget, stored: LLMContext):
        """Initialize the guard.

        Args:
            budget: The token budget of one request.
            stored: The session's conversation (speculative requests run on copies of it).
        """
        self._budget = budget
        self._stored = stored
        self.dropped = 0

    def __str__(self) -> str:
        return "ContextWindowGuard"

    @property
    def budget(self) -> ContextBudget:
        """The token budget of one request."""
        return self._budget

    def attach(self, processor: FrameProcessor) -> None:
        """Fit every ``LLMContextFrame`` ``processor`` pushes, before it is pushed."""
        processor.add_event_handler("on_before_push_frame", self._on_before_push_frame)

    async def _on_before_push_frame(self, _processor: FrameProcessor, frame: Frame) -> None:
        if isinstance(frame, LLMContextFrame):
            self.fit(frame)

    def fit(self, frame: LLMContextFrame) -> None:
        """Make ``frame``'s request fit the budget, trimming the conversation if need be."""
        limit = self._budget.conversation_limit
        before = list(self._stored.messages)
        kept, dropped = fit_messages(before, limit, int(limit * STORED_LOW_WATER))
        if dropped:
            self._stored.set_messages(kept)
            self.dropped += dropped
            self._log(dropped, "the conversation")
        context = frame.context
        if context is self._stored:
            return
        # A speculative request runs on a copy that starts with the conversation as it was:
        # cut it the same way (one prompt prefix for both), then to the limit if still over.
        copied = list(context.messages)
        if dropped and len(copied) >= len(before):
            if all(a is b for a, b in zip(copied, before, strict=False)):
                copied = kept + copied[len(before) :]
        copied, extra = fit_messages(copied, limit)
        if extra:
            self.dropped += extra
            self._log(extra, "this request")
        if dropped or extra:
            context.set_messages(copied)

    def _log(self, dropped: int, where: str) -> None:
        logger.info(
            f"{self}: the conversation outgrew its {self._budget.conversation_limit} tokens of "
            f"the {self._budget.window}-token window: {dropped} oldest messages left out of "
            f"{where}"
        )
