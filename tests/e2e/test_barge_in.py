"""Barge-in over real WebRTC: the bot stops within 150 ms of the user's speech, its context
message keeps only what the user heard, and a backchannel does not interrupt it.

The real ``voice-agent run`` (cpu profile: Silero VAD, Smart Turn, Whisper tiny.en, hibari,
Pipecat's SmallWebRTC with the agent's output track) talks to an aiortc peer that speaks real
recorded speech (Asterisk prompts) in real time and records the bot's audio as it arrives.
The LLM is a FAKE (``tests/support/scripted_llm.py``: the real streaming protocol, scripted
words), so the reply the user talks over is known, and each request shows the context the
agent sent. Times are the client's: the user's speech starts at the first voiced 20 ms of
the recording as its microphone sent it; the bot's audio is timed as it arrives.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from tests.e2e.agent_process import AgentProcess, start_agent, webrtc_host_address
from tests.e2e.speech import Utterance, word_error_rate, words
from tests.e2e.voice_client import VoiceClient, load_audio, voiced_bounds
from tests.support.scripted_llm import ScriptedLLMServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# Three sentences without commas: the TTS speaks each as one segment (the first clause of a
# long first sentence would be cut at a comma), so a cut lands inside a known sentence.
# No numbers: Whisper, the client's ears, writes "9" and "$12" for them.
LONG_REPLY = (
    "The museum opens early every morning. "
    "The first floor holds the paintings from the old royal collection "
    "and the second floor holds the large stone sculptures. "
    "Tickets are sold at the front desk near the main entrance."
)
AFTER_REPLY = "Of course. The gift shop is next to the cafe."
STOP_BUDGET_SECS = 0.15
BACKCHANNEL = "asterisk/digits/oh"  # "oh": a real recorded backchannel
SHORT_INTERRUPTION = "asterisk/vm-no"  # "no": as short as a backchannel, but not one


@dataclass
class Script:
    """What the FAKE LLM answers: the long reply first, then short ones."""

    first: str = LONG_REPLY

    def __call__(self, index: int, _body: dict) -> str:
        return self.first if index == 0 else AFTER_REPLY


@pytest.fixture(scope="module")
def llm_port():
    from tests.e2e.agent_process import free_port

    return free_port()


@pytest.fixture(scope="module")
def barge_agent(e2e_dir, llm_port) -> AgentProcess:
    """The agent on the cpu profile, its LLM on the FAKE server's (per-test) port."""
    if webrtc_host_address() is None:
        pytest.fail("aiortc peers need an IPv4 address other than 127.x (scripts/test.sh)")
    overrides = {
        "llm.preset": "llamacpp",
        "llm.base_url": f"http://127.0.0.1:{llm_port}/v1",
        "llm.model": "scripted",
    }
    try:
        agent = start_agent(
            profile="cpu", overrides=overrides, log_path=e2e_dir / "agent-barge-in.log"
        )
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield agent
    agent.stop()


@pytest.fixture
def server(barge_agent, llm_port):
    """The FAKE LLM, fresh for each test (its request log too), on the agent's LLM port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = ScriptedLLMServer(reply=Script(), count_tokens=lambda _messages: 0, port=llm_port)
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
    yield fake
    asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
def log_on_failure(barge_agent, request):
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\n--- agent log tail ({barge_agent.log_path}) ---\n{barge_agent.log_tail(120)}")


@pytest.fixture(scope="module")
def sentence_secs() -> list[float]:
    """Each reply sentence's length as the agent's TTS speaks it (hibari, leading silence cut)."""
    from services.tts.hibari import HIBARI_SAMPLE_RATE, load_hibari_voice
    from services.tts.silence import trim_leading_silence

    tts, lock = load_hibari_voice()
    lengths = []
    for sentence in LONG_REPLY.replace(". ", ".\n").splitlines():
        with lock:
            audio = np.concatenate(list(tts.stream(sentence)))
        lengths.append(len(trim_leading_silence(audio, HIBARI_SAMPLE_RATE)) / HIBARI_SAMPLE_RATE)
    return lengths


@pytest.fixture(scope="module")
def interruption(utterances) -> Utterance:
    """A one-sentence recording of ~3 s: longer than any backchannel."""
    found = [
        u
        for u in utterances
        if 2.5 <= u.duration_s <= 3.6
        and len(words(u.text)) >= 6
        and u.text.rstrip()[-1:] in ".?"
        and sum(u.text.count(mark) for mark in ".?!,;") == 1
    ]
    if not found:
        pytest.fail("no one-sentence recording of 2.5-3.6 s in the speech cache")
    return sorted(found, key=lambda u: u.id)[0]


def by_id(utterances, key: str) -> Utterance:
    found = [u for u in utterances if u.id == key]
    if not found:
        pytest.fail(f"{key} is not in the speech cache (scripts/fetch_speech.py)")
    return found[0]


async def until(moment: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``moment``."""
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def speak(client: VoiceClient, path) -> tuple[float, float]:
    """Queue a recording on the microphone; (speech start, speech end) as it is sent."""
    audio = load_audio(path)
    start, end = voiced_bounds(audio)
    started = client.mic.play(audio[:start])
    ended = client.mic.play(audio[start:], mark_at=end - start)
    return await started, await ended


