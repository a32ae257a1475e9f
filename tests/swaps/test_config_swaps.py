"""Every LLM preset and TTS backend the README calls swappable, run through the assembled pipeline.

Each case is one config (``llm.preset``, ``tts.backend``) resolved the way users write it and
built by the registry (``build_voice_pipeline``: the cpu profile's Whisper STT, the user
aggregator, the LLM service, the TTS, the assistant aggregator). One user turn goes in as text,
framed as the STTs frame it, and what comes out is checked, not what was built: the request that
reached the configured endpoint (the preset's model, key and request shape), the audio frames
that reached the end of the pipeline, the processor that pushed each of them and its class, and
the audio itself (non-silent, at the backend's own rate; the NIM's by its pitch).

The STT backends take audio, so they are run by the WebRTC tests: ``nemotron`` and ``remote``
in ``tests/e2e/test_nvidia_profile.py``, ``whisper`` (with ``hibari`` and the embedded ``local``
LLM, the cpu profile) in ``tests/e2e/test_webrtc_voice.py``.

Fakes, named: ``FakeOpenAIServer`` stands in for each LLM server (the OpenAI protocol, scripted
words; the hosted APIs and GPU servers cannot run here) and ``ToneNim`` for a Magpie NIM (the
Riva gRPC protocol, a 440 Hz tone for audio). Piper, Hibari and the tiny Magpie are the real
backends.
"""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest
from pipecat.frames.frames import (
    EagerTranscriptionFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)

from agent.config import load_config
from pipelines.voice import build_voice_pipeline
from tests.stt.harness import LivePipeline
from tests.support.magpie_nim import TONE_HZ, ToneNim, dominant_hz
from tests.support.openai_stub import FakeOpenAIServer

pytestmark = pytest.mark.timeout(180)

QUESTION = "What time does the museum open?"
REPLY = ["It opens at nine.", " See you there."]
SERVED_MODEL = "served/model-x"

# What each preset must send, written out here (not read from services/llm/presets.py):
# (model in the request, Authorization header, enable_thinking sent as a chat template kwarg).
PRESET_REQUESTS = {
    "openai": ("gpt-4.1-mini", "Bearer sk-openai-test", False),
    "vllm": (SERVED_MODEL, "Bearer EMPTY", True),
    "nim": (SERVED_MODEL, "Bearer not-used", True),
    "llamacpp": (SERVED_MODEL, "Bearer no-key", True),
    "ollama": ("llama3.2", "Bearer ollama", True),
    "nvidia-hosted": ("nvidia/llama-3.3-nemotron-super-49b-v1.5", "Bearer nvapi-test", True),
}
# The class that must push the audio, and the rate it speaks at (None: the rate it was asked for).
TTS_OUTPUT = {
    "magpie": ("MagpieTTSService", 22050),
    "magpie-nim": ("NvidiaTTSService", None),
    "hibari": ("HibariTTSService", 24000),
    "piper": ("PiperTTSService", 22050),
}
# Every preset once and every TTS at least once, each case on one fresh pipeline.
CASES = [
    ("openai", "piper"),
    ("vllm", "hibari"),
    ("nim", "magpie"),
    ("llamacpp", "magpie-nim"),
    ("ollama", "piper"),
    ("nvidia-hosted", "magpie"),
]
TTS_PACKAGES = {"piper": "piper", "hibari": "hibari", "magpie": "nemo", "magpie-nim": "riva"}


def test_the_cases_cover_every_preset_and_tts_backend():
    from pipelines.registry import LLM_BACKENDS, TTS_BACKENDS

    # The embedded `local` preset runs in the cpu profile's WebRTC test (it starts llama.cpp).
    assert {llm for llm, _ in CASES} == set(LLM_BACKENDS) - {"local"}
    assert {tts for _, tts in CASES} == set(TTS_BACKENDS)


def settings_for(preset: str, tts: str, llm_url: str, **more: str):
    overrides = {
        "llm.preset": preset,
        "llm.base_url": llm_url,
        "tts.backend": tts,
        "turn.strategy": "timeout",
        "turn.timeout_secs": 0.3,
        **more,
    }
    return load_config(profile="cpu", overrides=overrides, env={}, dotenv_path=None).settings


