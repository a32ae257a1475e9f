"""CPU TTS backends that run here for real: Hibari (default of the cpu profile) and Piper."""

from __future__ import annotations

import asyncio
import importlib

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test

from pipelines.registry import resolve
from tests.support.settings import section_settings
from tests.tts.llm_frames import reply

pytestmark = pytest.mark.timeout(120)


def tts_settings(backend: str, **env: str):
    return section_settings("tts", backend=backend, **env)


def build_tts(backend: str, **env: str):
    return resolve("tts", backend)(tts_settings(backend, **env))


def record_synthesis(tts) -> list[str]:
    """The texts ``tts`` is asked to synthesize, in order (its ``run_tts`` still runs)."""
    calls: list[str] = []
    original = tts.run_tts

    async def spy(text, context_id):
        calls.append(text.strip())
        async for frame in original(text, context_id):
            yield frame

    tts.run_tts = spy
    return calls


BACKENDS = [
    pytest.param("hibari", "hibari", 24000, id="hibari"),
    pytest.param("piper", "piper", 22050, id="piper"),
]


def needs(module: str):
    pytest.importorskip(module)


@pytest.mark.parametrize(("backend", "module", "rate"), BACKENDS)
async def test_speaks_sentence_by_sentence_at_native_rate(backend, module, rate):
    needs(module)
    # As `voice-agent run` does before the first session: load and warm the voice.
    importlib.import_module(f"pipelines.backends.tts_{backend}").prewarm(tts_settings(backend))
    tts = build_tts(backend)
    calls = record_synthesis(tts)
    down, up = await run_test(
        tts,
        frames_to_send=reply("Hello there. ", "It costs $5 today."),
        pipeline_params=PipelineParams(enable_metrics=True),
    )
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and {f.sample_rate for f in audio} == {rate}
    seconds = sum(len(f.audio) for f in audio) / 2 / rate
    assert seconds > 1.0
    assert calls == ["Hello there.", "It costs five dollars today."]
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert any(isinstance(f, TTSStoppedFrame) for f in down)
    ttfb = [
        d.value
        for f in down
        if isinstance(f, MetricsFrame)
        for d in f.data
        if isinstance(d, TTFBMetricsData) and d.value > 0 and d.processor == tts.name
    ]
    assert len(ttfb) == 1
    print(f"{backend} TTFB: {ttfb[0] * 1000:.0f} ms for {seconds:.2f} s of audio")


@pytest.mark.parametrize(("backend", "module", "rate"), BACKENDS)
@pytest.mark.parametrize(
    ("min_chars", "first"),
    [
        (None, "Sure,"),
        ("12", "Sure, the meeting is at noon."),
        ("0", "Sure, the meeting is at noon."),
    ],
    ids=["default-first-clause", "clause-too-short", "cut-off"],
)
async def test_first_sentence_starts_at_its_first_clause(backend, module, rate, min_chars, first):
    # tts.first_clause_min_chars reaches the service: by default the reply is spoken from its
    # first clause mark, so the TTS starts before the LLM has finished the first sentence.
    needs(module)
    env = {} if min_chars is None else {"first_clause_min_chars": min_chars}
    tts = build_tts(backend, **env)
    calls = record_synthesis(tts)
    tokens = ["Sure", ",", " the", " meeting", " is", " at", " noon", ".", " Bring", " notes", "."]
    await run_test(tts, frames_to_send=reply(*tokens))
    assert calls[0] == first
    assert " ".join(calls) == "Sure, the meeting is at noon. Bring notes."


@pytest.mark.parametrize(("backend", "module", "rate"), BACKENDS)
async def test_interruption_drops_the_old_reply(backend, module, rate):
    needs(module)
    tts = build_tts(backend)
    long_reply = " ".join(f"This is sentence number {n} of a long answer." for n in range(30))
    down, up = await run_test(
        tts,
        frames_to_send=[
            LLMFullResponseStartFrame(),
            LLMTextFrame(long_reply),
            SleepFrame(sleep=0.3),
            InterruptionFrame(),
            *reply("Okay, stopping."),
        ],
    )
    index = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    before = {f.context_id for f in down[:index] if isinstance(f, TTSAudioRawFrame)}
    after = [f for f in down[index:] if isinstance(f, TTSAudioRawFrame)]
    assert after and {f.context_id for f in after}.isdisjoint(before)
    spoken_after = " ".join(f.text for f in down[index:] if isinstance(f, TTSTextFrame))
    assert "sentence number 29" not in spoken_after
    assert not [f for f in up if isinstance(f, ErrorFrame)]


async def test_hibari_sessions_share_one_voice():
    needs("hibari")
    from services.tts.hibari import load_hibari_voice

    a, b = build_tts("hibari"), build_tts("hibari")
    (down_a, _), (down_b, _) = await asyncio.gather(
        run_test(a, frames_to_send=reply("One session.")),
        run_test(b, frames_to_send=reply("Another session.")),
    )
    assert a._tts is b._tts is load_hibari_voice("heart")[0]
    assert any(isinstance(f, TTSAudioRawFrame) for f in down_a)
    assert any(isinstance(f, TTSAudioRawFrame) for f in down_b)


def test_unknown_voices_are_clear_errors():
    needs("hibari")
    with pytest.raises(ValueError, match="unknown Hibari voice 'nobody'"):
        build_tts("hibari", voice="nobody")
    needs("piper")
    with pytest.raises(FileNotFoundError, match="Piper voice 'nobody' not found"):
        build_tts("piper", voice="nobody")
