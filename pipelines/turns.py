"""When the user's turn ends: Smart Turn's verdict with the transcript's, and answers started early.

Two user-turn stop strategies for Pipecat's user aggregator:

- :class:`TextAwareTurnStopStrategy`: Smart Turn v3 decides from the audio at the VAD stop. When
  it says INCOMPLETE, Pipecat waits for its silence limit (``turn.incomplete_timeout_secs``,
  3 s); this strategy also reads the transcript (:mod:`pipelines.turn_text`) and, when it
  reads as a finished utterance, ends the turn ``complete_text_wait_secs`` after the user's
  speech ended instead. Transcripts that read unfinished keep the long wait. Every turn end is
  logged with its rule and reason, and emitted as ``on_turn_decision``.
- :class:`SpeculativeTurnStopStrategy`: Pipecat's :class:`EagerUserTurnStopStrategy` (answer
  an STT's eager end of turn, hold the answer until the turn is confirmed, drop it if the
  user resumes or the committed transcript differs) with the turn end decided by a local
  detector (the strategy above, or a speech timeout) rather than by the STT service.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from loguru import logger
from pipecat.audio.turn.base_turn_analyzer import BaseTurnAnalyzer
from pipecat.frames.frames import (
    EagerTranscriptionFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_stop import (
    BaseUserTurnStopStrategy,
    EagerMatchPolicy,
    EagerUserTurnStopStrategy,
    TurnAnalyzerUserTurnStopStrategy,
    UserTurnStoppedParams,
)

from pipelines.latency import VOICED_RMS, frame_rms
from pipelines.turn_text import TextVerdict, judge_transcript

# Silence after the end of speech before a turn that Smart Turn called incomplete, but whose
# transcript reads finished, ends. Gaps between turns in conversation cluster around 200 ms
# while pauses inside a turn run longer, and 0.5 s is the classic fixed endpointing silence:
# with the grammar already saying "finished", that is enough evidence the speaker yielded.
# The VAD needs 0.2 s to report the stop and the final transcript comes on top, so on a fast
# ASR this adds ~0.3 s past the transcript; the speculative answer uses that time.
DEFAULT_COMPLETE_TEXT_WAIT_SECS = 0.5
# When the wait is over but sound came within this long, the user may be starting again: the
# VAD confirms speech only after its start_secs, so the turn waits that long for its verdict.
RECENT_SOUND_SECS = 0.1


@dataclass(frozen=True)
class TurnDecision:
    """Why a user turn ended.

    Parameters:
        rule: ``smart-turn`` (the model judged it complete), ``text`` (the model said
            incomplete, the transcript reads complete), ``timeout`` (the model said
            incomplete and the silence limit passed) or ``transcript`` (a transcript came
            without a VAD stop).
        reason: The decision in words, for the log.
        text: The turn's transcript as the strategy saw it.
        silence_secs: From the end of the user's speech (VAD stop minus its stop_secs) to the
            decision; None without a VAD stop.
    """

    rule: str
    reason: str
    text: str
    silence_secs: float | None


def join_transcripts(before: str, text: str) -> str:
    """Append one transcript segment to the turn's text, one space between them."""
    text = text.strip()
    if not before:
        return text
    return f"{before} {text}" if text else before


