"""Changing ``tts.backend`` / ``llm.preset`` in a file or the environment swaps the service."""

from __future__ import annotations

import pytest

from agent.config import load_config
from pipelines import registry
from services.tts.speakable import speakable_transform


def settings_from(env: dict[str, str], config_path=None):
    return load_config(config_path, env=env, dotenv_path=None, cuda_available=False).settings


def tts_class(backend: str):
    if backend == "magpie":
        from services.tts.magpie import MagpieTTSService

        return MagpieTTSService
    if backend == "magpie-nim":
        from pipecat.services.nvidia.tts import NvidiaTTSService

        return NvidiaTTSService
    if backend == "hibari":
        pytest.importorskip("hibari")
        from services.tts.hibari import HibariTTSService

        return HibariTTSService
    pytest.importorskip("piper")
    from services.tts.piper import PiperTTSService

    return PiperTTSService


@pytest.mark.parametrize("backend", ["magpie", "magpie-nim", "hibari", "piper"])
def test_env_selects_the_tts_backend_and_hygiene_applies(backend):
    cls = tts_class(backend)
    settings = settings_from({"VOICE_AGENT_TTS__BACKEND": backend})
    service = registry.resolve("tts", backend)(settings)
    assert type(service) is cls
    # Text hygiene is attached to every backend.
    assert ("*", speakable_transform) in service._text_transforms


def test_toml_file_selects_the_tts_backend(tmp_path):
    cls = tts_class("hibari")
    path = tmp_path / "agent.toml"
    path.write_text('[tts]\nbackend = "hibari"\n')
    settings = settings_from({}, path)
    assert type(registry.resolve("tts", settings.tts.backend)(settings)) is cls
    # The environment beats the file.
    settings = settings_from({"VOICE_AGENT_TTS__BACKEND": "magpie-nim"}, path)
    assert settings.tts.backend == "magpie-nim"


async def test_pipeline_services_follow_the_config():
    """What the bot builds for a session: the cpu profile's real Whisper STT, LLM and TTS from
    config."""
    pytest.importorskip("faster_whisper")
    pytest.importorskip("hibari")
    from pipecat.services.nvidia.tts import NvidiaTTSService
    from pipecat.services.whisper.stt import WhisperSTTService

    from pipelines.voice import build_services
    from services.tts.hibari import HibariTTSService

    base = {
        "VOICE_AGENT_STT__BACKEND": "whisper",
        "VOICE_AGENT_LLM__BASE_URL": "http://127.0.0.1:9/v1",
        "VOICE_AGENT_LLM__MODEL": "m",
    }
    first = await build_services(
        settings_from(
            {**base, "VOICE_AGENT_TTS__BACKEND": "magpie-nim", "VOICE_AGENT_LLM__PRESET": "vllm"}
        )
    )
    second = await build_services(
        settings_from(
            {**base, "VOICE_AGENT_TTS__BACKEND": "hibari", "VOICE_AGENT_LLM__PRESET": "ollama"}
        )
    )
    assert isinstance(first.stt, WhisperSTTService) and isinstance(second.stt, WhisperSTTService)
    assert type(first.tts) is NvidiaTTSService
    assert type(second.tts) is HibariTTSService
    assert str(first.llm._client.base_url).startswith("http://127.0.0.1:9/v1")
    assert str(second.llm._client.base_url).startswith("http://127.0.0.1:9/v1")
    assert first.llm._settings.model == "m" and second.llm._settings.model == "m"
