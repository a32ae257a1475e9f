"""Magpie TTS service: NVIDIA's Magpie model running in-process through NeMo.

``MagpieTTSModel.do_tts`` returns one waveform per call, so the service synthesizes sentence by
sentence: the first sentence of a reply (or its first clause, when it is long) is synthesized as
soon as it is complete, while the LLM is still writing the rest. Audio comes out at the model's
own rate (22050 Hz for ``nvidia/magpie_tts_multilingual_357m``); the output transport resamples.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
from pipecat.services.settings import TTSSettings
from pipecat.transcriptions.language import Language, resolve_language
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from services.tts.aggregator import DEFAULT_FIRST_CLAUSE_MIN_CHARS
from services.tts.local_tts import LocalSentenceTTSService
from services.tts.magpie_engine import (
    DEFAULT_MAGPIE_MODEL,
    MagpieEngine,
    SynthesisCancelled,
    get_magpie_engine,
    speaker_index,
)

_LANGUAGES = {
    Language.EN: "en",
    Language.ES: "es",
    Language.DE: "de",
    Language.FR: "fr",
    Language.VI: "vi",
    Language.IT: "it",
    Language.ZH: "zh",
    Language.HI: "hi",
    Language.JA: "ja",
}


def language_to_magpie_language(language: Language) -> str:
    """Convert a Language enum to a Magpie language code (``en``, ``es``, ...)."""
    return resolve_language(language, _LANGUAGES, use_base_code=True)


@dataclass
class MagpieTTSSettings(TTSSettings):
    """Settings for MagpieTTSService.

    Parameters:
        cfg_scale: Classifier-free guidance scale. None keeps the checkpoint's own setting
            (guidance on); 1.0 turns guidance off, which halves the decoder compute.
    """

    cfg_scale: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class MagpieTTSService(LocalSentenceTTSService):
    """Magpie TTS in-process, sentence by sentence, on a model shared by all sessions.

    Synthesis runs on the shared engine's worker thread. An interruption cancels the running
    synthesis at the next decoder step and the base class drops any audio not yet played.
    """

    Settings = MagpieTTSSettings
    _settings: Settings

    def __init__(
        self,
        *,
        model: str = DEFAULT_MAGPIE_MODEL,
        device: str = "auto",
        engine: MagpieEngine | None = None,
        first_clause_min_chars: int = DEFAULT_FIRST_CLAUSE_MIN_CHARS,
        frame_ms: int = 200,
        sample_rate: int | None = None,
        settings: Settings | None = None,
        **kwargs,
    ):
        """Initialize the Magpie TTS service.

        Args:
            model: Hugging Face id or path to a local ``.nemo`` checkpoint.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
            engine: An engine to use instead of the process-wide one for (model, device).
            first_clause_min_chars: A reply's first sentence at least this long is cut at its first
                clause boundary so speech starts earlier; 0 disables the cut.
            frame_ms: Duration of each audio frame pushed downstream.
            sample_rate: Output rate; None (recommended) uses the model's own rate.
            settings: Runtime-updatable settings (voice = speaker name or index, language,
                cfg_scale).
            **kwargs: Passed to ``TTSService`` (e.g. ``text_transforms``).
        """
        super().__init__(
            default_settings=self.Settings(
                model=model, voice="Aria", language=Language.EN, cfg_scale=None
            ),
            settings=settings,
            first_clause_min_chars=first_clause_min_chars,
            sample_rate=sample_rate,
            **kwargs,
        )
        self._engine = engine or get_magpie_engine(model, device)
        self._frame_ms = frame_ms

    @property
    def engine(self) -> MagpieEngine:
        """The (shared) engine this service synthesizes with."""
        return self._engine

    def language_to_service_language(self, language: Language) -> str:
        """Convert a Language enum to a Magpie language code."""
        return language_to_magpie_language(language)

    async def _load(self) -> None:
        """Load the shared model and check the voice, reporting any failure."""
        try:
            await self._ensure_ready()
            speaker_index(self._settings.voice, self._engine.num_speakers)
        except Exception as e:
            await self.push_error(error_msg=f"{self}: {e}", exception=e)

    async def _ensure_ready(self):
        """Wait for the model (shared, loaded once) and adopt its sample rate."""
        await self._engine.load()
        if not self._init_sample_rate:
            self._sample_rate = self._engine.sample_rate

    async def _update_settings(self, delta: Settings) -> dict[str, Any]:
        """Apply a settings delta; voice, language and cfg_scale apply from the next sentence."""
        changed = await super()._update_settings(delta)
        if "model" in changed:
            self._warn_unhandled_updated_settings({"model": changed["model"]})
        return changed

    def _pcm(self, audio: np.ndarray) -> bytes:
        return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()

    async def _sentence_audio(self, text: str, stop: threading.Event) -> AsyncIterator[bytes]:
        """Yield the sentence's audio in ``frame_ms`` pieces, at the model's rate."""
        await self._ensure_ready()
        speaker = speaker_index(self._settings.voice, self._engine.num_speakers)
        language = self._settings.language if is_given(self._settings.language) else "en"
        cfg_scale = self._settings.cfg_scale if is_given(self._settings.cfg_scale) else None
        await self.start_tts_usage_metrics(text)
        try:
            result = await self._engine.synthesize(
                text,
                language=str(language or "en"),
                speaker=speaker,
                cfg_scale=cfg_scale,
                cancel=stop,
            )
        except SynthesisCancelled:
            logger.debug(f"{self}: synthesis cancelled [{text}]")
            return
        audio = await self._at_output_rate(self._pcm(result.audio), result.sample_rate)
        await self.stop_ttfb_metrics()
        logger.debug(
            f"{self}: {len(audio) / 2 / self.sample_rate:.2f} s of audio in "
            f"{result.seconds:.2f} s [{text}]"
        )
        step = max(2, int(self.sample_rate * self._frame_ms / 1000) * 2)
        for start in range(0, len(audio), step):
            yield audio[start : start + step]
