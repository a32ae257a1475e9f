"""The turn-latency observer notes when the user's last voiced audio arrived before the VAD stop,
in a real Pipecat pipeline."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    InputAudioRawFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.filters.identity_filter import IdentityFilter
from pipecat.tests.utils import SleepFrame, run_test

from pipelines.latency import TurnLatencyObserver

RATE = 16000


def audio_frame(amplitude: float) -> InputAudioRawFrame:
    t = np.arange(RATE // 50) / RATE
    samples = (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    return InputAudioRawFrame(audio=samples.tobytes(), sample_rate=RATE, num_channels=1)


@pytest.mark.asyncio
async def test_turn_latency_carries_the_arrival_of_the_last_voiced_audio():
    observer = TurnLatencyObserver()
    turns = []

    @observer.event_handler("on_turn_latency")
    async def _on_turn(_observer, turn):
        turns.append(turn)

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
        LLMTextFrame(text="Hi."),
        TTSAudioRawFrame(audio=bytes(640), sample_rate=RATE, num_channels=1),
        BotStartedSpeakingFrame(),
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
