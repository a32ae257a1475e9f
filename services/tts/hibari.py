"""Hibari TTS service: a Kokoro-82M voice distilled to a small ONNX model, on CPU.

The ``hibari-tts`` package ships the ``heart`` voice (American English) inside the wheel, so it
works offline; other voices download once into hibari's cache. It runs ~100x faster than real time
on one core and speaks at 24 kHz. One loaded voice is shared by every session in the process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
from pipecat.services.settings import TTSSettings
from pipecat.transcriptions.language import Language
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from services.tts.aggregator import DEFAULT_FIRST_CLAUSE_MIN_CHARS
from services.tts.local_tts import LocalSentenceTTSService
from services.tts.silence import trim_leading_silence

try:
    import hibari
except ModuleNotFoundError as e:
    logger.error(f"Exception: {e}")
    logger.error("In order to use Hibari TTS, you need to `pip install hibari-tts`.")
    raise ImportError(f"Missing module: {e}") from e

HIBARI_SAMPLE_RATE = hibari.SAMPLE_RATE
DEFAULT_HIBARI_VOICE = "heart"

_voices: dict[str, tuple[Any, threading.Lock]] = {}
_voices_lock = threading.Lock()


def load_hibari_voice(voice: str = DEFAULT_HIBARI_VOICE) -> tuple[Any, threading.Lock]:
    """Return the process-wide ``Hibari`` for a voice and the lock that serializes its use.

    Raises:
        ValueError: If the voice is not in hibari's registry.
    """
    from hibari.voices import VOICES

    if voice not in VOICES:
        raise ValueError(f"unknown Hibari voice {voice!r}; known: {', '.join(VOICES)}")
    with _voices_lock:
        entry = _voices.get(voice)
        if entry is None:
            tts = hibari.Hibari(voice=voice)
            tts("Hi.")  # loads the G2P lexicons and warms the ONNX session
            entry = (tts, threading.Lock())
            _voices[voice] = entry
        return entry


@dataclass
class HibariTTSSettings(TTSSettings):
    """Settings for HibariTTSService.

    Parameters:
        speed: Speech rate multiplier (0.5 slow to 2.0 fast). Defaults to 1.0.
    """

    speed: float | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class HibariTTSService(LocalSentenceTTSService):
    """Hibari TTS on CPU, one sentence per synthesis, off the event loop."""

    Settings = HibariTTSSettings
    _settings: Settings

    def __init__(
        self,
        *,
        first_clause_min_chars: int = DEFAULT_FIRST_CLAUSE_MIN_CHARS,
        sample_rate: int | None = HIBARI_SAMPLE_RATE,
        settings: Settings | None = None,
        **kwargs,
    ):
        """Initialize the Hibari TTS service.

        Args:
            first_clause_min_chars: A reply's first sentence at least this long is cut at its first
                clause boundary so speech starts earlier; 0 disables the cut.
            sample_rate: Output rate; defaults to the model's own 24 kHz.
            settings: Runtime-updatable settings (voice, speed).
            **kwargs: Passed to ``TTSService`` (e.g. ``text_transforms``).
        """
        super().__init__(
            default_settings=self.Settings(
                model=None, voice=DEFAULT_HIBARI_VOICE, language=Language.EN, speed=1.0
            ),
            settings=settings,
            first_clause_min_chars=first_clause_min_chars,
            sample_rate=sample_rate,
            **kwargs,
        )
        from hibari.voices import VOICES

        voice = str(self._settings.voice or DEFAULT_HIBARI_VOICE)
        if voice not in VOICES:
            raise ValueError(f"unknown Hibari voice {voice!r}; known: {', '.join(VOICES)}")
        self._tts: Any = None
        self._lock = threading.Lock()

    async def _load(self) -> None:
        """Load the shared voice off the event loop, reporting any failure."""
        voice = str(self._settings.voice or DEFAULT_HIBARI_VOICE)
        try:
            self._tts, self._lock = await asyncio.to_thread(load_hibari_voice, voice)
        except Exception as e:
            await self.push_error(
                error_msg=f"{self}: cannot load voice {voice!r}: {e}", exception=e
            )

    def language_to_service_language(self, language: Language) -> str:
        """Hibari voices each speak one English variant; the code is informational."""
        return str(language.value)

    async def _update_settings(self, delta: Settings) -> dict[str, Any]:
        """Apply a settings delta; a new voice is loaded (shared) for the next sentence."""
        changed = await super()._update_settings(delta)
        if "voice" in changed:
            await self._load()
        return changed

    def _synthesize(self, text: str, speed: float, stop: threading.Event) -> list[np.ndarray]:
        parts: list[np.ndarray] = []
        with self._lock:
            for part in self._tts.stream(text, speed=speed):
                if stop.is_set():
                    break
                parts.append(part)
        return parts

    async def _sentence_audio(self, text: str, stop: threading.Event) -> AsyncIterator[bytes]:
        """Yield the sentence's audio piece by piece, at 24 kHz (or the configured rate)."""
        if self._tts is None:
            await self._load()
        await self.start_tts_usage_metrics(text)
        speed = self._settings.speed if is_given(self._settings.speed) else 1.0
        parts = await asyncio.to_thread(self._synthesize, text, float(speed), stop)
        if parts:
            # Hibari opens each sentence with ~0.3 s of silence: pure latency.
            parts[0] = trim_leading_silence(parts[0], HIBARI_SAMPLE_RATE)
        for part in parts:
            audio = (np.clip(part, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
            yield await self._at_output_rate(audio, HIBARI_SAMPLE_RATE)
