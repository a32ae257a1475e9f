"""RemoteNemotronSTTService against a real ASR server on 127.0.0.1 (tiny engine)."""

from __future__ import annotations

import asyncio

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InterimTranscriptionFrame,
    MetricsFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import STTUsageMetricsData, TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams

from services.asr.engine.events import WordTiming
from services.asr.remote_stt import RemoteNemotronSTTService, _words
from services.asr.server import protocol as P
from tests.asr_server.tiny import speechlike_pcm
from tests.stt.harness import LivePipeline

pytestmark = pytest.mark.timeout(90)


async def speak(live: LivePipeline, seconds: float = 1.0, seed: int = 0) -> None:
    await live.send(VADUserStartedSpeakingFrame())
    await live.send_audio(speechlike_pcm(seconds, seed=seed), speed=4)
    await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))


async def test_remote_service_emits_the_same_frames_and_metrics(server):
    stt = RemoteNemotronSTTService(url=server.url)
    params = PipelineParams(enable_metrics=True, enable_usage_metrics=True)
    async with LivePipeline([stt], params) as live:
        assert stt.connected and server.live_streams == 1
        await speak(live)
        assert await live.wait_for(lambda: live.of(TranscriptionFrame))
        await asyncio.sleep(0.2)
    interims = live.of(InterimTranscriptionFrame)
    finals = live.of(TranscriptionFrame)
    assert interims and len(finals) == 1 and finals[0].finalized
    data = [d for f in live.of(MetricsFrame) for d in f.data]
    assert [d for d in data if isinstance(d, TTFBMetricsData) and d.value > 0]
    assert [d for d in data if isinstance(d, STTUsageMetricsData)]
    assert not live.of(ErrorFrame, up=True), [e.error for e in live.of(ErrorFrame, up=True)]
    assert await live.wait_for(lambda: server.live_streams == 0, timeout=2)


async def test_bots_reconnect_and_go_on_after_a_server_restart(start_server):
    first = await start_server()
    port = first.port
    bots = [
        RemoteNemotronSTTService(url=first.url, reconnect_min_secs=0.05, reconnect_max_secs=0.2)
        for _ in range(2)
    ]
    lives = [LivePipeline([bot]) for bot in bots]
    for live in lives:
        await live.__aenter__()
    try:
        await asyncio.gather(*(speak(live) for live in lives))
        for live in lives:
            assert await live.wait_for(lambda live=live: len(live.of(TranscriptionFrame)) == 1)
            # The turn ends: what follows is a new utterance (a failover inside an utterance
            # replays it instead, see tests/stt/test_remote_failover.py).
            await live.send(UserStoppedSpeakingFrame())

        await first.stop()  # the server goes away while the bots are connected
        for bot in bots:
            assert await lives[0].wait_for(lambda bot=bot: not bot.connected, timeout=3)
        await asyncio.gather(*(live.send_audio(speechlike_pcm(0.3), speed=4) for live in lives))
        second = await start_server(port=port)  # back on the same port

        for bot in bots:
            assert await lives[0].wait_for(lambda bot=bot: bot.connected, timeout=5)
            assert bot.connections_made == 2
        assert second.live_streams == 2
        await asyncio.gather(*(speak(live, seed=2) for live in lives))
        for live in lives:
            assert await live.wait_for(lambda live=live: len(live.of(TranscriptionFrame)) == 2)
            errors = live.of(ErrorFrame, up=True)
            assert errors and all(not e.fatal for e in errors)
            assert any("reconnecting" in e.error for e in errors)
    finally:
        for live in lives:
            await live.__aexit__(None, None, None)


async def test_wrong_token_is_a_permanent_error(start_server):
    srv = await start_server(token="right")
    stt = RemoteNemotronSTTService(url=srv.url, token="wrong", initial_connect_wait=1.0)
    async with LivePipeline([stt]) as live:
        assert await live.wait_for(lambda: live.of(ErrorFrame, up=True))
        await live.send_audio(speechlike_pcm(0.2), speed=8)  # the session goes on
    error = live.of(ErrorFrame, up=True)[0]
    assert "refused" in error.error and "401" in error.error
    assert not stt.is_usable


async def test_no_server_yet_then_it_comes_up(start_server):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stt = RemoteNemotronSTTService(
        url=f"ws://127.0.0.1:{port}/v1/stream",
        initial_connect_wait=0.2,
        reconnect_min_secs=0.05,
        reconnect_max_secs=0.2,
    )
    async with LivePipeline([stt]) as live:
        assert not stt.connected
        assert await live.wait_for(lambda: live.of(ErrorFrame, up=True))
        await start_server(port=port)
        assert await live.wait_for(lambda: stt.connected, timeout=5)
        await speak(live)
        assert await live.wait_for(lambda: live.of(TranscriptionFrame))


async def test_final_frames_carry_the_words_and_their_times(server, tiny_engine):
    """The finalized frame's ``result`` holds every word with its times on the utterance clock,
    the same as the engine gives in process for the same audio."""
    stt = RemoteNemotronSTTService(url=server.url)
    pcm = speechlike_pcm(1.5, seed=5)
    async with LivePipeline([stt]) as live:
        await live.send(VADUserStartedSpeakingFrame())
        await live.send_audio(pcm, speed=4)
        await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
        assert await live.wait_for(lambda: live.of(TranscriptionFrame))
    final = live.of(TranscriptionFrame)[0]
    stream = tiny_engine.open_stream()
    try:
        stream.push_audio(pcm)
        reference = await stream.finalize()
    finally:
        stream.close()
    assert reference.words and final.result.words == reference.words
    assert final.result.text == reference.text


def test_word_times_survive_the_wire_at_any_sample_aligned_utterance_start():
    """The server puts word times on the connection clock and the client takes them back to the
    utterance's: the round trip gives the engine's times exactly, whatever sample the utterance
    began on (at 4 wire decimals an offset of 3.00025 s turned 2.08 into 2.0799)."""
    words = (WordTiming("hello", 0.32, 1.44), WordTiming("there", 1.52, 2.08))
    for sample in range(0, 16000 * 20, 7):
        offset = sample / P.SAMPLE_RATE
        event = {
            "audio_start_s": round(offset, P.CLOCK_DECIMALS),
            "words": P.word_times(words, offset),
        }
        assert _words(event) == words, offset
