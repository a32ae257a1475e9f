"""The turn settings reach Pipecat's real turn analyzer: how long Smart Turn waits before ending
a turn it judged incomplete."""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy

from agent.config import ConfigError
from pipelines.turns import SpeculativeTurnStopStrategy, TextAwareTurnStopStrategy
from pipelines.voice import build_smart_turn, build_turn_strategies
from tests.support.settings import section_settings

RATE = 16000
FRAME = np.full(RATE // 50, 500, np.int16).tobytes()  # 20 ms


def silence_until_turn_ends(analyzer, limit_secs: float = 10.0) -> float:
    """Seconds of silence after 0.5 s of speech before the analyzer ends the turn by itself."""
    analyzer.set_sample_rate(RATE)
    for _ in range(25):
        assert analyzer.append_audio(FRAME, True) == EndOfTurnState.INCOMPLETE
    silent = bytes(len(FRAME))
    for frames in range(1, int(limit_secs * 50) + 1):
        if analyzer.append_audio(silent, False) == EndOfTurnState.COMPLETE:
            return frames / 50
    pytest.fail(f"turn still open after {limit_secs} s of silence")


@pytest.mark.parametrize(("value", "expected"), [(None, 3.0), ("1.2", 1.2)])
def test_an_incomplete_turn_ends_after_the_configured_silence(value, expected):
    values = {"incomplete_timeout_secs": value} if value else {}
    analyzer = build_smart_turn(section_settings("turn", **values))
    assert silence_until_turn_ends(analyzer) == pytest.approx(expected, abs=0.021)


def test_smart_turn_is_the_default_stop_strategy():
    # Smart Turn (with the transcript's verdict, pipelines/turns.py) decides the turn end; by
    # default it confirms speculative answers, and with turn.speculative off it ends turns alone.
    strategies = build_turn_strategies(section_settings("turn"))
    assert [type(s) for s in strategies.stop] == [SpeculativeTurnStopStrategy]
    assert isinstance(strategies.stop[0].detector, TurnAnalyzerUserTurnStopStrategy)
    plain = build_turn_strategies(section_settings("turn", speculative="false"))
    assert [type(s) for s in plain.stop] == [TextAwareTurnStopStrategy]


def test_a_timeout_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="incomplete_timeout_secs = 0"):
        section_settings("turn", incomplete_timeout_secs="0")
