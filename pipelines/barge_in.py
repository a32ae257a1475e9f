"""Barge-in: the bot goes quiet as soon as the user speaks over it, talks on through a
backchannel, and its context message keeps only the words the user heard.

Pipecat interrupts the bot when a user turn starts (the user aggregator broadcasts an
``InterruptionFrame``: the LLM and TTS stop, the output transport drops its queue, the assistant
aggregator commits what was spoken). Its VAD start strategy starts that turn once Silero has
heard ``vad.start_secs`` of speech, ~0.36 s after the first voiced audio here (its smoothed
volume has to rise as well): too late for the bot to stop within 150 ms, and too early to know
whether the user only said "mm-hmm". So the decision is split in two:

- **Hold at once.** While the bot speaks, the first voiced 20 ms of input (the same rule the
  latency code and the test client use, ``pipelines.latency.VOICED_RMS``) pauses the output
  track (``agent/webrtc_tuning.py``): it sends silence and keeps the queued audio. Nothing is
  dropped yet.
- **Decide, then interrupt or go on.** Speech that lasts longer than a backchannel
  (``turn.backchannel_max_secs``) starts the user's turn, and so Pipecat's interruption,
  without waiting for a transcript. Shorter speech waits for its transcript: a backchannel
  (``turn.backchannels``, matched whole: "Oh, okay." is one, "Okay, stop." is not) becomes
  Pipecat's ``UserBackchannelFrame`` (kept out of the context, shown to RTVI clients) and the
  track resumes where it paused; anything else starts the turn. Sound the VAD never confirms
  as speech (a click, a cough) resumes the track after ``vad.start_secs`` plus a margin.

The trade-off: a backchannel costs a pause, as long as the speech plus the VAD's stop plus the
STT's time to a transcript (segmented Whisper on two cores: ~1-1.5 s in all; a streaming STT's
final comes ~0.1 s after the VAD stop). In exchange the bot never talks over the user for more
than ~0.1 s, and a real interruption is committed ``backchannel_max_secs`` into the speech at
the latest. Phone calls pause the same way (``agent/call_output.py``); with an output that
cannot pause (Daily) the bot talks on until that decision.

A turn can also end in a pause the user then talks through: Smart Turn judged the first half
complete, and its answer starts while the user goes on. Voiced input when the bot starts
speaking holds the answer at once, and when the VAD confirms that speech it starts the user's
turn without the backchannel wait: nobody backchannels an answer they have not heard yet.

Where the user cut in, the context is made to match what was sent to them. The TTS here gives
no word timestamps (with a TTS that does, Pipecat's own word-timed frames already stop at the
last word spoken and this leaves them alone), so :class:`HeardSpeech` follows the reply's
sentences through the output: each sentence's audio length (before the transport), where it
starts in the audio the transport wrote (after it), and at the interruption how much of that
audio the track really sent (``added_secs`` minus what ``flush`` dropped). Whole sentences
sent are kept; in the sentence that was cut, the words whose share of its voiced audio
(by letters) had been sent. That replaces the assistant message Pipecat commits, which holds
every sentence the transport had finished *writing* and nothing of the one that was cut.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EagerTranscriptionFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    STTMetadataFrame,
    TextFrame,
    TranscriptionFrame,
    TranslationFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    UserBackchannelFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start.base_user_turn_start_strategy import BaseUserTurnStartStrategy
from pipecat.utils.string import TextPartForConcatenation, concatenate_aggregated_text
from pipecat.utils.time import time_now_iso8601

from pipelines.latency import VOICED_RMS, frame_rms
from pipelines.settings import DEFAULT_BACKCHANNELS

# A transcript of up to this many backchannels in a row ("Oh, okay.", "Yeah, yeah.") is one.
MAX_BACKCHANNEL_PHRASES = 3
# Backchannels last 0.2-0.6 s ("yeah" to "mm-hmm"); speech longer than this is an interruption.
DEFAULT_BACKCHANNEL_MAX_SECS = 0.8
# Silero confirms speech ~0.36 s after the first voiced audio (start_secs 0.2 plus its volume
# smoothing, measured on the cached recordings); sound it has not confirmed by start_secs plus
# this is not speech, and the bot goes on.
FALSE_ALARM_MARGIN_SECS = 0.35
# After such a false alarm, this much quiet before sound can hold the bot again: steady noise
# pauses it once, not on every frame.
REARM_QUIET_SECS = 0.3
# Voiced input this recent when the bot starts speaking: the user is talking already (their
# turn ended in a pause and they went on). The answer is held at once, and when the VAD
# confirms the speech it is the user's turn, not a barge-in a backchannel could be.
SPEAKING_AT_BOT_START_SECS = 0.1
# A segmented STT that finds no words sends nothing: give up waiting for a transcript after
# this when the STT does not say its p99 (STTMetadataFrame).
DEFAULT_TRANSCRIPT_WAIT_SECS = 2.5
# Letters spoken per second, to place words in a sentence whose audio is not all there yet.
LETTERS_PER_SEC = 14.0
_WORD = re.compile(r"[a-z0-9']+")


def _fold(token: str) -> str:
    """A word without apostrophes, repeated letters folded: "mmm" -> "m", "yeahh" -> "yeah"."""
    return re.sub(r"(.)\1+", r"\1", token.replace("'", ""))


def _tokens(text: str) -> list[str]:
    return [_fold(t) for t in _WORD.findall(text.lower().replace("\u2019", "'"))]


def _phrase_variants(phrase: str) -> set[tuple[str, ...]]:
    """A phrase as words, and hyphenated words also as one ("uh-huh": "uh huh", "uhhuh")."""
    words = tuple(_tokens(phrase))
    joined = tuple(_tokens(phrase.replace("-", "")))
    return {v for v in (words, joined) if v}


def is_backchannel(
    text: str, phrases: Iterable[str], max_phrases: int = MAX_BACKCHANNEL_PHRASES
) -> bool:
    """Whether ``text`` (a transcript) says nothing but backchannel phrases.

    Args:
        text: What the STT heard.
        phrases: The backchannels (``turn.backchannels``).
        max_phrases: At most this many of them in a row count as one backchannel.
    """
    variants = sorted(
        {v for phrase in phrases for v in _phrase_variants(phrase)}, key=len, reverse=True
    )
    words = _tokens(text)
    if not words or not variants:
        return False
    position = matched = 0
    while position < len(words):
        match = next((v for v in variants if tuple(words[position : position + len(v)]) == v), None)
        if match is None:
            return False
        position += len(match)
        matched += 1
    return matched <= max_phrases


class PausableOutput(Protocol):
    """What barge-in needs of the output: ``agent.webrtc_tuning.LookaheadAudioTrack``.

    ``pause`` sends silence and keeps the queue, ``resume`` sends it again, ``flush`` drops it
    and returns the seconds dropped; ``added_secs`` counts every second ever queued.
    """

    @property
    def added_secs(self) -> float: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def flush(self) -> float: ...


class BargeIn:
    """One session's barge-in: its settings, its output, and what it has decided so far.

    ``interruptions``, ``backchannels_heard`` and ``false_alarms`` count the decisions.
    """

    def __init__(
        self,
        *,
        backchannels: Sequence[str] = DEFAULT_BACKCHANNELS,
        backchannel_max_secs: float = DEFAULT_BACKCHANNEL_MAX_SECS,
    ):
        """Initialize the session's barge-in.

        Args:
            backchannels: Phrases that do not interrupt the bot (empty: everything does).
            backchannel_max_secs: Speech over the bot longer than this interrupts it at once.
        """
        self.backchannels = tuple(backchannels)
        self.backchannel_max_secs = backchannel_max_secs
        self._resolve_output: Callable[[], PausableOutput | None] | None = None
        self._output: PausableOutput | None = None
        self.interruptions = 0
        self.backchannels_heard = 0
        self.false_alarms = 0

    def attach_output(self, resolve: Callable[[], PausableOutput | None]) -> None:
        """Tell barge-in how to find the output track (it may exist only once a peer connects)."""
        self._resolve_output = resolve
        self._output = None

    @property
    def output(self) -> PausableOutput | None:
        """The pausable output, or None (no transport, or one without such a track)."""
        if self._output is None and self._resolve_output is not None:
            self._output = self._resolve_output()
        return self._output

    def is_backchannel(self, text: str) -> bool:
        """Whether a transcript is only a backchannel."""
        return is_backchannel(text, self.backchannels)


class BargeInUserTurnStartStrategy(BaseUserTurnStartStrategy):
    """Starts user turns on the VAD (or a transcript), holding the bot's audio while it speaks.

    With the bot silent it is Pipecat's VAD start strategy with the transcription fallback:
    the turn, and its interruption, start when the VAD confirms speech. While the bot speaks it
    holds the output at the first voiced audio and decides as the module docstring says.
    """

    def __init__(self, barge_in: BargeIn, *, onset_rms: float = VOICED_RMS, **kwargs):
        """Initialize the strategy.

        Args:
            barge_in: The session's barge-in settings and output.
            onset_rms: RMS of a 20 ms input frame that holds the bot.
            **kwargs: Passed to ``BaseUserTurnStartStrategy``.
        """
        super().__init__(**kwargs)
        self._barge_in = barge_in
        self._onset_rms = onset_rms
        self._bot_speaking = False
        self._in_user_turn = False
        self._held_since: float | None = None
        self._vad_speaking = False
        self._vad_start_secs = 0.2
        self._transcript_wait = DEFAULT_TRANSCRIPT_WAIT_SECS
        self._quiet_needed = 0.0
        self._last_voiced_at: float | None = None
        self._spoke_first = False  # the held speech began before the bot's answer
        self._timer: asyncio.Task | None = None

    @property
    def holding(self) -> bool:
        """Whether the bot's audio is held while the strategy decides."""
        return self._held_since is not None

    async def handle_user_turn_started(self):
        """A turn started (here or elsewhere): its interruption flushes what was held."""
        self._in_user_turn = True
        self._held_since = None
        self._spoke_first = False
        await self._cancel_timer()

    async def handle_user_turn_stopped(self):
        """The turn ended: the next speech over the bot is a barge-in again."""
        self._in_user_turn = False

    async def cleanup(self):
        """Stop a pending decision."""
        await self._cancel_timer()
        await super().cleanup()

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        """Follow the bot's speech and the user's, and start the turn when it is one."""
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
            await self._handle_bot_started()
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            if self.holding:
                await self._bot_finished_while_held()
        elif isinstance(frame, STTMetadataFrame) and frame.ttfs_p99_latency:
            self._transcript_wait = frame.ttfs_p99_latency
        elif isinstance(frame, InputAudioRawFrame):
            await self._handle_audio(frame)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            return await self._handle_vad_started(frame)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            await self._handle_vad_stopped()
        elif isinstance(frame, EagerTranscriptionFrame):
            pass  # the committed transcript after it decides
        elif isinstance(frame, TranscriptionFrame):
            return await self._handle_transcript(frame)
        elif isinstance(frame, InterimTranscriptionFrame):
            # Pipecat's transcription fallback, with the bot silent; over the bot, interim
            # words are too early to tell a backchannel from its first syllables.
            if not (self._bot_speaking or self.holding or self._in_user_turn):
                await self.trigger_user_turn_started()
                return ProcessFrameResult.STOP
        return ProcessFrameResult.CONTINUE

    async def _handle_audio(self, frame: InputAudioRawFrame) -> None:
        samples = np.frombuffer(frame.audio[: len(frame.audio) // 2 * 2], np.int16)
        voiced = frame_rms(samples) >= self._onset_rms
        if not voiced:
            self._quiet_needed = max(0.0, self._quiet_needed - len(samples) / frame.sample_rate)
            return
        self._last_voiced_at = time.time()
        if self._bot_speaking and not (self.holding or self._in_user_turn or self._quiet_needed):
            await self._hold()
            self._start_timer(self._vad_start_secs + FALSE_ALARM_MARGIN_SECS, self._false_alarm)

    async def _handle_bot_started(self) -> None:
        # The turn ended in a pause and the user went on: the answer to the first half must
        # not play over the rest (the VAD confirms their speech only ~0.36 s after it began).
        voiced = self._last_voiced_at
        # After a false alarm, steady noise holds nothing until it has been quiet a while.
        if self.holding or self._in_user_turn or self._quiet_needed or voiced is None:
            return
        if time.time() - voiced <= SPEAKING_AT_BOT_START_SECS:
            await self._hold()
            self._spoke_first = True
            self._start_timer(self._vad_start_secs + FALSE_ALARM_MARGIN_SECS, self._false_alarm)

    async def _handle_vad_started(self, frame: VADUserStartedSpeakingFrame) -> ProcessFrameResult:
        self._vad_speaking = True
        self._vad_start_secs = frame.start_secs
        if self._in_user_turn:
            return ProcessFrameResult.STOP
        if not (self._bot_speaking or self.holding):
            await self.trigger_user_turn_started()
            return ProcessFrameResult.STOP
        if not self.holding:
            await self._hold()  # speech too quiet for the onset rule: hold it now
        if self._spoke_first:
            await self._interrupt("the user was speaking when the answer started")
            return ProcessFrameResult.STOP
        if not self._barge_in.backchannels:
            await self._interrupt("speech over the bot (no backchannels configured)")
            return ProcessFrameResult.STOP
        speech_start = min(self._held_since or time.time(), frame.timestamp - frame.start_secs)
        wait = speech_start + self._barge_in.backchannel_max_secs - time.time()
        self._start_timer(max(0.0, wait), self._long_speech)
        return ProcessFrameResult.STOP

    async def _handle_vad_stopped(self) -> None:
        self._vad_speaking = False
        if self.holding and not self._in_user_turn:
            # Short speech: its transcript decides.
            self._start_timer(self._transcript_wait, self._no_transcript)

    async def _handle_transcript(self, frame: TranscriptionFrame) -> ProcessFrameResult:
        if self._in_user_turn or not frame.text.strip():
            return ProcessFrameResult.CONTINUE
        if self.holding or self._bot_speaking:
            if self._barge_in.is_backchannel(frame.text):
                await self._backchannel(frame)
            else:
                await self._interrupt(f"[{frame.text.strip()}] is not a backchannel")
            return ProcessFrameResult.STOP
        # Pipecat's transcription fallback: a transcript with no turn open starts one.
        await self.trigger_user_turn_started()
        return ProcessFrameResult.STOP

    async def _hold(self) -> None:
        self._held_since = time.time()
        self._spoke_first = False
        output = self._barge_in.output
        if output is not None:
            output.pause()
        logger.debug(f"{self}: the user made a sound over the bot: holding its audio")

    async def _release(self, why: str) -> None:
        self._held_since = None
        self._spoke_first = False
        await self._cancel_timer()
        output = self._barge_in.output
        if output is not None:
            output.resume()
        logger.info(f"{self}: barge-in: the bot goes on ({why})")

    async def _interrupt(self, why: str) -> None:
        self._barge_in.interruptions += 1
        logger.info(f"{self}: barge-in: the user interrupts the bot ({why})")
        await self._cancel_timer()
        # The turn's interruption flushes the held audio (HeardSpeech, after the output).
        await self.trigger_user_turn_started()

    async def _backchannel(self, frame: TranscriptionFrame) -> None:
        self._barge_in.backchannels_heard += 1
        # The transcript is in the user aggregator's aggregation already: drop it there, and
        # pass it on as Pipecat's backchannel (outside the context, reported to RTVI clients).
        await self.trigger_reset_aggregation()
        await self.push_frame(
            UserBackchannelFrame(
                text=frame.text.strip(), user_id=frame.user_id, timestamp=time_now_iso8601()
            )
        )
        await self._release(f"backchannel [{frame.text.strip()}]")

    async def _bot_finished_while_held(self) -> None:
        # The reply's last audio waits in the paused track: the user speaks after the bot, as
        # in any turn, so the VAD (or the transcript) starts the turn as without the bot.
        if self._vad_speaking:
            await self._interrupt("the bot finished while the user spoke")
        else:
            await self._release("the bot finished its reply")

    async def _false_alarm(self) -> None:
        if self._vad_speaking:
            return
        self._barge_in.false_alarms += 1
        self._quiet_needed = REARM_QUIET_SECS
        await self._release("the sound was not speech")

    async def _long_speech(self) -> None:
        if self.holding and self._vad_speaking:
            secs = self._barge_in.backchannel_max_secs
            await self._interrupt(f"speech over the bot longer than {secs:g} s")

    async def _no_transcript(self) -> None:
        if self.holding and not self._vad_speaking:
            await self._release("no words were transcribed")

    def _start_timer(self, delay: float, action: Callable[[], object]) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()

        async def fire():
            await asyncio.sleep(delay)
            self._timer = None
            await action()

        self._timer = self.task_manager.create_task(fire(), f"{self}::barge_in_timer")

    async def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            await self.task_manager.cancel_task(timer)


@dataclass
class _Sentence:
    """One spoken segment of a reply (a sentence or first clause) as the TTS made it."""

    text: str
    secs: float = 0.0  # its audio, at any rate
    complete: bool = False  # all its audio has come
    voiced: tuple[float, float] | None = None  # first and last sound, seconds into its audio
    word_timed: bool = False  # the TTS gave word timestamps: Pipecat's own frames are exact
    start: float | None = None  # seconds of audio the transport had written before it

    def add_audio(self, audio: bytes, sample_rate: int) -> None:
        samples = np.frombuffer(audio[: len(audio) // 2 * 2], np.int16)
        window = max(1, sample_rate // 100)
        for i in range(0, len(samples), window):
            if frame_rms(samples[i : i + window]) >= VOICED_RMS:
                at = self.secs + i / sample_rate
                end = min(at + window / sample_rate, self.secs + len(samples) / sample_rate)
                self.voiced = (self.voiced[0] if self.voiced else at, end)
        self.secs += len(samples) / sample_rate


@dataclass
class _Reply:
    """The segments of one reply in the order they were written, and what the context got."""

    context_index: int  # messages in the context when the reply began
    sentences: list[_Sentence] = field(default_factory=list)
    committed: list[TextPartForConcatenation] = field(default_factory=list)


def heard_words(sentence: _Sentence, sent_secs: float) -> str:
    """The words of ``sentence`` whose audio was all sent in its first ``sent_secs``.

    Words are placed over the sentence's voiced audio by their letters: a word's share of
    the time is its share of the letters, plus one for the gap after it.
    """
    words = sentence.text.split()
    if not words:
        return ""
    start, end = sentence.voiced or (0.0, sentence.secs)
    if not sentence.complete:
        # Audio still coming: its length from the letters, at least what has come.
        letters = len("".join(_WORD.findall(sentence.text.lower())))
        end = max(end, start + letters / LETTERS_PER_SEC)
    if sent_secs >= end:
        return sentence.text.strip()
    if sent_secs <= start:
        return ""
    weights = np.array([len("".join(_WORD.findall(w.lower()))) + 1 for w in words], float)
    ends = start + np.cumsum(weights) / weights.sum() * (end - start)
    count = int(np.searchsorted(ends, sent_secs, side="right"))
    return " ".join(words[:count])


class HeardSpeech:
    """Keeps the assistant's context message to the words the user heard.

    Three processors, in this order in the pipeline: :meth:`before_output` (TTS -> here ->
    transport output), :meth:`after_output` (output -> here -> assistant aggregator) and
    :meth:`after_context` (after the assistant aggregator).
    """

    def __init__(self, context: LLMContext, barge_in: BargeIn):
        """Initialize the tracker.

        Args:
            context: The session's conversation.
            barge_in: The session's barge-in (its output track says what was sent).
        """
        self._context = context
        self._barge_in = barge_in
        self._sentences: dict[int, _Sentence] = {}
        self._making: _Sentence | None = None
        self._written = 0.0
        self._reply: _Reply | None = None
        self._pending: tuple[_Reply, str] | None = None
        self.corrections: list[tuple[str, str]] = []  # (committed, heard) per cut reply
        self._before = _Tap(self._before_output)
        self._after = _Tap(self._after_output)
        self._fix = _Tap(self._after_context)

    def before_output(self) -> FrameProcessor:
        """Learns each segment's text and audio length, as the TTS sends them."""
        return self._before

    def after_output(self) -> FrameProcessor:
        """Follows what the transport wrote; at an interruption, works out what was heard."""
        return self._after

    def after_context(self) -> FrameProcessor:
        """At an interruption, makes the reply's context message what was heard."""
        return self._fix

    async def _before_output(self, frame: Frame) -> None:
        if isinstance(frame, TTSTextFrame):
            sentence = self._sentences.get(frame.segment_id) if frame.segment_id else None
            if sentence is not None:
                sentence.word_timed = sentence.word_timed or frame.pts is not None
                if not sentence.word_timed:
                    sentence.complete = True
                    self._making = None if self._making is sentence else self._making
        elif isinstance(frame, AggregatedTextFrame) and frame.will_be_spoken:
            # Announced before its audio (Pipecat's TTS service): a new segment.
            sentence = _Sentence(frame.text, word_timed=frame.pts is not None)
            self._sentences[frame.id] = sentence
            self._making = sentence
            while len(self._sentences) > 256:  # replies long gone
                self._sentences.pop(next(iter(self._sentences)))
        elif isinstance(frame, TTSAudioRawFrame) and self._making is not None:
            self._making.add_audio(frame.audio, frame.sample_rate)
        elif isinstance(frame, InterruptionFrame):
            self._making = None

    async def _after_output(self, frame: Frame) -> None:
        if isinstance(frame, OutputAudioRawFrame):
            self._written += len(frame.audio) / 2 / frame.sample_rate / max(1, frame.num_channels)
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._reply = _Reply(context_index=len(self._context.get_messages()))
        elif isinstance(frame, InterruptionFrame):
            self._interrupted()
        elif isinstance(frame, TTSTextFrame):
            if frame.append_to_context:
                self._commit(frame)
        elif isinstance(frame, AggregatedTextFrame) and frame.will_be_spoken:
            # The transport passes a segment's announcement on once all audio before it is
            # written: the segment starts there.
            sentence = self._sentences.get(frame.id)
            if sentence is not None:
                if self._reply is None:  # speech without an LLM reply (a TTSSpeakFrame)
                    self._reply = _Reply(context_index=len(self._context.get_messages()))
                sentence.start = self._written
                self._reply.sentences.append(sentence)
        elif (
            isinstance(frame, TextFrame)
            and frame.append_to_context
            and not isinstance(
                frame,
                TranscriptionFrame
                | InterimTranscriptionFrame
                | TranslationFrame
                | EagerTranscriptionFrame,
            )
        ):
            self._commit(frame)

    def _commit(self, frame: TextFrame) -> None:
        # What the assistant aggregator adds to its aggregation, as it adds it.
        if self._reply is not None and frame.text:
            text = frame.raw_text if isinstance(frame, AggregatedTextFrame) else None
            spaced = frame.includes_inter_frame_spaces
            self._reply.committed.append(
                TextPartForConcatenation(text or frame.text, includes_inter_part_spaces=spaced)
            )

    def _interrupted(self) -> None:
        reply, self._reply = self._reply, None
        output = self._barge_in.output
        # Drop what the track still holds: the bot stops now, and what it never sent is known.
        unsent = output.flush() if output is not None else 0.0
        if reply is None or not reply.sentences:
            return
        if any(s.word_timed for s in reply.sentences):
            return  # Pipecat's word-timed text frames stopped at the last word played
        # On the transport's clock: written audio = audio added to the track.
        sent = (output.added_secs if output is not None else self._written) - unsent
        parts: list[TextPartForConcatenation] = []
        for sentence in reply.sentences:
            if sentence.start is None or sentence.start >= sent:
                break
            words = heard_words(sentence, sent - sentence.start)
            if words:
                parts.append(TextPartForConcatenation(words, includes_inter_part_spaces=False))
            if words != sentence.text.strip():
                break
        heard = concatenate_aggregated_text(parts)
        self._pending = (reply, heard)

    async def _after_context(self, frame: Frame) -> None:
        if not isinstance(frame, InterruptionFrame) or self._pending is None:
            return
        (reply, heard), self._pending = self._pending, None
        committed = concatenate_aggregated_text(reply.committed)
        messages = list(self._context.get_messages())
        found = None
        if committed:
            found = next(
                (
                    i
                    for i in range(len(messages) - 1, reply.context_index - 1, -1)
                    if isinstance(messages[i], dict)
                    and messages[i].get("role") == "assistant"
                    and messages[i].get("content") == committed
                ),
                None,
            )
            if found is None:
                logger.warning(f"{self}: the interrupted reply's message is not in the context")
                return
        if heard == committed and (found is None or found == reply.context_index):
            return
        if found is not None:
            messages.pop(found)
        if heard:
            # Right after what came before the reply: a user turn that ended at once (a short
            # interruption) may have been added behind it already.
            messages.insert(reply.context_index, {"role": "assistant", "content": heard})
        self._context.set_messages(messages)
        self.corrections.append((committed, heard))
        logger.info(
            f"{self}: barge-in: the context keeps the words the user heard: [{heard}] "
            f"(the transport had written [{committed}])"
        )

    def __str__(self) -> str:
        return "HeardSpeech"


class _Tap(FrameProcessor):
    """A pass-through processor that shows every downstream frame to a callback first."""

    def __init__(self, callback: Callable[[Frame], object]):
        """Initialize the tap with ``callback(frame)``, awaited before the frame goes on."""
        super().__init__()
        self._callback = callback

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            await self._callback(frame)
        await self.push_frame(frame, direction)
