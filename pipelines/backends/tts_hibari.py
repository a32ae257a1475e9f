"""``tts.backend = "hibari"``: Hibari (Kokoro-82M distilled to ONNX) on CPU, offline.

The TTS of the ``cpu`` profile. ``tts.voice`` is a Hibari voice (``heart``, American English, ships
in the package; ``emma``, ``fenrir``, ``fable``, ``kore`` download once). Speaks at 24 kHz;
``tts.model`` and ``tts.device`` are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.checks import Check
    from pipelines.settings import AgentSettings

_HINT = "pip install 'hibari-tts==0.2.1'"


def _voice(settings: AgentSettings) -> str:
    from services.tts.hibari import DEFAULT_HIBARI_VOICE

    return settings.tts.voice or DEFAULT_HIBARI_VOICE


def build(settings: AgentSettings):
    """A Hibari TTS service for one session, on the process-wide voice."""
    from services.tts.hibari import HibariTTSService
    from services.tts.speakable import speakable_transforms

    return HibariTTSService(
        settings=HibariTTSService.Settings(voice=_voice(settings)),
        first_clause_min_chars=settings.tts.first_clause_min_chars,
        text_transforms=speakable_transforms(),
    )


def prewarm(settings: AgentSettings) -> None:
    """Load the voice and its G2P, and synthesize once."""
    from services.tts.hibari import load_hibari_voice

    tts, lock = load_hibari_voice(_voice(settings))
    with lock:
        tts("Hello.")


def checks(settings: AgentSettings) -> list[Check]:
    """Doctor checks: the package and the voice."""
    from pipelines.checks import Check, check_package

    found = [check_package("hibari", "hibari-tts==0.2.1")]
    if found[0].ok:
        from hibari.voices import VOICES

        voice = _voice(settings)
        ok = voice in VOICES
        detail = "bundled" if ok and VOICES[voice].get("bundled") else "downloads on first use"
        found.append(
            Check(
                f"hibari voice {voice}",
                ok,
                detail if ok else f"unknown; known: {', '.join(VOICES)}",
                "" if ok else "set tts.voice to one of the known voices",
            )
        )
    else:
        found[0].fix = _HINT
    return found
