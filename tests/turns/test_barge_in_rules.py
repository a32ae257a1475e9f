"""Barge-in's rules on their own: what counts as a backchannel, which words of a cut sentence
were heard, and the settings that configure them (the behaviour over real WebRTC is in
``tests/e2e/test_barge_in.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.barge_in import BargeInUserTurnStartStrategy, _Sentence, heard_words, is_backchannel
from pipelines.settings import DEFAULT_BACKCHANNELS
from tests.turns.conftest import settings_with


@pytest.mark.parametrize(
    "text",
    [
        "Uh-huh.",
        "Uh huh.",
        "Mm-hmm.",
        "Mhm.",
        "Mmm.",
        "Okay.",
        "OK.",
        "Yeah.",
        "Oh, okay.",
        "Yeah, yeah.",
        "I see.",
        "Got it.",
        "Right.",
    ],
)
def test_backchannels_as_an_stt_writes_them(text):
    assert is_backchannel(text, DEFAULT_BACKCHANNELS)


@pytest.mark.parametrize(
    "text",
    ["No.", "Stop.", "Okay, stop.", "Wait.", "Yeah, but why?", "Yesterday.", "Thank you.", ""],
)
def test_anything_else_interrupts(text):
    assert not is_backchannel(text, DEFAULT_BACKCHANNELS)


def test_a_run_of_backchannels_is_one_only_up_to_three():
    assert is_backchannel("Yeah, yeah, yeah.", DEFAULT_BACKCHANNELS)
    assert not is_backchannel("Yeah yeah yeah yeah.", DEFAULT_BACKCHANNELS)


def test_the_backchannels_are_configured_by_turn_backchannels():
    from pipelines.voice import build_turn_strategies

    settings = settings_with(**{"turn.backchannels": '["roger", "copy that"]'})
    assert settings.turn.backchannels == ["roger", "copy that"]
    start = build_turn_strategies(settings).start
    assert [type(s) for s in start] == [BargeInUserTurnStartStrategy]
    barge_in = start[0]._barge_in
    assert barge_in.is_backchannel("Roger.") and barge_in.is_backchannel("Copy that.")
    assert not barge_in.is_backchannel("Okay.")  # the defaults are replaced, not extended
    # Empty: any speech over the bot interrupts it.
    assert settings_with(**{"turn.backchannels": "[]"}).turn.backchannels == []
    assert settings_with().turn.backchannel_max_secs == 0.8


def sentence(text: str, voiced: tuple[float, float], secs: float) -> _Sentence:
    return _Sentence(text, secs=secs, complete=True, voiced=voiced)


def test_words_are_heard_when_their_share_of_the_voiced_audio_was_sent():
    cut = sentence("one two three four", voiced=(0.2, 2.2), secs=2.5)
    # Letters plus one per word (4, 4, 6, 5 of 19) over the 2 s of voice: the words end
    # 0.42, 0.84, 1.47 and 2.0 s into it.
    assert heard_words(cut, 0.1) == ""
    assert heard_words(cut, 0.2 + 0.40) == ""
    assert heard_words(cut, 0.2 + 0.45) == "one"
    assert heard_words(cut, 0.2 + 0.90) == "one two"
    assert heard_words(cut, 0.2 + 1.45) == "one two"
    assert heard_words(cut, 0.2 + 1.50) == "one two three"
    assert heard_words(cut, 2.2) == "one two three four"
    assert heard_words(cut, 2.4) == "one two three four"


def test_a_sentence_still_being_made_is_placed_by_its_letters():
    # Only 0.5 s of its audio has come: its length is taken from 14 letters a second.
    making = _Sentence("abcdefghijklmn opqrstuvwxyzab", secs=0.5, complete=False)
    making.voiced = (0.0, 0.5)
    assert heard_words(making, 0.5) == ""
    assert heard_words(making, 1.2) == "abcdefghijklmn"


def test_the_voiced_span_of_a_sentence_comes_from_its_audio():
    rate = 24000
    audio = np.concatenate([np.zeros(rate // 10), np.full(rate, 2000), np.zeros(rate // 5)]).astype(
        np.int16
    )
    made = _Sentence("hello there")
    made.add_audio(audio[: rate // 2].tobytes(), rate)
    made.add_audio(audio[rate // 2 :].tobytes(), rate)
    assert made.secs == pytest.approx(1.3)
    start, end = made.voiced
    assert start == pytest.approx(0.1, abs=0.011) and end == pytest.approx(1.1, abs=0.011)


class FakeOutput:
    """Fake (named as such) of the pausable output: the WebRTC track or the call's output,
    which need a peer; it records what barge-in asked of it."""

    added_secs = 0.0

    def __init__(self):
        self.paused = False
        self.flushed = 0

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False

    def flush(self):
        self.flushed += 1
        self.paused = False
        return 0.0


async def _start_strategy():
    import asyncio
    from types import SimpleNamespace

    from pipecat.utils.asyncio.task_manager import TaskManager

    from pipelines.barge_in import BargeIn

    output = FakeOutput()
    barge_in = BargeIn()
    barge_in.attach_output(lambda: output)
    strategy = BargeInUserTurnStartStrategy(barge_in)
    await strategy.setup(SimpleNamespace(task_manager=TaskManager(loop=asyncio.get_running_loop())))
    started: list[str] = []
    strategy.add_event_handler("on_user_turn_started", lambda *_: started.append("started"))
    return strategy, output, started


def _input(level: int):
    from pipecat.frames.frames import InputAudioRawFrame

    pcm = np.full(320, level, np.int16).tobytes()
    return InputAudioRawFrame(audio=pcm, sample_rate=16000, num_channels=1)


async def test_speech_going_on_when_the_answer_starts_holds_it_and_is_the_users_turn():
    import time

    from pipecat.frames.frames import BotStartedSpeakingFrame, VADUserStartedSpeakingFrame

    strategy, output, started = await _start_strategy()
    try:
        # The user's turn ended in a pause; they go on, and the answer starts meanwhile.
        await strategy.process_frame(_input(3000))
        assert not strategy.holding and not started  # the bot is silent: nothing to hold
        await strategy.process_frame(BotStartedSpeakingFrame())
        assert strategy.holding and output.paused
        # The VAD confirms the speech: the user's turn (no backchannel wait), at once.
        await strategy.process_frame(
            VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=time.time())
        )
        assert started == ["started"]
        assert strategy._barge_in.interruptions == 1
    finally:
        await strategy.cleanup()


async def test_an_answer_that_starts_after_the_user_went_quiet_is_not_held():
    import asyncio

    from pipecat.frames.frames import BotStartedSpeakingFrame

    strategy, output, started = await _start_strategy()
    try:
        await strategy.process_frame(_input(3000))
        await strategy.process_frame(_input(0))
        await asyncio.sleep(0.15)  # longer than SPEAKING_AT_BOT_START_SECS
        await strategy.process_frame(BotStartedSpeakingFrame())
        assert not strategy.holding and not output.paused and not started
        # Speech over the bot still holds it at its first voiced 20 ms.
        await strategy.process_frame(_input(3000))
        assert strategy.holding and output.paused and not started
    finally:
        await strategy.cleanup()


async def test_steady_noise_holds_one_answer_at_most():
    import asyncio

    from pipecat.frames.frames import BotStartedSpeakingFrame, BotStoppedSpeakingFrame

    from pipelines import barge_in

    strategy, output, started = await _start_strategy()
    try:
        await strategy.process_frame(_input(3000))  # noise the VAD never calls speech
        await strategy.process_frame(BotStartedSpeakingFrame())
        assert strategy.holding
        await asyncio.sleep(0.2 + barge_in.FALSE_ALARM_MARGIN_SECS + 0.1)
        assert not strategy.holding and strategy._barge_in.false_alarms == 1
        await strategy.process_frame(BotStoppedSpeakingFrame())
        # The noise goes on; the next answer starts without a hold.
        await strategy.process_frame(_input(3000))
        await strategy.process_frame(BotStartedSpeakingFrame())
        assert not strategy.holding and not output.paused and not started
    finally:
        await strategy.cleanup()