async def ask(client: VoiceClient, question: Utterance) -> float:
    """Ask the question; the arrival time of the reply's first voiced frame."""
    _start, end = await speak(client, question.path)
    deadline = end + 30.0
    while time.monotonic() < deadline:
        first = client.bot_audio.first_voiced_after(end)
        if first is not None:
            return first
        await asyncio.sleep(0.02)
    raise AssertionError("no reply to the question")


def voiced_times(client: VoiceClient, t0: float, t1: float) -> list[float]:
    from pipelines.latency import VOICED_RMS, frame_rms

    return [t for t, c in client.bot_audio.chunks if t0 <= t <= t1 and frame_rms(c) >= VOICED_RMS]


def audio_between(client: VoiceClient, t0: float, t1: float) -> np.ndarray:
    parts = [c for t, c in client.bot_audio.chunks if t0 <= t <= t1]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


def hear(transcriber, audio: np.ndarray) -> str:
    # Whisper tiny drops a word at the very start of its input: give it the silence it had.
    return transcriber(np.concatenate([np.zeros(8000, np.int16), audio]))


def sentence_words(count: int) -> int:
    """Words in the reply's first ``count`` sentences."""
    return len(words(". ".join(LONG_REPLY.split(". ")[:count])))


def assistant_messages(body: dict) -> list[str]:
    return [str(m.get("content")) for m in body["messages"] if m.get("role") == "assistant"]


async def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_speaking_over_the_bot_stops_it_and_the_context_keeps_what_was_heard(
    barge_agent, server, log_on_failure, question, interruption, sentence_secs, transcriber
):
    client = VoiceClient(barge_agent.url)
    await client.connect()
    try:
        reply_at = await ask(client, question)
        # Talk over the middle of the second sentence: the cut falls inside it.
        await until(reply_at + sentence_secs[0] + 0.55 * sentence_secs[1])
        user_start, user_end = await speak(client, interruption.path)
        answered = await wait_for(lambda: len(server.streamed) >= 2, 30)
        assert answered, "the LLM was never asked about the interruption"
        await wait_for(lambda: client.bot_audio.first_voiced_after(user_end) is not None, 20)
        await asyncio.sleep(1.0)
    finally:
        await client.close()

    next_reply = client.bot_audio.first_voiced_after(user_end)
    over_user = voiced_times(client, user_start, (next_reply or user_end + 1.0) - 0.01)
    stop_secs = (max(over_user) - user_start) if over_user else 0.0
    heard_until = user_start + stop_secs
    heard = hear(transcriber, audio_between(client, reply_at - 0.1, heard_until + 0.02))
    kept = assistant_messages(server.streamed[1])[-1]
    report = {
        "interruption": interruption.text,
        "stop_after_user_speech_ms": round(stop_secs * 1000),
        "bot_voiced_frames_while_user_spoke": len(over_user),
        "heard_at_client": heard,
        "context_keeps": kept,
        "asked_next": server.streamed[1]["messages"][-1],
    }
    print(json.dumps(report, indent=2))

    # The bot's audio stopped within 150 ms of the user's first voiced 20 ms, as heard here,
    # and stayed off until it answered the interruption.
    assert stop_secs <= STOP_BUDGET_SECS, report
    # The context's assistant message is the reply up to where the user cut in: a prefix
    # of the scripted words, cut inside the second sentence (the first whole, not the third).
    reply_words, kept_words = words(LONG_REPLY), words(kept)
    assert kept_words == reply_words[: len(kept_words)], report
    assert sentence_words(1) < len(kept_words) < sentence_words(2), report
    # And it is what the client heard: the same words, give or take the one being spoken.
    heard_words = words(heard)
    assert abs(len(heard_words) - len(kept_words)) <= 2, report
    assert word_error_rate(kept, heard) <= 0.35, report
    # The interruption itself is the user's turn, after the cut reply.
    last = server.streamed[1]["messages"][-1]
    assert last["role"] == "user" and word_error_rate(interruption.text, last["content"]) <= 0.5


