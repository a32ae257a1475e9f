"""Base class for in-process TTS services that synthesize one sentence at a time.

Hibari, Piper and Magpie share their setup: the first-clause text aggregator, a long silence
fallback, a model load started in the background at ``start()``, and the same ``run_tts`` around
each service's own synthesis, with the same failure handling.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from pipecat.frames.frames import Frame, StartFrame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.utils.tracing.service_decorators import traced_tts

from services.tts.aggregator import DEFAULT_FIRST_CLAUSE_MIN_CHARS, FirstClauseTextAggregator


class LocalSentenceTTSService(TTSService):
    """A TTS service whose model runs in this process and speaks whole sentences.

    Subclasses implement ``_load`` and ``_sentence_audio``.
    """

    def __init__(
        self,
        *,
        default_settings: TTSSettings,
        settings: TTSSettings | None = None,
        first_clause_min_chars: int = DEFAULT_FIRST_CLAUSE_MIN_CHARS,
        **kwargs,
    ):
        """Initialize the service.

        Args:
            default_settings: The service's own defaults, updated in place with ``settings``.
            settings: The caller's settings, applied over ``default_settings``.
            first_clause_min_chars: A reply's first sentence at least this long is cut at its first
                clause boundary so speech starts earlier; 0 disables the cut.
            **kwargs: Passed to ``TTSService`` (e.g. ``sample_rate``).
        """
        if settings is not None:
            default_settings.apply_update(settings)
        # Whole-sentence synthesis can leave gaps of seconds between audio frames on a slow
        # machine; the reply's end closes the context, so this is only a fallback.
        kwargs.setdefault("stop_frame_timeout_s", 20.0)
        super().__init__(
            push_start_frame=True, push_stop_frames=True, settings=default_settings, **kwargs
        )
        self._load_task: asyncio.Task | None = None
        self._text_aggregator = FirstClauseTextAggregator(
            aggregation_type=self._text_aggregation_mode,
            language=self._text_aggregator.language,
            first_clause_min_chars=first_clause_min_chars,
        )

    async def _load(self) -> None:
        """Load the (shared) model.

        It runs as a background task, so it reports failures with ``push_error`` rather than raise.
        """
        raise NotImplementedError

    def _sentence_audio(self, text: str, stop: threading.Event) -> AsyncIterator[bytes]:
        """Yield one sentence as 16-bit mono PCM at ``self.sample_rate``.

        Args:
            text: The sentence (or first clause) to speak.
            stop: Set when the sentence is no longer wanted; synthesis should end early.
        """
        raise NotImplementedError

    def can_generate_metrics(self) -> bool:
        """Indicate that this service reports TTFB and usage metrics."""
        return True

    async def start(self, frame: StartFrame):
        """Start loading the model in the background (off the event loop)."""
        await super().start(frame)
        self._load_task = self.create_task(self._load(), name="load")

    async def cleanup(self):
        """Stop a model load still running for this session (the shared load carries on)."""
        if self._load_task is not None:
            await self.cancel_task(self._load_task)
            self._load_task = None
        await super().cleanup()

    async def _at_output_rate(self, audio: bytes, rate: int) -> bytes:
        """Resample 16-bit mono PCM from ``rate`` to the output rate when they differ."""
        if rate == self.sample_rate:
            return audio
        return await self._resampler.resample(audio, rate, self.sample_rate)

    @traced_tts
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesize one sentence and yield its audio.

        Args:
            text: The sentence (or first clause) to speak.
            context_id: The audio context of the current reply.

        Yields:
            ``TTSAudioRawFrame`` objects at the output sample rate.
        """
        stop = threading.Event()
        try:
            async with aclosing(self._sentence_audio(text, stop)) as chunks:
                async for audio in chunks:
                    await self.stop_ttfb_metrics()
                    yield TTSAudioRawFrame(
                        audio=audio,
                        sample_rate=self.sample_rate,
                        num_channels=1,
                        context_id=context_id,
                    )
        except Exception as e:
            await self.push_error(
                error_msg=f"{self}: synthesis failed for [{text}]: {e}", exception=e
            )
            # Close the reply's audio context now rather than after the silence timeout.
            if self.audio_context_available(context_id):
                await self.remove_audio_context(context_id)
        finally:
            # On an interruption (cancellation) or a closed generator the worker thread stops at
            # its next step instead of finishing a sentence nobody will hear.
            stop.set()
