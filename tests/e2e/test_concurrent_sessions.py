"""Several WebRTC sessions talk to one agent at the same moment, and every turn is answered.

Three aiortc peers connect to the running agent (``cpu`` profile: one Whisper, one embedded
llama.cpp server and one TTS voice shared by all sessions) and, round after round, finish a
recorded sentence at the same instant, so their requests reach the shared LLM together. Each
turn must come back as the LLM's own reply, spoken: not silence, and not the fallback sentence
the agent says when a reply comes back empty (that would hide a lost reply).
"""

from __future__ import annotations

import asyncio

import pytest

from services.llm.openai_compatible import DEFAULT_FALLBACK_REPLY
from tests.e2e.speech import Utterance, words
from tests.e2e.voice_client import TurnResult, VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SESSIONS = 3
ROUNDS = 3


def one_sentence_utterances(utterances: list[Utterance], count: int) -> list[Utterance]:
    """``count`` recordings of one short sentence each (no pause that could split a turn)."""
    single = [
        u
        for u in utterances
        if 1.8 <= u.duration_s <= 3.2
        and len(words(u.text)) >= 5
        and sum(u.text.count(mark) for mark in ".?!,") == 1
    ]
    if len(single) < count:
        pytest.fail(f"need {count} one-sentence recordings in the speech cache: {len(single)}")
    return sorted(single, key=lambda u: u.id)[:count]


async def say_ending_at_once(clients: list[VoiceClient], spoken: list[Utterance]) -> list:
    """Each client speaks its recording, started so that all of them end together."""
    longest = max(u.duration_s for u in spoken)

    async def speak(client: VoiceClient, utterance: Utterance) -> TurnResult:
        await asyncio.sleep(longest - utterance.duration_s)
        return await client.say(utterance.path, response_timeout=90.0, max_reply_secs=40.0)

    return await asyncio.gather(*(speak(c, u) for c, u in zip(clients, spoken, strict=True)))


async def test_simultaneous_sessions_all_get_their_answer(agent, agent_url, agent_log, utterances):
    log_start = agent.log_path.stat().st_size if not isinstance(agent, str) else 0
    chosen = one_sentence_utterances(utterances, SESSIONS * ROUNDS)
    clients = [VoiceClient(agent_url) for _ in range(SESSIONS)]
    turns: list[tuple[int, int, Utterance, TurnResult]] = []
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        for round_index in range(ROUNDS):
            spoken = chosen[round_index * SESSIONS : (round_index + 1) * SESSIONS]
            results = await say_ending_at_once(clients, spoken)
            for session, (utterance, turn) in enumerate(zip(spoken, results, strict=True)):
                turns.append((round_index, session, utterance, turn))
            await asyncio.sleep(1.0)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    report = [
        {
            "round": r,
            "session": s,
            "said": u.text,
            "heard": t.user_transcript,
            "bot_text": t.bot_text,
            "bot_audio_secs": round(t.bot_audio_secs, 2),
            "voice_to_voice_secs": t.voice_to_voice_secs,
        }
        for r, s, u, t in turns
    ]
    for line in report:
        print(line)
    unanswered = [line for line, (*_, t) in zip(report, turns, strict=True) if not t.first_audio_at]
    assert not unanswered, f"{len(unanswered)} of {len(turns)} turns got no spoken answer"
    fallbacks = [line for line in report if DEFAULT_FALLBACK_REPLY in line["bot_text"]]
    assert not fallbacks, f"{len(fallbacks)} replies came back empty: {fallbacks}"
    for line in report:
        assert line["heard"], f"the agent heard nothing: {line}"
        assert line["bot_text"] and line["bot_audio_secs"] >= 0.5, line
    if not isinstance(agent, str):
        log = agent.log_path.read_bytes()[log_start:].decode(errors="replace")
        assert "speaking the fallback reply" not in log
