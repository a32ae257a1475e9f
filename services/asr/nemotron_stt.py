"""In-process cache-aware Nemotron STT: a Pipecat service on the shared batched ASR engine.

Every session of the process opens one stream on the same engine (one per model and device), so
a GPU serves many concurrent users with one batched step per chunk.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
from loguru import logger

from services.asr.engine import (
    ASREngine,
    ASRStream,
    EngineConfig,
    EngineFullError,
    StreamClosedError,
    get_engine,
    shared_engine_process,
)
from services.asr.stt_base import (
    NEMOTRON_TTFS_P99,
    BackendTranscript,
    CacheAwareSTTService,
    CacheAwareSTTSettings,
)

__all__ = [
    "NEMOTRON_TTFS_P99",
    "NemotronSTTService",
    "NemotronSTTSettings",
    "measure_finalize_latency",
]


@dataclass
class NemotronSTTSettings(CacheAwareSTTSettings):
    """Runtime settings of :class:`NemotronSTTService` (model, language, interim_results)."""


class NemotronSTTService(CacheAwareSTTService):
    """Streaming speech-to-text on the in-process cache-aware Nemotron engine.

    Audio frames go straight into an engine stream; partial transcripts become interim frames;
    at the VAD stop a speculative final is pushed as a finalized ``TranscriptionFrame``.

    Example::

        stt = NemotronSTTService(engine_config=EngineConfig(model="/models/nemotron.nemo"))
    """

    Settings = NemotronSTTSettings
    _settings: NemotronSTTSettings

    def __init__(
        self,
        *,
        engine: ASREngine | None = None,
        engine_config: EngineConfig | None = None,
        settings: NemotronSTTSettings | None = None,
        reopen_interval_secs: float = 2.0,
        engine_process: bool = False,
        **kwargs,
    ):
        """Initialize the service.

        Args:
            engine: A loaded engine to use; otherwise the process-wide engine for
                ``engine_config`` is used (loaded on first start, off the event loop).
            engine_config: Engine settings when ``engine`` is None.
            settings: Runtime settings (model is informational; language ``en``).
            reopen_interval_secs: After a stream could not be opened (engine full), how often
                to try again while audio keeps coming.
            engine_process: Without ``engine``, run the engine for ``engine_config`` in a child
                process shared by every session on this event loop, so the sessions' frame
                processing and the engine's scheduler never compete for Python's interpreter
                lock (what many sessions per bot process need).
            **kwargs: Passed to ``CacheAwareSTTService`` / ``STTService`` (``ttfs_p99_latency``,
                ``reset_after_secs``, ``audio_passthrough``...).
        """
        self._engine_config = engine_config or (engine.config if engine else EngineConfig())
        merged = NemotronSTTSettings(model=self._engine_config.model)
        if settings is not None:
            merged.apply_update(settings)
        super().__init__(settings=merged, **kwargs)
        self._engine = engine
        self._stream: ASRStream | None = None
        self._reader: asyncio.Task | None = None
        self._reopen_interval = reopen_interval_secs
        self._next_open_attempt = 0.0
        self._engine_process = engine_process and engine is None
        self._restart: asyncio.Task | None = None

    @property
    def engine(self) -> ASREngine | None:
        """The engine this service streams into (None until started)."""
        return self._engine

    async def _backend_open(self) -> None:
        if self._engine_process and (self._engine is None or self._engine.is_shutdown):
            # The first session starts it (the model loads in the child); the rest share it.
            self._engine = await shared_engine_process(self._engine_config)
        elif self._engine is None:
            logger.info(f"{self}: loading ASR engine {self._engine_config.model}...")
            # Model loading takes seconds: never on the event loop.
            self._engine = await asyncio.to_thread(get_engine, self._engine_config)
        await self._open_stream()

    async def _open_stream(self) -> bool:
        self._next_open_attempt = time.monotonic() + self._reopen_interval
        try:
            stream = self._engine.open_stream()
        except EngineFullError as exc:
            await self._report_error(
                f"ASR engine is at capacity ({exc}); this session gets no transcripts until a "
                "stream frees up",
                exc,
            )
            return False
        except StreamClosedError as exc:  # an engine process that just died
            await self._report_error(f"ASR engine unavailable: {exc}", exc)
            return False
        self._stream = stream
        self._set_utterance((stream.id, stream.utterance))
        self._reader = self.create_task(self._read_partials(stream), name="asr_partials")
        return True

    async def _read_partials(self, stream: ASRStream) -> None:
        try:
            async for event in stream.events():
                # Keyed by the stream as this side names it (an engine process names its
                # streams its own way).
                await self._on_backend_partial(
                    BackendTranscript(event.text, (stream.id, event.utterance))
                )
        except Exception as exc:
            await self._report_error(f"ASR stream failed: {exc}", exc)

    async def _restart_engine(self) -> None:
        try:
            self._engine = await shared_engine_process(self._engine_config)
        except Exception as exc:
            await self._report_error(f"the ASR engine process could not restart: {exc}", exc)

    async def _backend_close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()  # frees the slot at once; ends the partials reader
        for task in (self._reader, self._restart):
            if task is not None and not task.done():
                await self.cancel_task(task)
        self._reader = self._restart = None
        self._set_utterance(None)

    async def _backend_send(self, audio: bytes) -> None:
        if self._stream is None or self._stream.closed:
            if self._engine is None or time.monotonic() < self._next_open_attempt:
                return
            if self._engine_process and self._engine.is_shutdown:
                # The engine process died: a new one loads in the background; the audio until
                # it is ready goes untranscribed.
                self._next_open_attempt = time.monotonic() + self._reopen_interval
                if self._restart is None or self._restart.done():
                    self._restart = self.create_task(self._restart_engine(), "asr_engine_restart")
                return
            if self._stream is not None:
                await self._backend_close()
            if not await self._open_stream():
                return
        self._stream.push_audio(audio)

    async def _backend_finalize(self) -> BackendTranscript | None:
        stream = self._stream
        if stream is None:
            return None
        event = await stream.finalize()
        return BackendTranscript(event.text, (stream.id, event.utterance), event.words)

    async def _backend_reset(self) -> None:
        if self._stream is None:
            return
        self._stream.reset()
        self._set_utterance((self._stream.id, self._stream.utterance))


def measure_finalize_latency(engine: ASREngine, *, runs: int = 5, audio_secs: float = 1.0) -> float:
    """P99-ish (max of ``runs``) seconds of one finalize on ``engine``, measured on noise.

    Blocking: call it from a thread or at start-up (the builder's ``prewarm`` does).
    """
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(int(audio_secs * engine.sample_rate)) * 0.05).astype(np.float32)
    stream = engine.open_stream()
    worst = 0.0
    try:
        for _ in range(runs):
            stream.push_audio(audio)
            started = time.perf_counter()
            stream.finalize_sync(timeout=30)
            worst = max(worst, time.perf_counter() - started)
            stream.reset()
    finally:
        stream.close()
    return worst
