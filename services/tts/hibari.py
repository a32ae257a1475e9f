"""Hibari TTS service: a Kokoro-82M voice distilled to a small ONNX model, on CPU.

The ``hibari-tts`` package ships the ``heart`` voice (American English) inside the wheel, so it
works offline; other voices download once into hibari's cache. It runs ~100x faster than real time
on one core and speaks at 24 kHz. One loaded voice is shared by every session in the process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import Frame, StartFrame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.tracing.service_decorators import traced_tts
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from services.tts.aggregator import FirstClauseTextAggregator
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


class HibariTTSService(TTSService):
    """Hibari TTS on CPU, one sentence per synthesis, off the event loop."""

    Settings = HibariTTSSettings
    _settings: Settings

    def __init__(
        self,
        *,
        first_clause_min_chars: int = 40,
        sample_rate: int | None = HIBARI_SAMPLE_RATE,
        settings: Settings | None = None,
        **kwargs,
    ):
        """Initialize the Hibari TTS service.

        Args:
            first_clause_min_chars: A reply's first sentence longer than this is cut at its first
                clause boundary so speech starts earlier; 0 disables the cut.
            sample_rate: Output rate; defaults to the model's own 24 kHz.
            settings: Runtime-updatable settings (voice, speed).
            **kwargs: Passed to ``TTSService`` (e.g. ``text_transforms``).
        """
        default_settings = self.Settings(
            model=None, voice=DEFAULT_HIBARI_VOICE, language=Language.EN, speed=1.0
        )
        if settings is not None:
            default_settings.apply_update(settings)
        # Whole-sentence synthesis can leave gaps of seconds between audio frames on a slow
        # machine; the reply's end closes the context, so this is only a fallback.
        kwargs.setdefault("stop_frame_timeout_s", 20.0)
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            sample_rate=sample_rate,
            settings=default_settings,
            **kwargs,
        )
        self._load_task: asyncio.Task | None = None
        self._text_aggregator = FirstClauseTextAggregator(
            aggregation_type=self._text_aggregation_mode,
            language=self._text_aggregator.language,
            first_clause_min_chars=first_clause_min_chars,
        )
        from hibari.voices import VOICES

        voice = str(self._settings.voice or DEFAULT_HIBARI_VOICE)
        if voice not in VOICES:
            raise ValueError(f"unknown Hibari voice {voice!r}; known: {', '.join(VOICES)}")
        self._tts: Any = None
        self._lock = threading.Lock()

    async def start(self, frame: StartFrame):
        """Start loading the shared voice in the background (off the event loop)."""
        await super().start(frame)
        self._load_task = self.create_task(self._load_voice(), name="load")

    async def cleanup(self):
        """Stop a model load still running for this session (the shared load carries on)."""
        if self._load_task is not None:
            await self.cancel_task(self._load_task)
            self._load_task = None
        await super().cleanup()

    async def _load_voice(self):
        voice = str(self._settings.voice or DEFAULT_HIBARI_VOICE)
        try:
            self._tts, self._lock = await asyncio.to_thread(load_hibari_voice, voice)
        except Exception as e:
            await self.push_error(
                error_msg=f"{self}: cannot load voice {voice!r}: {e}", exception=e
            )

    def can_generate_metrics(self) -> bool:
        """Indicate that this service reports TTFB and usage metrics."""
        return True

    def language_to_service_language(self, language: Language) -> str:
        """Hibari voices each speak one English variant; the code is informational."""
        return str(language.value)

    async def _update_settings(self, delta: Settings) -> dict[str, Any]:
        """Apply a settings delta; a new voice is loaded (shared) for the next sentence."""
        changed = await super()._update_settings(delta)
        if "voice" in changed:
            await self._load_voice()
        return changed

    def _synthesize(self, text: str, speed: float, stop: threading.Event) -> list[np.ndarray]:
        parts: list[np.ndarray] = []
        with self._lock:
            for part in self._tts.stream(text, speed=speed):
                if stop.is_set():
                    break
                parts.append(part)
        return parts

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesize one sentence and yield its audio.

        Args:
            text: The sentence to speak.
            context_id: The audio context of the current reply.

        Yields:
            ``TTSAudioRawFrame`` objects at 24 kHz (or the configured rate).
        """
        stop = threading.Event()
        try:
            if self._tts is None:
                await self._load_voice()
            await self.start_tts_usage_metrics(text)
            speed = self._settings.speed if is_given(self._settings.speed) else 1.0
            parts = await asyncio.to_thread(self._synthesize, text, float(speed), stop)
            if parts:
                # Hibari opens each sentence with ~0.3 s of silence: pure latency.
                parts[0] = trim_leading_silence(parts[0], HIBARI_SAMPLE_RATE)
            for part in parts:
                audio = (np.clip(part, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
                if self.sample_rate != HIBARI_SAMPLE_RATE:
                    audio = await self._resampler.resample(
                        audio, HIBARI_SAMPLE_RATE, self.sample_rate
                    )
                await self.stop_ttfb_metrics()
                yield TTSAudioRawFrame(
                    audio=audio, sample_rate=self.sample_rate, num_channels=1, context_id=context_id
                )
        except asyncio.CancelledError:
            stop.set()
            raise
        except Exception as e:
            await self.push_error(
                error_msg=f"{self}: synthesis failed for [{text}]: {e}", exception=e
            )
            # Close the reply's audio context now rather than after the silence timeout.
            if self.audio_context_available(context_id):
                await self.remove_audio_context(context_id)
        finally:
            stop.set()
