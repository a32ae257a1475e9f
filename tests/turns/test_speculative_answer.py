"""Answering at the VAD stop: the STT's speculative final starts the LLM, the answer is held
until the turn ends, and an answer that had to be dropped never reaches the TTS or the context.

Everything runs in the assembled pipeline (``build_voice_pipeline``): real recorded speech in
real time, Silero VAD, the real Nemotron STT services on the tiny engine (in-process and through
a real ASR server), Pipecat's LLM service with its SpeculationGate, and the hibari TTS. The
LLM endpoint is ``ScriptedLLMServer``, a FAKE (named as such) that speaks the real
OpenAI-compatible protocol and waits ``first_token_delay`` before its first token, standing for
a model's time to first token (SmolLM2 on these cores: ~0.27 s p50, docs/voice-to-voice.md).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from pipecat.frames.frames import (
    EagerEndOfTurnCancelFrame,
    EagerTranscriptionFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.filters.identity_filter import IdentityFilter

from pipelines.registry import resolve
from pipelines.voice import VoiceServices, build_voice_pipeline
from services.asr.nemotron_stt import NemotronSTTService, NemotronSTTSettings
from services.asr.remote_stt import RemoteNemotronSTTService, RemoteNemotronSTTSettings
from tests.asr_server.conftest import server, start_server, tiny_engine, tiny_nemo  # noqa: F401
from tests.stt.harness import LivePipeline
from tests.support.scripted_llm import ScriptedLLMServer
from tests.turns.conftest import Timeline, pcm_of, play, settings_with, silence

pytestmark = pytest.mark.timeout(180)

FIRST_TOKEN_DELAY = 0.4
# Speech timeout: the turn ends this long after the VAD stop, so an answer started at the VAD
# stop has time to be ready when it ends.
TURN_TIMEOUT = 0.8


def turn_settings(base_url: str, *, speculative: bool = True, **more):
    return settings_with(
        **{
            "llm.preset": "vllm",
            "llm.base_url": base_url,
            "llm.model": "scripted",
            "llm.api_key": "sk-test",
            "turn.strategy": "timeout",
            "turn.timeout_secs": TURN_TIMEOUT,
            "turn.speculative": speculative,
            **more,
        }
    )


class Session:
    """One assembled pipeline with its timelines: what the STT pushed, what the TTS got."""

    def __init__(self, voice, llm_server: ScriptedLLMServer):
        self.voice = voice
        self.llm = llm_server
        self.stt_out = Timeline()
        self.stt_out.hook(voice.services.stt, "on_after_push_frame")
        self.tts_in = Timeline()
        self.tts_in.hook(voice.services.tts)
        self.tts_out = Timeline()
        self.tts_out.hook(voice.services.tts, "on_after_push_frame")
        self.turn_ends: list[float] = []
        self.stop_strategy = voice.turn_strategies.stop[0]

        @voice.user_aggregator.event_handler("on_user_turn_stopped")
        async def _stopped(_aggregator, _strategy, _message):
            import time

            self.turn_ends.append(time.time())

    def spoken_text(self) -> str:
        """Everything the TTS was given to say."""
        return "".join(f.text for _, f in self.tts_in.of(LLMTextFrame))

    def messages(self) -> list[dict]:
        return self.voice.context.get_messages()


async def session(settings, stt, llm_server) -> Session:
    llm = resolve("llm", settings.llm.preset)(settings)
    tts = resolve("tts", "hibari")(settings)
    voice = await build_voice_pipeline(settings, services=VoiceServices(stt=stt, llm=llm, tts=tts))
    return Session(voice, llm_server)


def nemotron_stt(kind: str, tiny_engine, asr_server, settings):  # noqa: F811
    # The flag the builders pass (pipelines/backends/stt_nemotron.py, stt_remote.py). The tiny
    # model's random weights write text even for silence, and an interim transcript opens a
    # turn: interims off, so only the speech's finals (at the VAD stops) come.
    eager = settings.turn.speculative
    if kind == "remote":
        return RemoteNemotronSTTService(
            url=asr_server.url,
            enable_eager_end_of_turn=eager,
            settings=RemoteNemotronSTTSettings(interim_results=False),
        )
    return NemotronSTTService(
        engine=tiny_engine,
        enable_eager_end_of_turn=eager,
        settings=NemotronSTTSettings(interim_results=False),
    )


async def one_turn(kind, speculative, speech, tiny_engine, asr_server):  # noqa: F811
    llm_server = await ScriptedLLMServer(first_token_delay=FIRST_TOKEN_DELAY).start()
    try:
        settings = turn_settings(llm_server.base_url, speculative=speculative)
        stt = nemotron_stt(kind, tiny_engine, asr_server, settings)
        s = await session(settings, stt, llm_server)
        async with LivePipeline([s.voice.pipeline], start_timeout=30) as live:
            await play(live, silence(0.3) + pcm_of(speech["asterisk/conf-full"]) + silence(0.3))
            assert await live.wait_for(lambda: s.tts_out.of(TTSAudioRawFrame), timeout=10)
            await play(live, silence(0.5))
    finally:
        await llm_server.stop()
    return s


@pytest.mark.parametrize("kind", ["nemotron", "remote"])
async def test_the_llm_starts_at_the_vad_stop_and_the_confirmed_answer_is_spoken(
    kind,
    speech,
    tiny_engine,  # noqa: F811
    server,  # noqa: F811
):
    results = {}
    for speculative in (True, False):
        s = await one_turn(kind, speculative, speech, tiny_engine, server)
        assert len(s.turn_ends) == 1 and len(s.llm.streamed) == 1
        turn_end, asked = s.turn_ends[0], s.llm.arrivals[0]
        first_audio = s.tts_out.first(TTSAudioRawFrame, after=turn_end)
        assert first_audio is not None, "the answer was never spoken"
        finals = [f for _, f in s.stt_out.of(TranscriptionFrame)]
        assert len(finals) == 1 and finals[0].text
        # What the user said and what the bot answered, once each, in the context.
        assert s.messages() == [
            {"role": "user", "content": finals[0].text},
            {"role": "assistant", "content": "Reply number 1."},
        ]
        assert s.spoken_text().strip() == "Reply number 1."
        eager = [f for _, f in s.stt_out.of(EagerTranscriptionFrame)]
        if speculative:
            assert [f.text for f in eager] == [finals[0].text]
            # The request went out at the final transcript, before the turn was confirmed.
            assert asked < turn_end - 0.5 * TURN_TIMEOUT
            assert s.stop_strategy.speculations == s.stop_strategy.speculations_kept == 1
            # It answered exactly what the turn committed.
            assert s.llm.streamed[0]["messages"][-1]["content"] == finals[0].text
        else:
            assert not eager
            assert asked >= turn_end
        results[speculative] = {
            "llm_asked_before_turn_end_s": round(turn_end - asked, 3),
            "turn_end_to_first_audio_s": round(first_audio - turn_end, 3),
        }
    gain = results[False]["turn_end_to_first_audio_s"] - results[True]["turn_end_to_first_audio_s"]
    report = {"stt": kind, "first_token_delay_s": FIRST_TOKEN_DELAY, "gain_s": round(gain, 3)}
    report |= {"speculative": results[True], "not_speculative": results[False]}
    print(json.dumps(report))
    if os.environ.get("TURN_REPORT_DIR"):
        path = Path(os.environ["TURN_REPORT_DIR"]) / f"speculative_gain_{kind}.json"
        path.write_text(json.dumps(report, indent=2))
    # The LLM's time to first token was spent while the turn was still being confirmed.
    assert gain >= 0.6 * FIRST_TOKEN_DELAY, report


SLOW_VERDICT = 0.5


async def test_the_answer_starts_while_smart_turn_is_still_deciding(speech, tiny_engine):  # noqa: F811
    """Smart Turn's inference runs after the VAD stop, beside the STT's final. The speculative
    answer must start on that final at once, not after the verdict: here Smart Turn is slowed
    by SLOW_VERDICT (a FAKE latency, named as such, standing for its inference on two busy
    cores; the model and its verdict are the real ones)."""
    llm_server = await ScriptedLLMServer(first_token_delay=0.1).start()
    verdicts: list[float] = []
    try:
        settings = turn_settings(llm_server.base_url, **{"turn.strategy": "smart-turn"})
        stt = nemotron_stt("nemotron", tiny_engine, None, settings)
        s = await session(settings, stt, llm_server)
        analyzer = s.stop_strategy.detector._turn_analyzer
        predict = analyzer._predict_endpoint

        def slow_predict(audio):  # FAKE latency around the real model
            import time

            time.sleep(SLOW_VERDICT)
            result = predict(audio)
            verdicts.append(time.time())
            return result

        analyzer._predict_endpoint = slow_predict
        async with LivePipeline([s.voice.pipeline], start_timeout=30) as live:
            await play(live, silence(0.3) + pcm_of(speech["asterisk/conf-full"]) + silence(0.3))
            assert await live.wait_for(lambda: s.tts_out.of(TTSAudioRawFrame), timeout=10)
            await play(live, silence(0.3))
    finally:
        await llm_server.stop()

    assert verdicts, "Smart Turn never ran"
    eager = s.stt_out.first(EagerTranscriptionFrame)
    assert eager is not None and len(s.llm.arrivals) == 1 and len(s.turn_ends) == 1
    asked, verdict, turn_end = s.llm.arrivals[0], verdicts[0], s.turn_ends[0]
    # The request went out on the STT's final, while Smart Turn was still deciding.
    assert asked < verdict - 0.5 * SLOW_VERDICT, (asked - eager, verdict - eager)
    assert turn_end >= verdict
    assert s.stop_strategy.speculations == s.stop_strategy.speculations_kept == 1
    assert s.spoken_text().strip() == "Reply number 1."


async def test_an_answer_is_dropped_when_the_user_goes_on(speech, tiny_engine):  # noqa: F811
    llm_server = await ScriptedLLMServer(first_token_delay=0.2).start()
    try:
        settings = turn_settings(llm_server.base_url)
        stt = nemotron_stt("nemotron", tiny_engine, None, settings)
        s = await session(settings, stt, llm_server)
        async with LivePipeline([s.voice.pipeline], start_timeout=30) as live:
            # A pause long enough for the VAD to stop (and the answer to start), shorter than
            # the turn timeout: the user goes on with a second sentence in the same turn.
            await play(
                live,
                silence(0.3)
                + pcm_of(speech["asterisk/conf-full"], trim=True)
                + silence(0.5)
                + pcm_of(speech["asterisk/tt-somethingwrong"], trim=True)
                + silence(0.3),
            )
            assert await live.wait_for(lambda: s.tts_out.of(TTSAudioRawFrame), timeout=10)
            await play(live, silence(0.5))
    finally:
        await llm_server.stop()

    # (The tiny model writes one ever-growing "word", so the second stretch may add no new
    # final: the turn's text is whatever the finals hold.)
    finals = [f.text for _, f in s.stt_out.of(TranscriptionFrame)]
    first_final = finals[0]
    resumed = s.stt_out.first(EagerEndOfTurnCancelFrame)
    assert resumed is not None, "speech resuming withdrew the eager end of turn"
    # The first answer had started on the first stretch alone, before the user went on, and
    # was withdrawn then; the turn ended later with a second answer.
    assert len(s.llm.streamed) == 2 and len(s.turn_ends) == 1
    assert s.llm.streamed[0]["messages"][-1]["content"] == first_final
    assert s.llm.arrivals[0] < resumed < s.llm.arrivals[1] < s.turn_ends[0]
    # Nothing of it reached the TTS, the output or the context.
    assert "Reply number 1" not in s.spoken_text()
    assert not [f for _, f in s.tts_out.of(TTSTextFrame) if "number 1" in f.text]
    assert s.messages() == [
        {"role": "user", "content": " ".join(finals)},
        {"role": "assistant", "content": "Reply number 2."},
    ]
    # The second answer was speculative too, and kept.
    assert s.stop_strategy.speculations == 2 and s.stop_strategy.speculations_kept == 1
    assert s.spoken_text().strip() == "Reply number 2."


async def test_an_answer_is_dropped_when_the_committed_transcript_differs():
    """An STT whose committed transcript differs from its eager one (as Deepgram Flux may).

    Our STTs commit exactly the text they announced; this drives the same turn strategy with
    the frames such a service pushes (the STT slot is a pass-through here).
    """
    llm_server = await ScriptedLLMServer(first_token_delay=0.1).start()
    try:
        settings = turn_settings(llm_server.base_url)
        llm = resolve("llm", "vllm")(settings)
        tts = resolve("tts", "hibari")(settings)
        voice = await build_voice_pipeline(
            settings, services=VoiceServices(stt=IdentityFilter(), llm=llm, tts=tts)
        )
        s = Session(voice, llm_server)
        async with LivePipeline([voice.pipeline], start_timeout=30) as live:
            await live.send(VADUserStartedSpeakingFrame())
            await asyncio.sleep(0.3)
            await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
            await live.send(EagerTranscriptionFrame("What time is it", "user", "now"))
            # The answer is generated and held while the turn waits for its timeout...
            assert await live.wait_for(lambda: llm_server.replies_started == 1, timeout=5)
            await live.send(
                TranscriptionFrame("What time is it in Tokyo?", "user", "now", finalized=True)
            )
            assert await live.wait_for(lambda: s.tts_out.of(TTSAudioRawFrame), timeout=10)
            await asyncio.sleep(0.5)
    finally:
        await llm_server.stop()

    assert [r["messages"][-1]["content"] for r in llm_server.streamed] == [
        "What time is it",
        "What time is it in Tokyo?",
    ]
    assert "Reply number 1" not in s.spoken_text()
    assert s.messages() == [
        {"role": "user", "content": "What time is it in Tokyo?"},
        {"role": "assistant", "content": "Reply number 2."},
    ]
    assert s.stop_strategy.speculations == 1 and s.stop_strategy.speculations_kept == 0


@pytest.mark.parametrize("speculative", [True, False])
@pytest.mark.parametrize("backend", ["nemotron", "remote", "whisper"])
def test_every_stt_backend_announces_eager_ends_of_turn_when_speculative(backend, speculative):
    settings = settings_with(**{"stt.backend": backend, "turn.speculative": speculative})
    stt = resolve("stt", backend)(settings)
    assert stt.eager_end_of_turn_enabled is speculative
