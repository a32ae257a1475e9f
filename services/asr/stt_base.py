"""Turn logic shared by the in-process and the remote cache-aware Nemotron STT services.

A backend (an engine stream, or a connection to the ASR server) transcribes one utterance at a
time and reports its *whole* text so far. This base turns that into Pipecat frames:

- audio frames are handed to the backend without waiting (``run_stt`` only enqueues);
- partial texts become :class:`InterimTranscriptionFrame` as the text grows;
- at the VAD stop a speculative final is requested on a copy of the stream state; its text is
  pushed as one :class:`TranscriptionFrame` with ``finalized=True`` (TTFB: speech end -> final);
- with eager end of turn on (Pipecat's ``EagerEndOfTurnSTTServiceMixin``), that final is
  announced first as an ``EagerTranscriptionFrame``: the turn strategy may answer it before the
  turn is confirmed; speech resuming withdraws it (``EagerEndOfTurnCancelFrame``);
- if speech resumes before that final is back, the final is dropped;
- if speech resumes after it was pushed, the stream carries on (same acoustic context) and the
  next final pushes only the words the user added, so the user aggregator never gets the first
  part twice (see :func:`unsent_suffix`);
- at the end of the user turn (``UserStoppedSpeakingFrame``), or after ``reset_after_secs`` of
  silence past a final, the utterance is accepted (backend reset): the next one starts fresh,
  with the audio heard since the VAD stop (at most ``CARRY_OVER_SECS``) pushed again, because
  the user may already have started the next sentence (the VAD confirms speech only after its
  start_secs) and a reset drops whatever the backend was given before it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, Hashable
from dataclasses import dataclass, field

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.turns.eager_end_of_turn_mixin import EagerEndOfTurnSTTServiceMixin
from pipecat.utils.time import time_now_iso8601
from pipecat.utils.types import NOT_GIVEN, NotGiven

from services.asr.engine.events import WordTiming
from services.asr.server.metrics import quantile

# Speech end -> finalized transcript, p99, announced until measured: VAD stop_secs 0.2 (what
# Pipecat's built-in values assume) + a 150 ms budget for one finalize step. The measurement
# closest to it is scripts/bench_stt_sessions.py's "time to final" (VAD stop -> final): p99 116 ms
# with 16 sessions on the engine process, 288 ms with 32 (tiny model, 2 vCPUs; README table),
# i.e. 0.32 and 0.49 s from speech end. The in-process engine's prewarm replaces this with
# stop_secs + measure_finalize_latency on the loaded model (pipelines/backends/stt_nemotron.py);
# the engine process and the remote service start from it and refine it from their own finals
# (see ``update_ttfs``).
NEMOTRON_TTFS_P99 = 0.35
# Audio since the VAD stop handed to the next utterance when one is accepted: covers a VAD
# start_secs (0.2 s by default) of speech that began just before the turn ended.
CARRY_OVER_SECS = 0.5


@dataclass
class CacheAwareSTTSettings(STTSettings):
    """Runtime settings of the Nemotron STT services.

    Parameters:
        interim_results: Push InterimTranscriptionFrames while the user speaks.
    """

    interim_results: bool | NotGiven = field(default_factory=lambda: NOT_GIVEN)


@dataclass(frozen=True)
class BackendTranscript:
    """A backend's text of one utterance.

    Finalized ``TranscriptionFrame``s carry the final one as their ``result``, so a consumer
    (captions, an interrupted reply) can read when each word was said; its ``text`` is the
    whole utterance, the frame's text only the part not pushed before.

    Parameters:
        text: The whole utterance so far.
        key: Identifies the utterance (stream/connection and utterance index); results whose
            key is not the current one belong to an utterance already accepted or lost.
        words: Finals: every word of the utterance with its start and end, in seconds from
            the utterance's first sample (None on partials, or when the backend has none).
    """

    text: str
    key: Hashable
    words: tuple[WordTiming, ...] | None = None


def unsent_suffix(committed: str, full: str) -> str:
    """The words of ``full`` that come after the already pushed text ``committed``.

    The two can disagree at the seam: a speculative final decodes the last chunk against
    silence, the live stream against the speech that followed ("hello wor" vs "hello world
    how"), and word splits can move ("hello world" vs "hello wor ld how"). So words are skipped
    by letter count: the cut falls on the word boundary of ``full`` nearest to the number of
    letters already pushed (the later one on a tie, to never repeat a word).

    Args:
        committed: Text already pushed as final for this utterance ("" if none).
        full: The utterance's whole text now.

    Returns:
        The unsent words, space-joined ("" if nothing new).
    """
    words = full.split()
    target = len("".join(committed.split()))
    if target == 0:
        return " ".join(words)
    best, best_distance, letters = 0, target, 0
    for index, word in enumerate(words, start=1):
        letters += len(word)
        distance = abs(letters - target)
        if distance <= best_distance:
            best, best_distance = index, distance
        elif letters > target:
            break
    return " ".join(words[best:])


class CacheAwareSTTService(EagerEndOfTurnSTTServiceMixin, STTService):
    """Base of the Nemotron STT services: speculative finals at VAD stop, no repeated text.

    With ``enable_eager_end_of_turn=True`` each speculative final is also an eager end of turn
    (see :class:`~pipecat.turns.eager_end_of_turn_mixin.EagerEndOfTurnSTTServiceMixin`), so a
    speculative turn strategy can start the LLM at the VAD stop.

    Subclasses implement the backend hooks (``_backend_open``, ``_backend_close``,
    ``_backend_send``, ``_backend_finalize``, ``_backend_reset``) and report partial texts
    with :meth:`_on_backend_partial`.
    """

    Settings = CacheAwareSTTSettings
    _settings: CacheAwareSTTSettings

    def __init__(
        self,
        *,
        settings: CacheAwareSTTSettings | None = None,
        ttfs_p99_latency: float | None = NEMOTRON_TTFS_P99,
        reset_after_secs: float | None = 3.0,
        update_ttfs: bool = True,
        **kwargs,
    ):
        """Initialize the service.

        Args:
            settings: Runtime settings (model, language, interim_results).
            ttfs_p99_latency: P99 seconds from speech end to the finalized transcript, broadcast
                to turn strategies at start.
            reset_after_secs: Accept the utterance after this much silence past a final even
                if no turn end arrives (None: only at turn end).
            update_ttfs: Re-broadcast ``ttfs_p99_latency`` when the measured p99 (after 20
                finals) drifts more than 25% from the announced value.
            **kwargs: Passed to ``STTService`` and Pipecat's eager end-of-turn mixin
                (``enable_eager_end_of_turn``, ``eager_match_policy``).
        """
        default = self.Settings(model=None, language=Language.EN, interim_results=True)
        if settings is not None:
            default.apply_update(settings)
        super().__init__(settings=default, ttfs_p99_latency=ttfs_p99_latency, **kwargs)
        self._reset_after_secs = reset_after_secs
        self._update_ttfs = update_ttfs

        self._key: Hashable | None = None  # current utterance of the backend
        self._committed = ""  # text of the current utterance already pushed as final
        # The text of the last interim pushed since the last final. It outlives the utterance
        # (an idle reset, a failover's new stream): the same text again is a repeat to
        # consumers, who replace the interim they show, whichever utterance it came from.
        self._last_interim = ""
        self._final_generation = 0  # bumped when speech resumes: in-flight finals are stale
        self._final_task: asyncio.Task | None = None
        self._reset_pending = False
        self._silence_reset_task: asyncio.Task | None = None
        self._speech_end_time: float | None = None
        # Audio pushed since the last VAD stop (None before one): the start of what follows.
        self._carry: bytearray | None = None
        self._ttfs_samples: collections.deque[float] = collections.deque(maxlen=200)
        self._last_error_time = 0.0
        self.finals_pushed = 0
        self.finals_discarded = 0

    # ---- backend hooks ----

    @abstractmethod
    async def _backend_open(self) -> None:
        """Open the stream/connection; set the first utterance with :meth:`_set_utterance`."""

    @abstractmethod
    async def _backend_close(self) -> None:
        """Free the stream/connection (idempotent)."""

    @abstractmethod
    async def _backend_send(self, audio: bytes) -> None:
        """Hand PCM16 audio to the backend without waiting for recognition."""

    @abstractmethod
    async def _backend_finalize(self) -> BackendTranscript | None:
        """Speculative final of the current utterance (None when the backend is unavailable)."""

    @abstractmethod
    async def _backend_reset(self) -> None:
        """Accept the utterance; call :meth:`_set_utterance` with the new utterance's key."""

    # ---- helpers for backends ----

    def _set_utterance(self, key: Hashable | None) -> None:
        """Make ``key`` the current utterance; the turn's pushed text belongs to the old one."""
        self._key = key
        self._committed = ""

    async def _on_backend_partial(self, transcript: BackendTranscript) -> None:
        """A backend's partial text: push the unsent part as an interim transcript."""
        if transcript.key != self._key or not self._settings.interim_results:
            return
        text = unsent_suffix(self._committed, transcript.text)
        if not text or text == self._last_interim:
            return
        self._last_interim = text
        await self.push_frame(
            InterimTranscriptionFrame(
                text, self._user_id, time_now_iso8601(), self._language_enum()
            )
        )

    async def _report_error(self, message: str, exception: Exception | None = None) -> None:
        """Push a non-fatal ErrorFrame, at most one per second (audio errors repeat at 50/s)."""
        now = time.monotonic()
        if now - self._last_error_time < 1.0:
            logger.debug(f"{self}: {message}")
            return
        self._last_error_time = now
        await self.push_error(f"{self.name}: {message}", exception=exception)

    def _language_enum(self) -> Language | None:
        language = self._settings.language
        try:
            return Language(language) if language else None
        except ValueError:
            return None

    # ---- Pipecat plumbing ----

    def can_generate_metrics(self) -> bool:
        """TTFB (speech end -> final) and usage metrics are reported."""
        return True

    @property
    def measured_ttfs_p99(self) -> float | None:
        """P99 of measured speech-end -> final times (seconds), None before any final."""
        return quantile(self._ttfs_samples, 0.99) if self._ttfs_samples else None

    async def start(self, frame: StartFrame):
        """Start the service and open the backend."""
        await super().start(frame)
        try:
            await self._backend_open()
        except Exception as exc:
            await self._report_error(f"could not start speech recognition: {exc}", exc)

    async def stop(self, frame: EndFrame):
        """Stop gracefully: free the backend."""
        await super().stop(frame)
        await self._shutdown()

    async def cancel(self, frame: CancelFrame):
        """Stop now: free the backend."""
        await super().cancel(frame)
        await self._shutdown()

    async def cleanup(self):
        """Release everything at teardown."""
        await super().cleanup()
        await self._shutdown()

    async def _shutdown(self) -> None:
        for task in (self._final_task, self._silence_reset_task):
            if task is not None and not task.done():
                await self.cancel_task(task)
        self._final_task = self._silence_reset_task = None
        try:
            await self._backend_close()
        except Exception as exc:
            logger.warning(f"{self}: closing the ASR backend failed: {exc}")

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Hand the audio to the backend; transcripts are pushed as they come."""
        if self._carry is not None:
            self._carry += audio
            excess = len(self._carry) - 2 * int(CARRY_OVER_SECS * self.sample_rate)
            if excess > 0:
                del self._carry[: excess + excess % 2]
        try:
            await self._backend_send(audio)
        except Exception as exc:
            await self._report_error(f"audio could not be sent to the ASR: {exc}", exc)
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Handle VAD and turn frames (from either direction), then the usual STT processing."""
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStartedSpeakingFrame):
            await self._on_speech_started()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speech_end_time = frame.timestamp - frame.stop_secs
            await self._on_speech_stopped()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await self._on_turn_ended()

    async def _on_speech_started(self) -> None:
        # The user goes on: an answer to the pushed final no longer answers the turn.
        await self._cancel_eager_end_of_turn()
        # Any final still on its way no longer covers what the user is saying: drop it.
        self._final_generation += 1
        self._reset_pending = False
        await self._cancel_silence_reset()
        task, self._final_task = self._final_task, None
        if task is not None and not task.done():
            await self.cancel_task(task)
            self.finals_discarded += 1
            logger.debug(f"{self}: speculative final discarded, speech resumed")

    async def _on_speech_stopped(self) -> None:
        self._carry = bytearray()
        self._final_generation += 1
        if self._final_task is not None and not self._final_task.done():
            await self.cancel_task(self._final_task)
        self._final_task = self.create_task(
            self._finalize(self._final_generation), name="speculative_final"
        )

    async def _on_turn_ended(self) -> None:
        self._clear_eager_end_of_turn()
        if self._final_task is not None and not self._final_task.done():
            self._reset_pending = True  # accept once the final is pushed
        else:
            await self._accept_utterance()

    async def _finalize(self, generation: int) -> None:
        try:
            result = await self._backend_finalize()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._report_error(f"final transcript failed: {exc}", exc)
            result = None
        if generation != self._final_generation:
            self.finals_discarded += 1
            logger.debug(f"{self}: speculative final discarded, speech resumed")
            return
        # From here on the final is committed: speech resuming must not cancel it half-pushed.
        if self._final_task is asyncio.current_task():
            self._final_task = None
        if result is not None and result.key == self._key:
            text = unsent_suffix(self._committed, result.text)
            self._committed = result.text if text else self._committed
            if text or self._committed:
                # Announced before the transcript, so a speculative answer starts on it.
                # Nothing new since speech resumed (a breath, a noise) still ends the turn
                # where it stood, so it is announced too.
                await self._push_eager_end_of_turn(
                    text, user_id=self._user_id, language=self._language_enum()
                )
            if text:
                self._last_interim = ""  # after a final, an interim is new whatever its text
                # Usage before the transcript, so tracing attaches it to the span it closes.
                await self.emit_stt_usage_metrics()
                await self.push_frame(
                    TranscriptionFrame(
                        text,
                        self._user_id,
                        time_now_iso8601(),
                        self._language_enum(),
                        result=result,
                        finalized=True,
                    )
                )
                self.finals_pushed += 1
                await self._record_ttfs()
            else:
                # Nothing new since the last final: close the TTFB measurement now.
                await self.stop_ttfb_metrics()
                await self._cancel_ttfb_timeout()
        if self._reset_pending:
            await self._accept_utterance()
        elif self._reset_after_secs is not None:
            await self._cancel_silence_reset()
            self._silence_reset_task = self.create_task(
                self._reset_after_silence(generation), name="silence_reset"
            )

    async def _reset_after_silence(self, generation: int) -> None:
        await asyncio.sleep(self._reset_after_secs or 0)
        if generation == self._final_generation:
            await self._accept_utterance(from_timer=True)

    async def _cancel_silence_reset(self) -> None:
        task = self._silence_reset_task
        self._silence_reset_task = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            await self.cancel_task(task)

    async def _accept_utterance(self, *, from_timer: bool = False) -> None:
        self._reset_pending = False
        if not from_timer:
            await self._cancel_silence_reset()
        carry, self._carry = self._carry, None
        if self._key is None:
            return
        try:
            await self._backend_reset()
            if carry:
                await self._backend_send(bytes(carry))
        except Exception as exc:
            await self._report_error(f"could not start a new utterance: {exc}", exc)

    async def _record_ttfs(self) -> None:
        if self._speech_end_time is None:
            return
        self._ttfs_samples.append(max(0.0, time.time() - self._speech_end_time))
        self._speech_end_time = None
        if not self._update_ttfs or len(self._ttfs_samples) < 20:
            return
        measured = self.measured_ttfs_p99
        announced = self._ttfs_p99_latency
        if measured and announced and abs(measured - announced) > 0.25 * announced:
            logger.info(
                f"{self}: measured TTFS p99 {measured:.3f} s (announced {announced:.3f} s): "
                "telling the turn strategies"
            )
            self._ttfs_p99_latency = measured
            await self.broadcast_service_metadata()
