"""A real WebRTC peer (aiortc) asks the running agent a recorded question and hears the answer.

The question is real human speech; the answer is judged by ear: the client transcribes the
bot's audio with Whisper tiny.en and checks it against what the agent said it would say.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.speech import content_words, word_error_rate, words
from tests.e2e.voice_client import WALL_OFFSET, VoiceClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def test_spoken_question_gets_a_spoken_answer(
    agent_url, agent_log, question, transcriber, e2e_dir, record_property
):
    client = VoiceClient(agent_url)
    await client.connect()
    try:
        turn = await client.say(question.path, response_timeout=45.0, max_reply_secs=30.0)
    finally:
        await client.close()

    heard = transcriber(turn.bot_audio) if len(turn.bot_audio) else ""
    latency_ms = None if turn.voice_to_voice_secs is None else turn.voice_to_voice_secs * 1000
    report = {
        "question": question.text,
        "user_transcript": turn.user_transcript,
        "bot_text": turn.bot_text,
        "bot_heard": heard,
        "bot_audio_secs": round(turn.bot_audio_secs, 2),
        "voice_to_voice_ms": None if latency_ms is None else round(latency_ms),
        "server_latency": turn.server_latency,
    }
    (e2e_dir / "webrtc_turn.json").write_text(json.dumps(report, indent=2))
    record_property("voice_to_voice_ms", report["voice_to_voice_ms"])
    print(json.dumps(report, indent=2))

    # The agent heard the question.
    assert turn.user_transcript, "no final user transcript came back over RTVI"
    assert word_error_rate(question.text, turn.user_transcript) <= 0.5, report
    # It answered out loud, soon enough to be a conversation.
    assert turn.first_audio_at is not None, "no bot audio after the question"
    assert 0 < turn.voice_to_voice_secs < 15.0, report
    assert turn.bot_audio_secs >= 0.5, report
    # The audio is speech, and it is the answer the agent composed for this question.
    assert len(words(heard)) >= 2, report
    assert turn.bot_text, "no bot-output text over RTVI"
    assert word_error_rate(turn.bot_text, heard) <= 0.6, report
    # And it is about the question: shares a topic word with it (small models paraphrase, so
    # the bar is one word, checked on the composed text and on what was heard).
    topic = content_words(question.text)
    assert topic & (content_words(turn.bot_text) | content_words(heard)), report
    # The room page's per-turn latency message arrived with its breakdown.
    assert turn.server_latency and turn.server_latency.get("total_secs", 0) > 0, report
    # With the agent's wall-clock start of the turn, which this same-host client can place
    # near its own end of speech (the VAD may place the end a little earlier than the client's
    # loudness threshold does) and before the first audio it heard.
    stopped = turn.server_latency.get("user_stopped_at")
    assert isinstance(stopped, float), report
    speech_end, heard_at = turn.speech_end_at + WALL_OFFSET, turn.first_audio_at + WALL_OFFSET
    assert speech_end - 1.0 < stopped < heard_at, report
