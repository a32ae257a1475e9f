"""Per-turn voice-to-voice latency: logged with its breakdown and kept for reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from loguru import logger
from pipecat.observers.user_bot_latency_observer import LatencyBreakdown, UserBotLatencyObserver


@dataclass
class TurnLatency:
    """One user-stop -> bot-speech interval and the named parts that add up to it."""

    total_secs: float
    parts: dict[str, float] = field(default_factory=dict)
    # Wall-clock time (time.time()) of the user's end of speech as the agent placed it (VAD
    # stop minus stop_secs); lets a client on the same host split its transport time.
    user_stopped_at: float | None = None


class TurnLatencyObserver(UserBotLatencyObserver):
    """Pipecat's latency observer, logging each turn and keeping the last ones.

    The voice-to-voice time runs from the user's real end of speech (VAD stop minus
    ``stop_secs``) to the bot's first audio; the breakdown names the VAD wait,
    transcription, LLM and TTS parts. Emits ``on_turn_latency(observer, TurnLatency)``.
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

    async def _on_breakdown(self, _observer, breakdown: LatencyBreakdown) -> None:
        parts: dict[str, float] = {}
        for part in breakdown.contributions:
            parts[part.key] = parts.get(part.key, 0.0) + part.duration_secs
        turn = TurnLatency(
            total_secs=breakdown.total_secs,
            parts=parts,
            user_stopped_at=breakdown.user_turn_start_time,
        )
        self.turns = [*self.turns[-(self._keep_last - 1) :], turn]
        summary = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in parts.items())
        await self._call_event_handler("on_turn_latency", turn)
        logger.info(f"Turn latency {breakdown.total_secs * 1000:.0f} ms voice-to-voice: {summary}")
