"""Turn logic of the cache-aware STT base: unsent words, discarded speculative finals.

The tiny random model emits one long "word", so word-level behaviour is tested with
``FakeRecognizerSTT``: a FAKE backend (named as such) that "recognizes" words encoded in the
audio samples (every sample of a frame = word number; 0 = silence). Everything else is real:
the Pipecat pipeline, the base service's frame handling and Pipecat's user aggregator with its
turn strategy, whose context shows what the LLM would receive.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pipecat.frames.frames import (
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from services.asr.stt_base import BackendTranscript, CacheAwareSTTService, unsent_suffix
from tests.stt.harness import LivePipeline

pytestmark = pytest.mark.timeout(60)

WORDS = {1: "hello", 2: "world", 3: "how", 4: "are", 5: "you"}


@pytest.mark.parametrize(
    ("committed", "full", "expected"),
    [
        ("", "hello world", "hello world"),
        ("hello world", "hello world how are you", "how are you"),
        ("hello wor", "hello world how are you", "how are you"),  # cut word completed
        ("hello world", "hello wor ld how", "how"),  # split moved
        ("hello world", "hello world", ""),
        ("hello world", "hello wor", ""),  # live text behind the final
        ("hello world", "hello worlds", ""),
        ("Hello, world.", "Hello, world, how are you?", "how are you?"),
        ("bbbbbbbb", "bbbbbbbbbbbbbbbb", ""),  # one growing word: never repeated
    ],
)
def test_unsent_suffix(committed, full, expected):
    assert unsent_suffix(committed, full) == expected


class FakeRecognizerSTT(CacheAwareSTTService):
    """FAKE backend: words come from the sample values, finals after ``final_delay`` seconds.

    ``cut_last_word`` makes the speculative final drop the last letters of its last word, as a
    final decoded against silence can ("hello wor"), to exercise the seam handling.
    """

    def __init__(self, *, final_delay: float = 0.02, cut_last_word: bool = False, **kwargs):
        super().__init__(reset_after_secs=None, **kwargs)
        self.final_delay = final_delay
        self.cut_last_word = cut_last_word
        self.words: list[str] = []
        self.utterance = 0
        self.resets = 0
        self._last_code = 0

    async def _backend_open(self):
        self._set_utterance(("fake", self.utterance))

    async def _backend_close(self):
        pass

    async def _backend_send(self, audio: bytes):
        for start in range(0, len(audio), 640):  # one code per 20 ms frame
            code = int(np.frombuffer(audio[start : start + 2], "<i2")[0])
            if code and code != self._last_code:
                self.words.append(WORDS[code])
                await self._on_backend_partial(BackendTranscript(" ".join(self.words), self._key))
            self._last_code = code

    async def _backend_finalize(self):
        key, words = self._key, list(self.words)
        await asyncio.sleep(self.final_delay)
        if self.cut_last_word and words:
            words[-1] = words[-1][:-2]
        return BackendTranscript(" ".join(words), key)

    async def _backend_reset(self):
        self.words, self.utterance, self.resets = [], self.utterance + 1, self.resets + 1
        self._last_code = 0
        self._set_utterance(("fake", self.utterance))


def word_audio(*codes: int, frames_per_word: int = 5) -> bytes:
    """20 ms frames whose samples carry word numbers (0 = silence)."""
    return b"".join(np.full(320 * frames_per_word, c, "<i2").tobytes() for c in codes)


async def say(live: LivePipeline, *codes: int) -> None:
    """One stretch of speech as the VAD frames it: start, the words' audio, stop."""
    await live.send(VADUserStartedSpeakingFrame())
    await live.send_audio(word_audio(*codes))
    await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))


def user_aggregator(context: LLMContext):
    params = LLMUserAggregatorParams(
        user_turn_strategies=UserTurnStrategies(
            stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.4)]
        )
    )
    return LLMContextAggregatorPair(context, user_params=params).user()


def user_messages(context: LLMContext) -> list[str]:
    return [m["content"] for m in context.messages if m.get("role") == "user"]


@pytest.mark.parametrize("cut_last_word", [False, True])
async def test_speech_resuming_after_a_pushed_final_adds_only_new_words(cut_last_word):
    stt = FakeRecognizerSTT(cut_last_word=cut_last_word)
    context = LLMContext()
    async with LivePipeline([stt, user_aggregator(context)]) as live:
        await say(live, 1, 2, 0)
        assert await live.wait_for(lambda: stt.finals_pushed == 1)
        # The user goes on within the turn (the pause was shorter than the turn timeout).
        await say(live, 3, 4, 5, 0)
        assert await live.wait_for(lambda: user_messages(context), timeout=5)
    # Every fake final cuts its last word; the words already pushed are never repeated.
    expected = "hello wor how are y" if cut_last_word else "hello world how are you"
    assert user_messages(context) == [expected]
    assert stt.finals_pushed == 2 and stt.finals_discarded == 0
    assert stt.resets == 1  # accepted at the end of the turn


