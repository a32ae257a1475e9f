"""The turn-latency observer notes when the user's last voiced audio arrived before the VAD stop,
and reports an LLM that answered before the turn ended as hidden time, in a real Pipecat
pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    DataFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.processors.filters.identity_filter import IdentityFilter
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings
from pipecat.tests.utils import SleepFrame, run_test

from pipelines.latency import TurnLatencyObserver

RATE = 16000


def audio_frame(amplitude: float) -> InputAudioRawFrame:
    t = np.arange(RATE // 50) / RATE
    samples = (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    return InputAudioRawFrame(audio=samples.tobytes(), sample_rate=RATE, num_channels=1)


def observed_turns() -> tuple[TurnLatencyObserver, list]:
    """An observer and the list its ``on_turn_latency`` turns land in."""
    observer = TurnLatencyObserver()
    turns = []

    @observer.event_handler("on_turn_latency")
    async def _on_turn(_observer, turn):
        turns.append(turn)

    return observer, turns


def user_turn(stopped_at: float) -> list[Frame]:
    """The user speaks, the VAD stops at ``stopped_at``, the STT's final follows."""
    stop = VADUserStoppedSpeakingFrame(stop_secs=0.2, timestamp=stopped_at)
    final = TranscriptionFrame(text="hello", user_id="u", timestamp="now")
    return [VADUserStartedSpeakingFrame(), stop, final]


def reply() -> list[Frame]:
    """The answer's text, the TTS's first audio and the bot starting to speak."""
    audio = TTSAudioRawFrame(audio=bytes(640), sample_rate=RATE, num_channels=1)
    return [LLMTextFrame(text="Hi."), audio, BotStartedSpeakingFrame()]


@pytest.mark.asyncio
async def test_turn_latency_carries_the_arrival_of_the_last_voiced_audio():
    observer, turns = observed_turns()
    started = time.time()
    voiced = [audio_frame(3000.0) for _ in range(3)]
    quiet = [audio_frame(20.0) for _ in range(5)]
    frames = [VADUserStartedSpeakingFrame(), *voiced, SleepFrame(sleep=0.15), *quiet]
    # The VAD stamps its decision when it makes it: well after the audio above.
    stop = VADUserStoppedSpeakingFrame(stop_secs=0.2, timestamp=started + 0.6)
    frames += [SleepFrame(sleep=0.2), stop, UserStoppedSpeakingFrame()]
    frames += [
        TranscriptionFrame(text="hello", user_id="u", timestamp="now"),
        LLMFullResponseStartFrame(),
        *reply(),
        SleepFrame(sleep=0.1),
    ]
    await run_test(IdentityFilter(), frames_to_send=frames, observers=[observer])

    assert len(turns) == 1
    turn = turns[0]
    assert turn.user_stopped_at == pytest.approx(started + 0.4)
    # The voiced frames went through before the 0.15 s pause; the quiet ones after it do not
    # count, and nothing arrived after the VAD's stamp.
    assert turn.user_last_voice_at is not None
    assert started <= turn.user_last_voice_at < started + 0.14
    assert "endpointing_wait" in turn.parts


@dataclass
class FromLLM(DataFrame):
    """A frame for :class:`ReplayLLM` to push as its own."""

    frame: Frame | None = None


class ReplayLLM(LLMService):
    """A FAKE LLM (named as such): it pushes the frames wrapped in ``FromLLM`` as its own, the
    way a real LLM service pushes its response and metrics, and passes everything else on."""

    def __init__(self):
        unused = ("model", "system_instruction", "temperature", "max_tokens", "top_p", "top_k")
        unused += ("frequency_penalty", "presence_penalty", "seed", "filter_incomplete_user_turns")
        unused += ("user_turn_completion_config",)
        super().__init__(settings=LLMSettings(**dict.fromkeys(unused)))

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame.frame if isinstance(frame, FromLLM) else frame, direction)


def from_llm(*frames: Frame) -> list[Frame]:
    return [FromLLM(frame=frame) for frame in frames]


@pytest.mark.asyncio
async def test_an_answer_ready_before_the_turn_ended_is_reported_as_hidden_llm_time():
    """A speculative answer's first token came while the turn was still being decided: the
    timeline has no LLM stage (it cost the user nothing), and the LLM's time to first token is
    reported beside it, not lost and not counted twice."""
    observer, turns = observed_turns()
    llm = ReplayLLM()
    ttfb = MetricsFrame(data=[TTFBMetricsData(processor=llm.name, value=0.08)])
    frames = user_turn(time.time())
    # The LLM answered during turn detection; its response is released when the turn ends.
    frames += [SleepFrame(sleep=0.1), *from_llm(ttfb), SleepFrame(sleep=0.2)]
    frames += [UserStoppedSpeakingFrame()]
    frames += [*from_llm(LLMFullResponseStartFrame(), *reply()), SleepFrame(sleep=0.1)]
    await run_test(llm, frames_to_send=frames, observers=[observer])

    assert len(turns) == 1
    turn = turns[0]
    assert "llm_inference" not in turn.parts and "turn_detection" in turn.parts, turn.parts
    assert turn.hidden == {"llm_inference": pytest.approx(0.08)}
    assert sum(turn.parts.values()) == pytest.approx(turn.total_secs)


@pytest.mark.asyncio
async def test_an_answer_asked_for_after_the_turn_ended_is_on_the_timeline():
    observer, turns = observed_turns()
    llm = ReplayLLM()
    ttfb = MetricsFrame(data=[TTFBMetricsData(processor=llm.name, value=0.15)])
    frames = user_turn(time.time())
    frames += [SleepFrame(sleep=0.1), UserStoppedSpeakingFrame()]
    frames += [*from_llm(LLMFullResponseStartFrame()), SleepFrame(sleep=0.15)]
    frames += [*from_llm(ttfb, *reply()), SleepFrame(sleep=0.1)]
    await run_test(llm, frames_to_send=frames, observers=[observer])

    assert len(turns) == 1
    assert turns[0].parts["llm_inference"] == pytest.approx(0.15, abs=0.03), turns[0].parts
    assert turns[0].hidden == {}