async def test_a_short_word_that_is_no_backchannel_interrupts_too(
    barge_agent, server, log_on_failure, question, utterances, sentence_secs
):
    no = by_id(utterances, SHORT_INTERRUPTION)
    client = VoiceClient(barge_agent.url)
    await client.connect()
    try:
        reply_at = await ask(client, question)
        await until(reply_at + sentence_secs[0] + 0.5 * sentence_secs[1])
        user_start, user_end = await speak(client, no.path)
        answered = await wait_for(lambda: len(server.streamed) >= 2, 30)
        assert answered, "the LLM was never asked about the 'no'"
        await wait_for(lambda: client.bot_audio.first_voiced_after(user_end) is not None, 20)
        await asyncio.sleep(1.0)
    finally:
        await client.close()

    next_reply = client.bot_audio.first_voiced_after(user_end)
    over_user = voiced_times(client, user_start, (next_reply or user_end + 3.0) - 0.01)
    stop_secs = (max(over_user) - user_start) if over_user else 0.0
    messages = server.streamed[1]["messages"]
    turn_ends = [
        m["data"]
        for t, m in client.messages
        if t > user_start and (m.get("data") or {}).get("type") == "turn-end"
    ]
    report = {
        "stop_after_user_speech_ms": round(stop_secs * 1000),
        "messages": messages[-3:],
        "next_reply_after_speech_end_s": None if next_reply is None else next_reply - user_end,
        "turn_ends": turn_ends,
    }
    print(json.dumps(report, indent=2))

    # Held at once, and never resumed: a "no" is decided on its transcript, not its length.
    assert stop_secs <= STOP_BUDGET_SECS, report
    # Its turn opened on that transcript, after the speech had ended, and ended by the text
    # rule (turn.complete_text_wait_secs after it opened), not after Pipecat's wait for more
    # transcripts (the STT's p99, 2.5 s).
    assert [e["rule"] for e in turn_ends] == ["text"], report
    assert next_reply is not None and next_reply - user_end < 3.0, report
    # The cut reply comes before the "no" in the context, though that turn ended at once.
    assert messages[-1]["role"] == "user" and "no" in words(messages[-1]["content"]), report
    assert messages[-2]["role"] == "assistant", report
    kept_words = words(messages[-2]["content"])
    assert kept_words == words(LONG_REPLY)[: len(kept_words)], report
    assert sentence_words(1) < len(kept_words) < sentence_words(2), report


async def test_a_backchannel_does_not_interrupt_the_bot(
    barge_agent, server, log_on_failure, question, utterances, sentence_secs, transcriber
):
    oh = by_id(utterances, BACKCHANNEL)
    client = VoiceClient(barge_agent.url)
    await client.connect()
    try:
        reply_at = await ask(client, question)
        await until(reply_at + sentence_secs[0] + 0.4 * sentence_secs[1])
        user_start, user_end = await speak(client, oh.path)
        # The whole reply plays out (with the pause the decision took), and nobody asks the
        # LLM anything in the meantime.
        await wait_for(
            lambda: any(
                m["type"] == "bot-stopped-speaking" for t, m in client.messages if t > user_end
            ),
            sum(sentence_secs) + 10,
        )
        await asyncio.sleep(1.0)
        requests_during_reply = len(server.streamed)
        # A follow-up question shows the context the reply left.
        followed_up = time.monotonic()
        await ask(client, question)
        await wait_for(lambda: len(server.streamed) >= 2, 30)
    finally:
        await client.close()

    reply = voiced_times(client, reply_at, followed_up)
    around = [t for t in reply if user_start - 0.1 <= t <= user_end + 3.0]
    pause = float(np.diff(around).max()) if len(around) > 1 else None
    heard_reply = hear(transcriber, audio_between(client, reply_at - 0.1, reply[-1] + 0.05))
    heard_after = hear(transcriber, audio_between(client, user_end, reply[-1] + 0.05))
    last_sentence = LONG_REPLY.split(". ")[-1]
    backchannels = [
        m["data"]
        for _t, m in client.messages
        if m["type"] == "user-input" and (m.get("data") or {}).get("input_type") == "backchannel"
    ]
    context = server.streamed[1]["messages"] if len(server.streamed) > 1 else []
    report = {
        "backchannel": oh.text,
        "requests_during_reply": requests_during_reply,
        "pause_around_backchannel_s": None if pause is None else round(pause, 2),
        "heard_reply": heard_reply,
        "heard_after_backchannel": heard_after,
        "backchannels_reported": backchannels,
        "context": context,
    }
    print(json.dumps(report, indent=2))

    # The bot went on: the reply was heard to its end, its last sentence after the "oh", and
    # the LLM was asked nothing about the "oh".
    assert requests_during_reply == 1, report
    assert word_error_rate(LONG_REPLY, heard_reply) <= 0.3, report
    tail = " ".join(words(heard_after)[-len(words(last_sentence)) :])
    assert word_error_rate(last_sentence, tail) <= 0.3, report
    # It paused while the "oh" was being understood, no longer than the transcript took.
    assert pause is not None and pause < 3.0, report
    # The agent told the client it heard a backchannel (Pipecat's RTVI user-input).
    assert backchannels and "oh" in words(backchannels[0]["text"]), report
    # The context holds the whole reply and no "oh".
    kept = [words(m["content"]) for m in context if m["role"] == "assistant"]
    assert kept == [words(LONG_REPLY)], report
    assert not [m for m in context if m["role"] == "user" and words(m["content"]) == ["oh"]]
