"""Per-turn voice-to-voice latency: logged with its breakdown and kept for reports."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    InputAudioRawFrame,
    LLMFullResponseStartFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import FramePushed
from pipecat.observers.user_bot_latency_observer import LatencyBreakdown, UserBotLatencyObserver
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService

# RMS of a 20 ms int16 frame above which it counts as voiced (about -45 dBFS): well above the
# codec's noise floor on silence, well below any speech. The test client marks the end of the
# user's speech by the same rule, so the two clocks mark the same moment.
VOICED_RMS = 180.0


@dataclass
class TurnLatency:
    """One user-stop -> bot-speech interval and the named parts that add up to it."""

    total_secs: float
    parts: dict[str, float] = field(default_factory=dict)
    # Wall-clock time (time.time()) of the user's end of speech as the agent placed it (VAD
    # stop minus stop_secs); lets a client on the same host split its transport time.
    user_stopped_at: float | None = None
    # Wall-clock arrival of the last voiced input audio before the VAD's stop: the VAD's
    # decision minus stop_secs comes this much later (Silero's confidence outlasts the words).
    user_last_voice_at: float | None = None
    # Work that ran off the critical path, by breakdown key, in seconds: a speculative answer
    # started at the VAD stop has its first token before the turn is confirmed, so its time
    # to first token is hidden behind turn detection and is not one of ``parts``.
    hidden: dict[str, float] = field(default_factory=dict)


class TurnLatencyObserver(UserBotLatencyObserver):
    """Pipecat's latency observer, logging each turn and keeping the last ones.

    The voice-to-voice time runs from the user's end of speech as the VAD places it (VAD stop
    minus ``stop_secs``) to the bot's first audio; the breakdown names the VAD wait,
    transcription, LLM and TTS parts; an LLM whose first token came before the turn was
    confirmed (a speculative answer) is listed apart, as hidden time. The observer also notes
    when the last voiced audio arrived before each VAD stop, so reports can count the VAD's own
    lag as VAD wait. Emits
    ``on_turn_latency(observer, TurnLatency)``.
    """

    def __init__(self, *, keep_last: int = 100, **kwargs):
        """Initialize the observer.

        Args:
            keep_last: How many turns to keep in :attr:`turns`.
            **kwargs: Passed to ``UserBotLatencyObserver``.
        """
        super().__init__(**kwargs)
        self._keep_last = keep_last
        self.turns: list[TurnLatency] = []
        self._register_event_handler("on_turn_latency")
        self.add_event_handler("on_latency_breakdown", self._on_breakdown)
        self._voiced_at: deque[float] = deque(maxlen=32)
        self._last_audio_id: int | None = None
        self._last_voice_before_stop: float | None = None
        self._llm_names: set[str] = set()

    async def on_push_frame(self, data: FramePushed):
        """Note when voiced user audio arrives, then let Pipecat's observer time the turn."""
        frame = data.frame
        if data.direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, InputAudioRawFrame) and frame.id != self._last_audio_id:
                # A frame is seen once per hop; the first sighting is its arrival.
                self._last_audio_id = frame.id
                samples = np.frombuffer(frame.audio[: len(frame.audio) // 2 * 2], np.int16)
                if frame_rms(samples) >= VOICED_RMS:
                    self._voiced_at.append(time.time())
            elif isinstance(frame, VADUserStoppedSpeakingFrame):
                before = [t for t in self._voiced_at if t <= frame.timestamp]
                self._last_voice_before_stop = before[-1] if before else None
            elif isinstance(frame, LLMFullResponseStartFrame) and isinstance(
                data.source, LLMService
            ):
                # Whose TTFB is the LLM's, for a turn whose answer was ready before it ended.
                self._llm_names.add(data.source.name)
        await super().on_push_frame(data)

    async def _on_breakdown(self, _observer, breakdown: LatencyBreakdown) -> None:
        parts: dict[str, float] = {}
        for part in breakdown.contributions:
            parts[part.key] = parts.get(part.key, 0.0) + part.duration_secs
        hidden: dict[str, float] = {}
        llm_ttfb = [t.duration_secs for t in breakdown.ttfb if t.processor in self._llm_names]
        if "llm_inference" not in parts and llm_ttfb:
            # The kept answer is the last one asked for (a dropped speculation came before it).
            hidden["llm_inference"] = llm_ttfb[-1]
        turn = TurnLatency(
            total_secs=breakdown.total_secs,
            parts=parts,
            user_stopped_at=breakdown.user_turn_start_time,
            user_last_voice_at=self._last_voice_before_stop,
            hidden=hidden,
        )
        self.turns = [*self.turns[-(self._keep_last - 1) :], turn]
        summary = _in_ms(parts)
        if hidden:
            summary += f"; hidden behind turn detection: {_in_ms(hidden)}"
        await self._call_event_handler("on_turn_latency", turn)
        logger.info(f"Turn latency {breakdown.total_secs * 1000:.0f} ms voice-to-voice: {summary}")


def _in_ms(secs: dict[str, float]) -> str:
    """``{"a": 0.1, "b": 0.02}`` -> ``"a 100 ms, b 20 ms"``."""
    return ", ".join(f"{key} {value * 1000:.0f} ms" for key, value in secs.items())


def frame_rms(samples: np.ndarray) -> float:
    """RMS of int16 samples, as float."""
    if samples.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
