"""Phone calls: a caller on Twilio's (and Telnyx's) media-stream protocol talks to the agent.

The real ``voice-agent run -t twilio`` (then ``-t telnyx``) runs as a child process on the
``cpu`` profile (Whisper tiny.en, hibari, Silero VAD, Smart Turn) with its LLM pointed at a
FAKE OpenAI-compatible server (``tests/support/scripted_llm.py``: the real streaming protocol,
scripted words) so each answer's text is known. The provider's side is FAKE too
(``tests/e2e/phone_client.py``): Twilio's and Telnyx's media servers cannot run here, so a
WebSocket client on loopback speaks their protocol: the handshake, then 8 kHz mu-law of real
recorded speech in 20 ms ``media`` messages paced at real time, silence between, and ``stop``.

What is checked: the agent heard the question (the LLM was asked its words: 8 kHz mu-law in,
16 kHz to the VAD, Smart Turn and the STT), the answer came back as ``media`` after the question,
non-silent and saying the scripted reply (judged by Whisper), and a caller who speaks over an
answer gets ``clear`` and silence until the bot answers the new turn.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
import wave
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
import pytest
import soxr

from tests.e2e.agent_process import AgentProcess, free_port, start_agent
from tests.e2e.phone_client import PROVIDERS, PhoneCall, line_audio
from tests.e2e.speech import Utterance, word_error_rate, words
from tests.e2e.voice_client import WALL_OFFSET
from tests.support.scripted_llm import ScriptedLLMServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PROXY = "phone.example.test"
SHORT_REPLY = "The train to the airport leaves every twenty minutes from platform four."
LONG_REPLY = (
    "Let me tell you everything about the museum. It opens at nine in the morning and closes "
    "at six in the evening. On weekends it stays open until eight. The first floor has the "
    "paintings, the second floor has the sculptures, and the third floor has the old maps. "
    "There is a small cafe near the entrance where you can buy coffee and sandwiches. "
    "Tickets cost twelve dollars for adults and six dollars for children."
)
# From the caller's first word until the bot can have gone quiet on the line: the agent's
# frame in (20 ms), the hold, and the chunk of bot audio already on its way out.
TALK_OVER_GRACE_S = 0.25
AFTER_BARGE_IN_REPLY = "Of course, I will stop there. The gift shop is next to the cafe."


@dataclass
class ReplyScript:
    """What the FAKE LLM answers next (the test changes it between turns)."""

    text: str = SHORT_REPLY

    def __call__(self, _index: int, _body: dict) -> str:
        return self.text


@pytest.fixture(scope="module")
def llm():
    """The FAKE LLM server, on its own event loop thread for the module's agents."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    script = ReplyScript()
    server = ScriptedLLMServer(reply=script, count_tokens=lambda _messages: 0)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    server.script = script  # type: ignore[attr-defined]
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture(scope="module", params=["twilio", "telnyx"])
def phone_agent(request, llm, e2e_dir) -> AgentProcess:
    """``voice-agent run -t PROVIDER -x PROXY`` on the cpu profile, LLM on the FAKE server."""
    provider = request.param
    overrides = {
        "llm.preset": "llamacpp",
        "llm.base_url": llm.base_url,
        "llm.model": "scripted",
    }
    try:
        agent = start_agent(
            profile="cpu",
            port=free_port(),
            overrides=overrides,
            extra_args=["-t", provider, "-x", PROXY],
            log_path=e2e_dir / f"agent-{provider}.log",
        )
    except RuntimeError as exc:
        pytest.fail(str(exc))
    agent.provider = provider  # type: ignore[attr-defined]
    yield agent
    agent.stop()


