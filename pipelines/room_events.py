"""What the room page learns from the agent beyond Pipecat's standard RTVI messages.

The page (``agent/web/room.html``) shows transcripts, who is speaking and the bot's words from
Pipecat's own RTVI messages (``user-input``, ``user-/bot-started-speaking``, ``bot-output``) and
each turn's latency from the ``turn-latency`` server message (``agent/bot.py``). The one thing
RTVI has no message for is which models the session runs; RTVI's ``bot-ready`` carries an
``about`` object meant for exactly this kind of description, so :class:`RoomRTVIProcessor` adds
``about.models`` to it: sent once per connection, when the client says it is ready.

The names come from the config, not from the loaded services, because the services often hold
a less telling name (the embedded LLM's alias ``local``, a folder path for Whisper), except
where only the service knows it: a TTS backend's default voice.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipecat import version as pipecat_version
from pipecat.processors.frameworks.rtvi import RTVIProcessor

from pipelines.checks import looks_like_path

if TYPE_CHECKING:
    from pipelines.settings import AgentSettings
    from pipelines.voice import VoiceServices


def _short(name: str) -> str:
    """A model's file or folder name instead of its whole path; hub ids stay as they are."""
    return Path(name).expanduser().name if looks_like_path(name) else name


def _service_setting(service: Any, key: str) -> str | None:
    value = getattr(getattr(service, "settings", None), key, None)
    return value if isinstance(value, str) and value else None


def _stt_model(settings: AgentSettings) -> str:
    stt = settings.stt
    if stt.backend == "whisper":
        from pipelines.backends.stt_whisper import model_name, packaged_model_path

        try:
            name = model_name(settings)
            return "tiny.en" if name == packaged_model_path() else _short(name)
        except ImportError:  # the packaged model is missing: the start-up check says so
            return "tiny.en"
    if stt.backend == "remote":
        # The server chooses its model; the bot only knows where it is.
        return f"ASR server {stt.server_url}"
    return _short(stt.model)


def _llm_model(settings: AgentSettings) -> str:
    llm = settings.llm
    if llm.preset == "local":
        from services.llm.llama_server import LlamaServerError, default_gguf_path

        try:
            return _short(llm.gguf_path) if llm.gguf_path else default_gguf_path().name
        except LlamaServerError:
            return "GGUF not found"
    from services.llm.presets import PresetError, resolve_endpoint

    try:
        endpoint = resolve_endpoint(llm.preset, base_url=llm.base_url, model=llm.model)
    except PresetError:
        return llm.model or "unknown"
    # No model configured: the service asks the server on its first request, after connect.
    return endpoint.model or f"served at {endpoint.base_url}"


def _tts_model(settings: AgentSettings) -> str | None:
    tts = settings.tts
    if tts.backend == "magpie":
        return _short(tts.model)
    if tts.backend == "magpie-nim":
        return f"NIM at {tts.server}"
    return None  # hibari and piper: the backend and its voice say it all


def models_in_use(
    settings: AgentSettings, services: VoiceServices | None = None
) -> dict[str, dict[str, str]]:
    """The STT, LLM and TTS of a session: ``{"stt": {"backend": ..., "model": ...}, ...}``.

    Args:
        settings: The resolved settings.
        services: The session's services, for what only they know (the TTS's default voice);
            omitted, the config alone answers.
    """
    stt = {"backend": settings.stt.backend, "model": _stt_model(settings)}
    llm = {"backend": settings.llm.preset, "model": _llm_model(settings)}
    tts: dict[str, str] = {"backend": settings.tts.backend}
    model = _tts_model(settings)
    if model:
        tts["model"] = model
    voice = (_service_setting(services.tts, "voice") if services else None) or settings.tts.voice
    if voice:
        tts["voice"] = voice
    return {"stt": stt, "llm": llm, "tts": tts}


class RoomRTVIProcessor(RTVIProcessor):
    """Pipecat's RTVI processor whose ``bot-ready`` also names the models in use."""

    def __init__(self, models: Mapping[str, Mapping[str, str]], **kwargs):
        """Initialize the processor.

        Args:
            models: What :func:`models_in_use` returned, sent as ``bot-ready``'s
                ``about.models``.
            **kwargs: Passed to ``RTVIProcessor``.
        """
        super().__init__(**kwargs)
        self.models = {key: dict(value) for key, value in models.items()}

    async def set_bot_ready(self, about: Mapping[str, Any] | None = None):
        """Send ``bot-ready`` with Pipecat's usual ``about`` plus ``models``."""
        about = dict(about or {"library": "pipecat-ai", "library_version": pipecat_version()})
        about["models"] = self.models
        await super().set_bot_ready(about=about)


def room_rtvi_processor(
    settings: AgentSettings, services: VoiceServices | None = None
) -> RoomRTVIProcessor:
    """The RTVI processor for one session (pass it to ``create_worker(rtvi_processor=...)``)."""
    return RoomRTVIProcessor(models_in_use(settings, services))
