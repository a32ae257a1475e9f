"""No silent turns: a reply with nothing to say is logged and a short fallback is spoken.

The LLM is the real ``OpenAICompatibleLLMService`` against the scripted OpenAI-compatible server
(tests/support/openai_stub.py), which can end a stream the way llama.cpp's server did when a
second request interrupted the first: a role chunk, then ``[DONE]``.
"""

from __future__ import annotations

import pytest
from loguru import logger
from pipecat.frames.frames import (
    ErrorFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from pipelines.registry import resolve
from services.llm.openai_compatible import DEFAULT_FALLBACK_REPLY, OpenAICompatibleLLMService
from tests.support.settings import section_settings

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def warnings():
    """Warning messages logged during the test."""
    found: list[str] = []
    sink = logger.add(lambda message: found.append(str(message)), level="WARNING")
    yield found
    logger.remove(sink)


def build_llm(base_url: str, **values: str) -> OpenAICompatibleLLMService:
    settings = section_settings("llm", preset="vllm", base_url=base_url, model="m", **values)
    service = resolve("llm", "vllm")(settings)
    service.session_id = "pc-test-42"
    return service


async def ask(service, *after) -> tuple[str, list, list]:
    context = LLMContext(messages=[{"role": "user", "content": "What is the capital of France?"}])
    down, up = await run_test(service, frames_to_send=[LLMContextFrame(context), *after])
    return "".join(f.text for f in down if isinstance(f, LLMTextFrame)), down, up


async def test_an_interrupted_empty_stream_is_logged_and_the_fallback_is_said(fake_llm, warnings):
    fake_llm.chunks, fake_llm.finish = [], None  # role chunk, then [DONE]
    spoken, down, up = await ask(build_llm(fake_llm.base_url))
    assert spoken == DEFAULT_FALLBACK_REPLY
    assert isinstance(down[-1], LLMFullResponseEndFrame)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    [warning] = [w for w in warnings if "fallback" in w]
    assert "session pc-test-42" in warning and "no text" in warning
    assert "no finish_reason" in warning  # says the server cut the stream short


async def test_a_reply_of_only_reasoning_is_an_empty_reply(fake_llm, warnings):
    fake_llm.chunks = ["<think>The user asks about France.", " Paris.</think>", "\n\n"]
    spoken, _, _ = await ask(build_llm(fake_llm.base_url, thinking="true"))
    assert spoken == DEFAULT_FALLBACK_REPLY
    assert any("none speakable" in w and "finish_reason=stop" in w for w in warnings)


async def test_a_failed_request_says_the_fallback_and_still_reports_the_error(fake_llm, warnings):
    fake_llm.error_status = 500
    spoken, down, up = await ask(build_llm(fake_llm.base_url))
    assert spoken == DEFAULT_FALLBACK_REPLY
    assert [f for f in up if isinstance(f, ErrorFrame)], "the failure is still an error"
    assert isinstance(down[-1], LLMFullResponseEndFrame)
    assert any("request failed" in w and "InternalServerError" in w for w in warnings)


async def test_a_real_reply_has_no_fallback_and_no_warning(fake_llm, warnings):
    fake_llm.chunks = ["Paris", " is the capital."]
    spoken, _, _ = await ask(build_llm(fake_llm.base_url))
    assert spoken == "Paris is the capital."
    assert not [w for w in warnings if "fallback" in w]


async def test_the_fallback_can_be_turned_off(fake_llm, warnings):
    fake_llm.chunks = []
    service = build_llm(fake_llm.base_url)
    service.fallback_reply = None
    spoken, _, _ = await ask(service)
    assert spoken == ""
    assert any("nothing is spoken" in w for w in warnings)  # still logged


async def test_the_user_hears_the_fallback(fake_llm):
    """LLM -> the cpu profile's real TTS (hibari): the fallback comes out as speech."""
    pytest.importorskip("hibari")
    fake_llm.chunks, fake_llm.finish = [], None
    llm = build_llm(fake_llm.base_url)
    tts = resolve("tts", "hibari")(section_settings("tts", backend="hibari"))
    context = LLMContext(messages=[{"role": "user", "content": "Hello?"}])
    down, _ = await run_test(
        Pipeline([llm, tts]),
        frames_to_send=[LLMContextFrame(context), SleepFrame(8.0)],
        start_timeout=60,
    )
    said = " ".join(f.text for f in down if isinstance(f, TTSTextFrame))
    assert "train of thought" in said
    audio_s = sum(len(f.audio) / 2 / f.sample_rate for f in down if isinstance(f, TTSAudioRawFrame))
    assert audio_s > 1.0, "the fallback sentence is spoken, not just sent as text"