async def say(live: LivePipeline, text: str) -> None:
    """One user turn as our STTs frame it: speech, VAD stop, eager then final transcript."""
    await live.send(VADUserStartedSpeakingFrame())
    await asyncio.sleep(0.02)
    await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await live.send(EagerTranscriptionFrame(text, "user", "now"))
    await live.send(TranscriptionFrame(text, "user", "now", finalized=True))


@pytest.mark.parametrize(("preset", "tts"), CASES, ids=[f"{p}-{t}" for p, t in CASES])
async def test_one_turn_through_the_configured_llm_and_tts(
    preset, tts, monkeypatch, request, tmp_path
):
    if importlib.util.find_spec(TTS_PACKAGES[tts]) is None:
        pytest.skip(f"tts.backend = {tts} needs {TTS_PACKAGES[tts]} (an optional extra)")
    for name in ("OPENAI_API_KEY", "NVIDIA_API_KEY", "VLLM_API_KEY", "NIM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("LLAMA_API_KEY", "OLLAMA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-test")

    llm = await FakeOpenAIServer(chunks=REPLY, served_model=SERVED_MODEL).start()
    nim = ToneNim().start() if tts == "magpie-nim" else None
    more = {}
    if tts == "magpie":
        more = {"tts.model": request.getfixturevalue("tiny_magpie_path"), "tts.device": "cpu"}
    elif nim is not None:
        more = {"tts.server": nim.address}
    try:
        voice = await build_voice_pipeline(settings_for(preset, tts, llm.base_url, **more))
        # Which processor first pushed each audio frame: an observer on every processor.
        producers: dict[int, object] = {}

        async def note(processor, frame):
            if isinstance(frame, TTSAudioRawFrame):
                producers.setdefault(frame.id, processor)

        for processor in voice.pipeline.processors:
            processor.add_event_handler("on_after_push_frame", note)

        def answered() -> bool:
            messages = voice.context.get_messages()
            return bool(messages) and messages[-1]["role"] == "assistant"

        async with LivePipeline([voice.pipeline], start_timeout=60) as live:
            await say(live, QUESTION)
            assert await live.wait_for(answered, timeout=60), "no answer reached the context"
            # The last sentence's audio may still be on its way to the end of the pipeline.
            await live.wait_for(lambda: False, timeout=0.5)
            audio = live.of(TTSAudioRawFrame)
    finally:
        await llm.stop()
        if nim is not None:
            nim.stop()

    # The configured endpoint got the turn, shaped as this preset shapes it.
    model, authorization, thinking_kwarg = PRESET_REQUESTS[preset]
    streamed = [r for r in llm.requests if r.get("stream")]
    assert len(streamed) == 1, llm.requests
    body, headers = streamed[0], llm.headers[llm.requests.index(streamed[0])]
    assert body["model"] == model
    assert headers.get("Authorization") == authorization
    assert body["messages"][-1] == {"role": "user", "content": QUESTION}
    kwargs = body.get("chat_template_kwargs")
    assert kwargs == ({"enable_thinking": False} if thinking_kwarg else None), body
    # Its reply is what the session kept.
    assert voice.context.get_messages()[-1]["content"] == "".join(REPLY)

    # The audio that came out was pushed by the configured backend, and it is sound.
    expected_class, expected_rate = TTS_OUTPUT[tts]
    assert audio, "no TTS audio reached the end of the pipeline"
    assert {type(producers[f.id]).__name__ for f in audio} == {expected_class}
    rates = {f.sample_rate for f in audio}
    pcm = np.frombuffer(b"".join(f.audio for f in audio), np.int16).astype(np.float64)
    assert len(pcm) / rates.pop() >= 0.3 and not rates
    assert np.sqrt(np.mean(pcm**2)) > 30, "the TTS audio is silent"
    if expected_rate is not None:
        assert audio[0].sample_rate == expected_rate
    if nim is not None:
        # The NIM spoke each sentence, and the audio is its tone.
        assert [t.strip() for t in nim.texts] == [s.strip() for s in REPLY]
        assert abs(dominant_hz(pcm, audio[0].sample_rate) - TONE_HZ) < 5