@pytest.fixture
def phone_log(phone_agent, request):
    """Prints the agent's log tail when the test fails."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\n--- agent log tail ({phone_agent.log_path}) ---\n{phone_agent.log_tail(120)}")


@pytest.fixture(scope="module")
def barge_in(utterances, question) -> Utterance:
    """A one-sentence recording (no pause inside that could end its turn early).

    About 3 s of it: the caller is still talking well after the ``clear``, which is the time
    in which the interrupted answer must stay silent.
    """
    single = [
        u
        for u in utterances
        if 2.8 <= u.duration_s <= 3.6
        and len(words(u.text)) >= 6
        and u.text.rstrip()[-1:] in (".", "?")
        and sum(u.text.count(mark) for mark in ".?!,;") == 1
        and u.id != question.id
    ]
    if not single:
        pytest.fail("no one-sentence recording of 2.8-3.6 s in the speech cache")
    return sorted(single, key=lambda u: u.id)[0]


def stream_url(agent: AgentProcess) -> str:
    """Where the provider streams: the path of the runner's XML answer, on loopback."""
    request = urllib.request.Request(agent.url + "/", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = response.read().decode()
    stream = ET.fromstring(answer).find("./Connect/Stream")
    assert stream is not None, answer
    public = urlparse(stream.get("url", ""))
    assert (public.scheme, public.netloc) == ("wss", PROXY), answer
    return agent.url.replace("http://", "ws://") + public.path


def user_texts(llm: ScriptedLLMServer, after_wall: float) -> list[str]:
    """The last user message of each streamed LLM request that arrived after ``after_wall``."""
    found = []
    for body, arrived in zip(llm.requests, llm.arrivals, strict=True):
        if body.get("stream") and arrived > after_wall:
            users = [m for m in body.get("messages", []) if m.get("role") == "user"]
            if users:
                content = users[-1].get("content")
                if isinstance(content, list):
                    content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
                found.append(str(content))
    return found


def hear(transcriber, line: np.ndarray) -> str:
    """What Whisper hears in the bot's 8 kHz line audio (resampled to its 16 kHz)."""
    if len(line) == 0:
        return ""
    # Half a second of line silence first: the bot's audio starts on its first word, and
    # Whisper tiny drops a word that starts its input (the line had that silence before it).
    line = np.concatenate([np.zeros(4000, np.int16), line])
    wide = soxr.resample(line.astype(np.float32), 8000, 16000)
    return transcriber(np.clip(wide, -32768, 32767).astype(np.int16))


def save_line_audio(path, line: np.ndarray) -> None:
    """Keep what the caller heard (8 kHz WAV) beside the agent's log."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(line.astype(np.int16).tobytes())


def voiced_secs(call: PhoneCall, after: float = 0.0, before: float = float("inf")) -> float:
    return sum(len(r.pcm) for r in call.voiced_media(after, before)) / 8000


async def open_call(agent: AgentProcess) -> PhoneCall:
    call = PhoneCall(stream_url(agent), PROVIDERS[agent.provider]())  # type: ignore[attr-defined]
    await call.start()
    await asyncio.sleep(1.0)  # the line is open and silent before the caller speaks
    return call


def check_stream_ids(call: PhoneCall) -> None:
    """Twilio's media and clear messages name the caller's stream; Telnyx's carry none."""
    for r in call.received:
        if call.provider.name == "twilio" and r.event in ("media", "clear"):
            assert r.message.get("streamSid") == call.provider.stream_id, r.message


async def test_call_gets_a_spoken_answer(
    phone_agent, phone_log, llm, question, transcriber, e2e_dir
):
    llm.script.text = SHORT_REPLY
    asked_wall = time.time()
    call = await open_call(phone_agent)
    try:
        spoken = await call.say(line_audio(question.path))
        answered = await call.wait_for(lambda: call.voiced_media(spoken.speech_end_at), 60)
        # Quiet for 3 s: a loaded machine can pause that long between two synthesized sentences.
        await call.wait_quiet(3.0, 40)
    finally:
        await call.hang_up()

    end = spoken.speech_end_at
    first = call.voiced_media(end)[0].at if answered else None
    heard = hear(transcriber, call.audio(after=end))
    asked = user_texts(llm, asked_wall)
    report = {
        "provider": call.provider.name,
        "question": question.text,
        "llm_was_asked": asked,
        "answer_after_speech_end_s": None if first is None else round(first - end, 2),
        "answer_voiced_s": round(voiced_secs(call, end), 2),
        "heard": heard,
        "events": sorted({r.event for r in call.received}),
    }
    print(json.dumps(report, indent=2))
    save_line_audio(e2e_dir / f"phone-{call.provider.name}-answer.wav", call.audio(after=end))

    # The agent heard the question through 8 kHz mu-law: the LLM was asked its words.
    assert asked, report
    assert word_error_rate(question.text, asked[-1]) <= 0.5, report
    # The answer came back as media, after the question and not before, as non-silent audio.
    assert answered, report
    assert not call.voiced_media(before=end), "bot audio before the question ended"
    assert 0 < first - end < 20.0, report
    assert report["answer_voiced_s"] >= 1.0, report
    # It is the reply the LLM gave, spoken: Whisper hears its words in the 8 kHz line audio.
    assert word_error_rate(SHORT_REPLY, heard) <= 0.5, report
    check_stream_ids(call)


async def test_caller_speaking_over_the_answer_gets_clear(
    phone_agent, phone_log, llm, question, barge_in, transcriber
):
    llm.script.text = LONG_REPLY
    call = await open_call(phone_agent)
    try:
        spoken = await call.say(line_audio(question.path))
        answered = await call.wait_for(lambda: call.voiced_media(spoken.speech_end_at), 60)
        assert answered, "no answer to the question"
        # Speak over the answer once a second of it has been heard.
        started = await call.wait_for(lambda: voiced_secs(call, spoken.speech_end_at) >= 1.0, 20)
        assert started, "the answer stopped before a second of it was heard"
        llm.script.text = AFTER_BARGE_IN_REPLY
        barge = await call.say(line_audio(barge_in.path))
        second = await call.wait_for(lambda: call.voiced_media(barge.speech_end_at), 60)
        # Quiet for 3 s: a loaded machine can pause that long between two synthesized sentences.
        await call.wait_quiet(3.0, 40)
    finally:
        await call.hang_up()

    clears = call.events("clear", after=barge.speech_start_at)
    clear_at = clears[0].at if clears else None
    # The bot's next answer cannot start before the LLM is asked about the barge-in, nor (the
    # answer to a speculative request at a pause inside it is held until the turn ends) before
    # the caller stops talking.
    asked_after = [
        arrived - WALL_OFFSET
        for arrived in llm.arrivals
        if arrived - WALL_OFFSET > barge.speech_start_at
    ]
    next_asked_at = max(asked_after[0], barge.speech_end_at) if asked_after else barge.speech_end_at
    cut_off_window = (clear_at + 0.5, next_asked_at) if clear_at else None
    after_clear = voiced_secs(call, *cut_off_window) if cut_off_window else None
    heard_second = hear(transcriber, call.audio(after=barge.speech_end_at))
    # The call's output pauses at the caller's first voiced audio (agent/call_output.py): the
    # bot is quiet on the line from then on, not only from the clear (0.8 s into the speech).
    talked_over = (
        voiced_secs(call, barge.speech_start_at + TALK_OVER_GRACE_S, clear_at) if clear_at else None
    )
    report = {
        "provider": call.provider.name,
        "barge_in": barge_in.text,
        "clear_after_barge_in_s": None
        if clear_at is None
        else round(clear_at - barge.speech_start_at, 2),
        "answer_heard_before_barge_in_s": round(
            voiced_secs(call, spoken.speech_end_at, barge.speech_start_at), 2
        ),
        "voiced_s_after_clear_until_next_llm_request": after_clear,
        "voiced_s_over_the_caller_before_clear": talked_over,
        "window_s": None if not cut_off_window else round(cut_off_window[1] - cut_off_window[0], 2),
        "second_answer_heard": heard_second,
    }
    print(json.dumps(report, indent=2))

    # The interruption reached the caller's line as the provider's clear, promptly.
    assert clear_at is not None, report
    assert clear_at - barge.speech_start_at < 3.0, report
    # And the long answer stopped there: no more of it while the caller talked (without the
    # interruption it would go on for many more seconds).
    assert cut_off_window[1] - cut_off_window[0] >= 1.0, report
    assert after_clear <= 0.1, report
    assert talked_over <= 0.1, report
    # The caller was heard, and answered.
    asked = user_texts(llm, barge.speech_start_at + WALL_OFFSET)
    assert asked and word_error_rate(barge_in.text, asked[-1]) <= 0.6, (asked, report)
    assert second, report
    assert word_error_rate(AFTER_BARGE_IN_REPLY, heard_second) <= 0.5, report
    check_stream_ids(call)


async def test_another_providers_stream_is_refused(phone_agent, phone_log):
    other = "telnyx" if phone_agent.provider == "twilio" else "twilio"  # type: ignore[attr-defined]
    call = PhoneCall(stream_url(phone_agent), PROVIDERS[other]())
    await call.start()
    try:
        closed = await call.wait_for(lambda: call.closed_code is not None, 10)
    finally:
        await call.hang_up()
    assert closed and call.closed_code == 1008, call.closed_code
    assert not call.events("media")
    assert phone_agent.process.poll() is None