class TextAwareTurnStopStrategy(TurnAnalyzerUserTurnStopStrategy):
    """Smart Turn, plus the transcript: a turn that reads finished does not wait 3 s.

    Event handlers: ``on_turn_decision(strategy, TurnDecision)``, called as each turn ends.
    ``decisions`` counts the turns ended by each rule.
    """

    def __init__(
        self,
        *,
        turn_analyzer: BaseTurnAnalyzer,
        complete_text_wait_secs: float = DEFAULT_COMPLETE_TEXT_WAIT_SECS,
        judge=judge_transcript,
        **kwargs,
    ):
        """Initialize the strategy.

        Args:
            turn_analyzer: The audio turn model (Smart Turn v3); its ``stop_secs`` is the long
                wait for turns it judges incomplete.
            complete_text_wait_secs: Silence after the end of speech before a turn whose
                transcript reads finished ends although the model judged it incomplete.
            judge: ``text -> TextVerdict``; :func:`~pipelines.turn_text.judge_transcript`.
            **kwargs: Passed to ``TurnAnalyzerUserTurnStopStrategy``.
        """
        super().__init__(turn_analyzer=turn_analyzer, **kwargs)
        self._complete_text_wait = complete_text_wait_secs
        self._judge = judge
        self._turn_text = ""
        self._speech_end: float | None = None
        self._text_task: asyncio.Task | None = None
        self._text_verdict: TextVerdict | None = None  # set when the text rule ends the turn
        self._held_reason: str | None = None  # why the transcript kept the long wait
        self._in_audio = False
        self._silence_limit_reached = False
        self._last_sound: float | None = None  # arrival of the last voiced input audio
        self._vad_start_secs = 0.2
        # Barge-in (pipelines/barge_in.py) may open a turn on the transcript of speech that
        # ended before it: when that speech ended (kept across turn starts) and when it opened.
        self._speech_ended_at: float | None = None
        self._opened_at = 0.0
        # Speech over the bot that barge-in let pass (a backchannel) reaches this strategy with
        # no turn open: it decides nothing then.
        self._turn_open = False
        # Smart Turn's verdict on a VAD stop runs in a task of its own, so the frames behind
        # the stop (above all the STT's transcript, which starts a speculative answer) are not
        # held for its inference (~50-150 ms on two shared cores). While it runs the analyzer's
        # audio is held back (the model reads that buffer on its thread) and no other rule
        # decides; speech resuming voids it.
        self._verdict_task: asyncio.Task | None = None
        self._verdict_pending = False
        self._held_audio: list[InputAudioRawFrame] | None = None
        self.decisions: collections.Counter[str] = collections.Counter()
        self._register_event_handler("on_turn_decision", sync=True)

    @property
    def complete_text_wait_secs(self) -> float:
        """Silence before a turn that reads finished ends despite an incomplete verdict."""
        return self._complete_text_wait

    async def _reset(self):
        await super()._reset()
        self._turn_text = ""
        self._speech_end = None

    async def handle_user_turn_started(self):
        """Arm for the turn now starting (Pipecat's), noting when it opened."""
        await super().handle_user_turn_started()
        self._opened_at = time.time()
        self._turn_open = True

    async def handle_user_turn_stopped(self):
        """The turn ended with whatever speech it had."""
        await super().handle_user_turn_stopped()
        self._speech_ended_at = None
        self._turn_open = False

    async def _discard_pending_end_of_turn(self):
        # Runs at turn boundaries and whenever speech resumes: a pending text-rule end is as
        # stale as Smart Turn's own verdict then, and so is a verdict still being computed.
        await self._cancel_verdict()
        await super()._discard_pending_end_of_turn()
        await self._cancel_text_wait()
        self._text_verdict = None
        self._held_reason = None
        self._silence_limit_reached = False

    async def cleanup(self):
        """Cancel a pending verdict and text-rule end, then clean up as Pipecat does."""
        await self._cancel_verdict()
        await self._cancel_text_wait()
        await super().cleanup()

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        """Feed the frame to Smart Turn's strategy; interim text voids a pending text-rule end."""
        if isinstance(frame, InterimTranscriptionFrame):
            # More transcript is on its way: judge the words once they are final.
            await self._cancel_text_wait()
        return await super().process_frame(frame)

    async def _handle_input_audio(self, frame: InputAudioRawFrame):
        samples = np.frombuffer(frame.audio[: len(frame.audio) // 2 * 2], np.int16)
        if frame_rms(samples) >= VOICED_RMS:
            self._last_sound = time.time()
        if self._held_audio is not None:
            self._held_audio.append(frame)  # Smart Turn is reading its buffer: after it
            return
        await self._feed_analyzer(frame)

    async def _feed_analyzer(self, frame: InputAudioRawFrame):
        # The analyzer reports its silence limit from append_audio: a turn ended while this
        # runs ended by that limit.
        complete_before = self._turn_complete
        self._in_audio = True
        try:
            await super()._handle_input_audio(frame)
        finally:
            self._in_audio = False
        if self._turn_complete and not complete_before:
            # The limit passed with no transcript yet: the turn ends when one comes.
            self._silence_limit_reached = True

    async def _handle_vad_user_started_speaking(self, frame):
        await self._cancel_verdict()  # before the analyzer hears of the speech: its audio first
        self._vad_start_secs = frame.start_secs
        self._speech_ended_at = None
        await super()._handle_vad_user_started_speaking(frame)

    async def _handle_vad_user_stopped_speaking(self, frame):
        self._speech_end = frame.timestamp - frame.stop_secs
        self._speech_ended_at = self._speech_end
        await self._cancel_verdict()
        # What Pipecat's handler sets before its inference, set now: the frames processed
        # while the verdict runs must see a stopped user.
        self._vad_user_speaking = False
        self._vad_stopped = True
        self._verdict_pending = True
        self._held_audio = []
        self._verdict_task = self.task_manager.create_task(
            self._judge_stop(frame), f"{self}::_judge_stop"
        )

    async def _judge_stop(self, frame) -> None:
        """Smart Turn's verdict on a VAD stop and what follows from it (Pipecat's handler)."""
        failed = False
        try:
            await super()._handle_vad_user_stopped_speaking(frame)
        except Exception:
            failed = True
            logger.exception(f"{self}: Smart Turn failed on this stop; the other rules decide")
        finally:
            self._verdict_pending = False
            if self._verdict_task is asyncio.current_task():
                self._verdict_task = None
        # Not reached when speech resumed (cancelled): whoever cancelled releases the audio.
        await self._release_audio()
        if failed:
            await self._maybe_trigger_user_turn_stopped()

    async def _handle_prediction_result(self, result):
        # The verdict is in (Pipecat's handler goes on to act on it and re-checks the
        # transcript): the rules may decide again.
        self._verdict_pending = False
        await super()._handle_prediction_result(result)

    async def _cancel_verdict(self) -> None:
        task, self._verdict_task = self._verdict_task, None
        self._verdict_pending = False
        if task is not None and task is not asyncio.current_task():
            await self.task_manager.cancel_task(task)
        await self._release_audio()

    async def _release_audio(self) -> None:
        held, self._held_audio = self._held_audio, None
        for frame in held or ():
            await self._feed_analyzer(frame)

    async def _handle_transcription(self, frame: TranscriptionFrame):
        self._turn_text = join_transcripts(self._turn_text, frame.text)
        # New words: whatever was concluded from the old ones no longer holds.
        await self._cancel_text_wait()
        self._held_reason = None
        await super()._handle_transcription(frame)
        if self._vad_user_speaking:
            # The words of a segment that ended before the user spoke again (the VAD's frames
            # overtake the STT's): they do not cover the speech going on now, so they must not
            # let that speech's stop end the turn before its own transcript comes.
            self._transcript_finalized = False
        if not (self._vad_stopped or self._vad_user_speaking) and self._speech_ended_at:
            await self._consider_barge_in_transcript()

    async def _consider_barge_in_transcript(self) -> None:
        """A turn opened on the words of speech that had already ended (over the bot).

        Pipecat treats a transcript without a VAD stop as speech still going and waits the
        STT's p99 for more. This speech did stop: when its words read finished, the turn ends
        ``complete_text_wait_secs`` after it opened (time for the interruption to reach the
        context before the LLM is asked); unfinished words keep Pipecat's wait.
        """
        verdict = self._judge(self._turn_text)
        if not verdict.complete:
            return
        self._vad_stopped = True  # the VAD did stop: this turn's speech is over
        self._speech_end = self._speech_ended_at
        delay = self._opened_at + self._complete_text_wait - time.time()
        self._text_task = self.task_manager.create_task(
            self._end_after_text_wait(max(0.0, delay), verdict),
            f"{self}::_end_after_text_wait",
        )

    async def _maybe_trigger_user_turn_stopped(self):
        if self._verdict_pending:
            return  # Smart Turn has not spoken yet; its handler re-checks when it has
        if self._vad_stopped and not self._turn_complete and not self._vad_user_speaking:
            # Smart Turn judged the turn incomplete at the VAD stop: ask the transcript.
            await self._consider_transcript()
            return
        await super()._maybe_trigger_user_turn_stopped()

    async def _consider_transcript(self) -> None:
        if self._text_task is not None or not self._turn_text.strip():
            return
        if not (self._transcript_finalized or self._timeout_expired):
            return  # more of the transcript may still come
        verdict = self._judge(self._turn_text)
        if not verdict.complete:
            if verdict.reason != self._held_reason:
                self._held_reason = verdict.reason
                logger.info(
                    f"{self}: turn kept open: Smart Turn judged it incomplete and the "
                    f"transcript reads unfinished ({verdict.reason}); waiting for up to "
                    f"{self._turn_analyzer.params.stop_secs:g} s of silence"
                )
            return
        end = (self._speech_end or time.time()) + self._complete_text_wait
        self._text_task = self.task_manager.create_task(
            self._end_after_text_wait(max(0.0, end - time.time()), verdict),
            f"{self}::_end_after_text_wait",
        )

    async def _end_after_text_wait(self, delay: float, verdict: TextVerdict) -> None:
        await asyncio.sleep(delay)
        if self._last_sound is not None and time.time() - self._last_sound < RECENT_SOUND_SECS:
            # Sound right at the deadline: give the VAD its start window to say whether the
            # user is speaking again (its start cancels this wait).
            await asyncio.sleep(self._vad_start_secs + RECENT_SOUND_SECS)
        self._text_task = None
        if self._vad_user_speaking or not self._vad_stopped:
            return
        self._text_verdict = verdict
        await self.trigger_user_turn_stopped()

    async def _cancel_text_wait(self) -> None:
        task, self._text_task = self._text_task, None
        if task is not None and task is not asyncio.current_task():
            await self.task_manager.cancel_task(task)

    def _decide(self) -> TurnDecision:
        silence = None if self._speech_end is None else max(0.0, time.time() - self._speech_end)
        if self._text_verdict is not None:
            rule = "text"
            reason = (
                "Smart Turn judged the turn incomplete, but the transcript reads finished "
                f"({self._text_verdict.reason})"
            )
        elif not self._vad_stopped:
            rule, reason = "transcript", "a transcript arrived without a VAD stop"
        elif self._in_audio or self._silence_limit_reached:
            limit = self._turn_analyzer.params.stop_secs
            rule = "timeout"
            reason = f"Smart Turn judged the turn incomplete and {limit:g} s of silence passed"
            if self._held_reason:
                reason += f"; the transcript read unfinished ({self._held_reason})"
        else:
            rule, reason = "smart-turn", "Smart Turn judged the turn complete"
        return TurnDecision(rule, reason, self._turn_text, silence)

    async def trigger_user_turn_stopped(self, *, enable_user_speaking_frames: bool | None = None):
        """Log why the turn ends and emit ``on_turn_decision``, then end it."""
        if not self._turn_open:
            return  # Pipecat's controller would ignore it: no decision to log or count
        decision = self._decide()
        self.decisions[decision.rule] += 1
        silence = decision.silence_secs
        after = "" if silence is None else f" ({silence:.2f} s after speech)"
        logger.info(f"{self}: turn ended by {decision.rule}{after}: {decision.reason}")
        logger.debug(f"{self}: the turn's transcript: [{decision.text}]")
        await self._call_event_handler("on_turn_decision", decision)
        await super().trigger_user_turn_stopped(
            enable_user_speaking_frames=enable_user_speaking_frames
        )


class SpeculativeTurnStopStrategy(EagerUserTurnStopStrategy):
    """Answer the STT's eager end of turn at once; a local detector confirms the turn.

    Pipecat's :class:`EagerUserTurnStopStrategy` leaves turn detection to an STT service that
    commits turns itself. Here the STT only predicts (its speculative final at the VAD stop)
    and ``detector`` (Smart Turn with the text rule, or a speech timeout) decides when the turn
    ends. Its decision goes through the eager strategy, which keeps the held answer when the
    committed transcript matches the eager one (``match_policy``) and withdraws it otherwise;
    the LLM service's :class:`~pipecat.turns.speculation_gate.SpeculationGate` holds the answer
    until then, so nothing of a dropped one reaches the TTS or the context.

    ``speculations`` counts speculative answers started; ``speculations_kept`` those the turn
    end confirmed (the rest were dropped).
    """

    def __init__(
        self,
        detector: BaseUserTurnStopStrategy,
        *,
        match_policy: EagerMatchPolicy | None = None,
        speculation_timeout: float = 5.0,
    ):
        """Initialize the strategy.

        Args:
            detector: The strategy that decides when the turn ends.
            match_policy: Keeps the answer when the committed transcript matches the eager one;
                Pipecat's ``NormalizedMatch`` (case and punctuation ignored) by default.
            speculation_timeout: Seconds an eager end of turn may stay unconfirmed before its
                answer is dropped: longer than the detector's longest wait.
        """
        super().__init__(match_policy=match_policy, speculation_timeout=speculation_timeout)
        self._detector = detector
        self.speculations = 0
        self.speculations_kept = 0
        detector.add_event_handler("on_push_frame", self._on_detector_push_frame)
        detector.add_event_handler("on_broadcast_frame", self._on_detector_broadcast_frame)
        detector.add_event_handler("on_user_turn_stopped", self._on_detector_turn_stopped)

    @property
    def detector(self) -> BaseUserTurnStopStrategy:
        """The strategy that decides when the turn ends."""
        return self._detector

    @property
    def resolves_proposed_turn_stop_frames(self) -> bool:
        """Proposals are the detector's business, as without speculation."""
        return self._detector.resolves_proposed_turn_stop_frames

    async def setup(self, setup: FrameProcessorSetup):
        """Set up this strategy and the detector."""
        await super().setup(setup)
        await self._detector.setup(setup)

    async def cleanup(self):
        """Clean up this strategy and the detector (a session may end mid-speculation)."""
        await self._take_speculation()  # stops its timeout task
        await super().cleanup()
        await self._detector.cleanup()

    async def handle_user_turn_started(self):
        """A new turn: forget any speculation (Pipecat's) and arm the detector."""
        await super().handle_user_turn_started()
        await self._detector.handle_user_turn_started()

    async def handle_user_turn_stopped(self):
        """The turn ended, by whichever rule: reset both."""
        await super().handle_user_turn_stopped()
        await self._detector.handle_user_turn_stopped()

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        """Track speculations and the committed text (Pipecat's), then feed the detector."""
        if isinstance(frame, EagerTranscriptionFrame):
            if not self._turn_open:
                # Its turn already ended (the detector was faster than the STT's frames):
                # answering it now would answer nothing.
                return ProcessFrameResult.CONTINUE
            if not (self._text or frame.text.strip()):
                return ProcessFrameResult.CONTINUE  # nothing heard yet: nothing to answer
            self.speculations += 1
            # Pipecat concatenates the turn's segments as they are: one space between them, as
            # in the committed text (Whisper's come padded with spaces).
            text = frame.text.strip()
            text = f" {text}" if self._text and text else text
            if text != frame.text:
                frame = dataclasses.replace(frame, text=text)
        await super().process_frame(frame)
        await self._detector.process_frame(frame)
        return ProcessFrameResult.CONTINUE

    async def _handle_transcription(self, frame: TranscriptionFrame):
        before = self._text
        await super()._handle_transcription(frame)
        # The committed text reads like the context's user message, one space per segment.
        self._text = join_transcripts(before, frame.text)

    async def _maybe_trigger_user_turn_stopped(self):
        # The turn ends when the detector says so, not on external turn signals.
        return

    async def trigger_user_turn_finalized(
        self,
        *,
        enable_user_speaking_frames: bool | None = None,
        confirms_speculation: bool = False,
    ):
        """Count a kept speculative answer, then finalize the turn."""
        if confirms_speculation:
            self.speculations_kept += 1
        await super().trigger_user_turn_finalized(
            enable_user_speaking_frames=enable_user_speaking_frames,
            confirms_speculation=confirms_speculation,
        )

    async def _on_detector_push_frame(
        self, _detector, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ):
        await self.push_frame(frame, direction)

    async def _on_detector_broadcast_frame(self, _detector, frame_cls: type[Frame], **kwargs):
        await self.broadcast_frame(frame_cls, **kwargs)

    async def _on_detector_turn_stopped(self, _detector, params: UserTurnStoppedParams):
        await self.trigger_user_turn_stopped(
            enable_user_speaking_frames=params.enable_user_speaking_frames
        )
