"""Pipeline assembly from config, for every backend combination that can run here, and a real
Pipecat run with audio in and synthesized speech out through the assembled processors."""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest
from pipecat.frames.frames import (
    InputAudioRawFrame,
    TTSAudioRawFrame,
)
from pipecat.processors.aggregators.llm_response_universal import (
    LLMAssistantAggregator,
    LLMUserAggregator,
)
from pipecat.tests.utils import SleepFrame, run_test

from agent.config import load_config
from pipelines.registry import REGISTRIES, resolve
from pipelines.voice import build_voice_pipeline
from tests.support.openai_stub import FakeOpenAIServer

# Backends that need nothing but packages installed by the test set-up. `local` starts llama.cpp
# (covered by the end-to-end tests), `nemotron`/`remote`/`magpie` need a model or server fixture
# (covered in tests/stt, tests/asr_server, tests/tts).
RUNNABLE_STT = ["whisper"]
RUNNABLE_TTS = ["hibari", "piper", "magpie-nim"]
OFFLINE_LLM_PRESETS = ["vllm", "nim", "llamacpp", "ollama", "openai", "nvidia-hosted"]


@pytest.mark.parametrize(
    ("capability", "name"),
    [(cap, name) for cap, registry in REGISTRIES.items() for name in registry],
)
def test_every_registered_backend_has_an_importable_builder(capability, name):
    builder = resolve(capability, name)
    assert callable(builder)
    module = importlib.import_module(REGISTRIES[capability][name].partition(":")[0])
    assert module.__doc__, f"{module.__name__} should say what the backend is"


def settings_for(stt: str, tts: str, llm: str, base_url: str = "http://127.0.0.1:9/v1", **more):
    overrides = {
        "stt.backend": stt,
        "tts.backend": tts,
        "llm.preset": llm,
        "llm.base_url": base_url,
        "llm.model": "scripted",
        "llm.api_key": "sk-test",
        "turn.strategy": "timeout",
        "turn.timeout_secs": 0.3,
        **more,
    }
    return load_config(profile="cpu", overrides=overrides, env={}, dotenv_path=None).settings


def expected_class(capability: str, name: str) -> type:
    """The class a config name must build, written out here, independent of the registry."""
    if capability == "stt":
        from pipecat.services.whisper.stt import WhisperSTTService

        return {"whisper": WhisperSTTService}[name]
    if capability == "llm":
        from services.llm.openai_compatible import OpenAICompatibleLLMService

        return OpenAICompatibleLLMService
    if name == "magpie-nim":
        from pipecat.services.nvidia.tts import NvidiaTTSService

        return NvidiaTTSService
    if name == "hibari":
        from services.tts.hibari import HibariTTSService

        return HibariTTSService
    from services.tts.piper import PiperTTSService

    return {"piper": PiperTTSService}[name]


@pytest.mark.parametrize(
    ("stt", "tts", "llm"), list(itertools.product(RUNNABLE_STT, RUNNABLE_TTS, OFFLINE_LLM_PRESETS))
)
async def test_assembly_for_each_backend_combination(stt, tts, llm):
    settings = settings_for(stt, tts, llm)
    voice = await build_voice_pipeline(settings)
    # Pipeline wraps the list with its own source and sink.
    inner = voice.pipeline.processors[1:-1]
    # The barge-in taps (what the user heard of each reply) sit around the output and the
    # assistant aggregator; without a transport the output slot is empty.
    heard = voice.heard_speech
    assert len(inner) == 8
    assert inner[4] is heard.before_output() and inner[5] is heard.after_output()
    assert inner[7] is heard.after_context()
    inner = inner[:4] + [inner[6]]
    # Each slot holds the class the config names: a config asking for piper gets piper.
    assert isinstance(inner[0], expected_class("stt", stt))
    assert type(inner[0]).__name__ == "SharedWhisperSTTService"  # the shared-model subclass
    assert isinstance(inner[1], LLMUserAggregator)
    assert type(inner[2]) is expected_class("llm", llm)
    assert type(inner[3]) is expected_class("tts", tts)
    assert isinstance(inner[4], LLMAssistantAggregator)
    # The LLM talks to the configured endpoint and model, whatever the preset's default.
    assert str(inner[2]._client.base_url).rstrip("/") == "http://127.0.0.1:9/v1"
    assert inner[2]._settings.model == "scripted"
    # And the processors are the session's services, in order.
    services = voice.services
    assert inner[0] is services.stt and inner[2] is services.llm and inner[3] is services.tts
    assert voice.context.get_messages() == []


def speech_16k(text: str) -> np.ndarray:
    """Synthesized speech (hibari, 24 kHz) resampled to the pipeline's 16 kHz input."""
    from scipy.signal import resample_poly

    from services.tts.hibari import load_hibari_voice

    tts, lock = load_hibari_voice("heart")
    with lock:
        chunks = list(tts.stream(text)) if hasattr(tts, "stream") else [tts(text)]
    audio = np.concatenate([np.asarray(c, dtype=np.float32).reshape(-1) for c in chunks])
    return resample_poly(audio, 2, 3).astype(np.float32)


def audio_frames(audio: np.ndarray, *, lead_s: float = 0.5, tail_s: float = 1.5) -> list:
    """20 ms input frames, paced in real time (VAD and the turn timeout run on the clock)."""
    rate = 16000
    pcm = np.concatenate([np.zeros(int(lead_s * rate)), audio, np.zeros(int(tail_s * rate))])
    pcm16 = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
    frames: list = []
    step = rate // 50
    for start in range(0, len(pcm16) - step + 1, step):
        frames.append(InputAudioRawFrame(pcm16[start : start + step].tobytes(), rate, 1))
        if len(frames) % 5 == 0:
            frames.append(SleepFrame(0.1))
    return frames


async def test_audio_in_speech_out_through_the_assembled_pipeline():
    server = await FakeOpenAIServer(chunks=["Paris is", " the capital", " of France."]).start()
    try:
        settings = settings_for("whisper", "hibari", "vllm", base_url=server.base_url)
        voice = await build_voice_pipeline(settings)
        frames = audio_frames(speech_16k("What is the capital of France?"))
        frames.append(SleepFrame(6.0))  # LLM + TTS finish after the turn ends
        down, _ = await run_test(voice.pipeline, frames_to_send=frames, start_timeout=30)
    finally:
        await server.stop()

    # The user aggregator consumes transcripts; what reached the LLM is the proof.
    assert server.requests, "the LLM was never asked"
    sent = server.requests[0]["messages"]
    assert sent[0]["role"] == "system" and "voice assistant" in sent[0]["content"]
    user_turn = sent[-1]
    assert user_turn["role"] == "user" and "capital" in str(user_turn["content"]).lower()
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio, "the TTS produced no audio"
    total_s = sum(len(f.audio) // 2 / f.sample_rate for f in audio)
    assert total_s > 0.5
    # The assistant aggregator recorded the reply in the conversation context.
    messages = voice.context.get_messages()
    assert messages[-1]["role"] == "assistant" and "Paris" in str(messages[-1]["content"])
