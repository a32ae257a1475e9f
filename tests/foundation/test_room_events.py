"""The models the room page names (``bot-ready``'s ``about.models``), from the config.

The browser test (``tests/e2e/test_browser_room.py``) checks the names on the page for the
``cpu`` profile; these check the other backends' names without starting any.
"""

from __future__ import annotations

import asyncio

from agent.config import load_config
from pipelines.room_events import RoomRTVIProcessor, models_in_use
from services.llm.llama_server import default_gguf_path


def settings_with(profile: str = "cpu", **overrides: str):
    return load_config(
        profile=profile, overrides=overrides, env={}, dotenv_path=None, cuda_available=False
    ).settings


def test_cpu_profile_names_its_packaged_models():
    assert models_in_use(settings_with("cpu")) == {
        "stt": {"backend": "whisper", "model": "tiny.en"},
        "llm": {"backend": "local", "model": default_gguf_path().name},
        "tts": {"backend": "hibari"},
    }


def test_names_come_from_the_config_file_names_not_paths():
    settings = settings_with(
        "cpu",
        **{
            "stt.backend": "nemotron",
            "stt.model": "/models/asr/my-nemotron.nemo",
            "llm.gguf_path": "/models/llm/qwen3-4b.Q4_K_M.gguf",
            "tts.backend": "magpie",
            "tts.model": "nvidia/magpie_tts_multilingual_357m",
            "tts.voice": "Sofia",
        },
    )
    assert models_in_use(settings) == {
        "stt": {"backend": "nemotron", "model": "my-nemotron.nemo"},
        "llm": {"backend": "local", "model": "qwen3-4b.Q4_K_M.gguf"},
        # A hub id is its name.
        "tts": {
            "backend": "magpie",
            "model": "nvidia/magpie_tts_multilingual_357m",
            "voice": "Sofia",
        },
    }


def test_remote_stt_and_endpoint_llms():
    remote = settings_with(
        "cpu",
        **{
            "stt.backend": "remote",
            "stt.server_url": "ws://asr-box:8765/v1/stream",
            "llm.preset": "vllm",
            "tts.backend": "magpie-nim",
            "tts.server": "tts-box:50051",
        },
    )
    models = models_in_use(remote)
    assert models["stt"] == {"backend": "remote", "model": "ASR server ws://asr-box:8765/v1/stream"}
    # vLLM serves whatever it was started with: the service asks it on the first request.
    assert models["llm"] == {"backend": "vllm", "model": "served at http://localhost:8000/v1"}
    assert models["tts"] == {"backend": "magpie-nim", "model": "NIM at tts-box:50051"}
    named = settings_with("cpu", **{"llm.preset": "ollama", "llm.model": "qwen3:4b"})
    assert models_in_use(named)["llm"] == {"backend": "ollama", "model": "qwen3:4b"}


def test_the_tts_service_names_its_default_voice():
    class Settings:
        voice = "heart"

    class Service:
        settings = Settings()

    class Services:
        tts = Service()

    assert models_in_use(settings_with("cpu"), Services())["tts"] == {
        "backend": "hibari",
        "voice": "heart",
    }


def test_bot_ready_carries_the_models_beside_pipecats_about():
    models = models_in_use(settings_with("cpu"))
    processor = RoomRTVIProcessor(models)
    sent = []

    async def capture(about=None):
        sent.append(about)

    processor._send_bot_ready = capture  # what goes on the wire is Pipecat's own code
    asyncio.run(processor.set_bot_ready())
    assert sent[0]["models"] == models
    assert sent[0]["library"] == "pipecat-ai" and sent[0]["library_version"]