async def test_final_still_in_flight_when_speech_resumes_is_discarded():
    stt = FakeRecognizerSTT(final_delay=0.3)
    context = LLMContext()
    seen: list = []

    @stt.event_handler("on_after_push_frame")
    async def _seen(_stt, frame):
        if isinstance(frame, TranscriptionFrame | InterimTranscriptionFrame):
            seen.append(frame)

    async with LivePipeline([stt, user_aggregator(context)]) as live:
        await say(live, 1, 2, 0)
        await asyncio.sleep(0.05)
        await say(live, 3, 4, 5, 0)  # speech resumes before the 0.3 s final is back
        assert await live.wait_for(lambda: user_messages(context), timeout=5)
    finals = [f for f in seen if isinstance(f, TranscriptionFrame)]
    assert [f.text for f in finals] == ["hello world how are you"]
    assert all(f.finalized for f in finals)
    assert stt.finals_discarded == 1
    assert user_messages(context) == ["hello world how are you"]
    interims = [f.text for f in seen if isinstance(f, InterimTranscriptionFrame)]
    assert interims[:2] == ["hello", "hello world"]


async def test_an_interim_is_never_pushed_twice_in_a_row_across_an_utterance_reset():
    # A reset with no final between (an idle reset, a failover's new stream) starts a new
    # utterance whose first text can equal the last interim shown: pushing it again would be a
    # repeat to consumers. After a final, the same text is a new interim and is pushed.
    stt = FakeRecognizerSTT()
    async with LivePipeline([stt]) as live:
        await live.send_audio(word_audio(1, 0))
        assert await live.wait_for(lambda: live.of(InterimTranscriptionFrame))
        await stt._backend_reset()  # no final: what the idle reset does
        await live.send_audio(word_audio(1, 2, 0))
        assert await live.wait_for(lambda: len(live.of(InterimTranscriptionFrame)) == 2)
        await live.send(VADUserStartedSpeakingFrame())
        await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
        assert await live.wait_for(lambda: live.of(TranscriptionFrame))
        await stt._backend_reset()
        await live.send_audio(word_audio(1, 0))
        assert await live.wait_for(lambda: len(live.of(InterimTranscriptionFrame)) == 3)
    assert [f.text for f in live.of(InterimTranscriptionFrame)] == [
        "hello",
        "hello world",
        "hello",
    ]
    assert [f.text for f in live.of(TranscriptionFrame)] == ["hello world"]


async def test_next_turn_starts_fresh_after_the_turn_ends():
    stt = FakeRecognizerSTT()
    context = LLMContext()
    async with LivePipeline([stt, user_aggregator(context)]) as live:
        for codes in ((1, 2, 0), (3, 4, 5, 0)):
            await say(live, *codes)
            count = len(user_messages(context)) + 1
            assert await live.wait_for(lambda n=count: len(user_messages(context)) == n)
    assert user_messages(context) == ["hello world", "how are you"]
    assert stt.resets == 2


async def test_words_spoken_just_before_the_turn_ends_reach_the_next_utterance():
    stt = FakeRecognizerSTT()
    context = LLMContext()
    async with LivePipeline([stt, user_aggregator(context)]) as live:
        await say(live, 1, 2, 0)
        assert await live.wait_for(lambda: stt.finals_pushed == 1)
        # The user starts again while the turn is still ending: the VAD has not confirmed it
        # yet, so the turn ends (and the utterance is accepted) after this audio arrived.
        await live.send_audio(word_audio(0, 3))
        assert await live.wait_for(lambda: stt.resets == 1, timeout=5)
        await say(live, 4, 5, 0)
        assert await live.wait_for(lambda: len(user_messages(context)) == 2, timeout=5)
    assert user_messages(context) == ["hello world", "how are you"]


async def test_carry_over_is_bounded_and_starts_at_the_vad_stop():
    stt = FakeRecognizerSTT()
    context = LLMContext()
    async with LivePipeline([stt, user_aggregator(context)]) as live:
        await say(live, 1, 2)
        # One second of silence, then the turn ends: only the last 0.5 s are carried over,
        # none of the words before the VAD stop.
        await live.send_audio(word_audio(0, frames_per_word=50))
        assert await live.wait_for(lambda: stt.resets == 1, timeout=5)
    assert stt._carry is None
    assert user_messages(context) == ["hello world"]
    assert stt.words == []  # nothing of "hello world" came back after the reset
