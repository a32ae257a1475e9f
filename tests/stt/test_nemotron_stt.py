"""NemotronSTTService on the tiny engine in real Pipecat pipelines."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    MetricsFrame,
    STTMetadataFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import STTUsageMetricsData, TTFBMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.tests.utils import SleepFrame, run_test

from services.asr.engine import EngineFullError
from services.asr.nemotron_stt import NemotronSTTService, measure_finalize_latency
from tests.asr_server.tiny import chunks, speechlike_pcm
from tests.stt.harness import LivePipeline

pytestmark = pytest.mark.timeout(90)


def audio_frames(seconds: float, seed: int = 0) -> list[InputAudioRawFrame]:
    return [
        InputAudioRawFrame(audio=piece, sample_rate=16000, num_channels=1)
        for piece in chunks(speechlike_pcm(seconds, seed=seed))
    ]


async def test_interim_and_one_finalized_transcript_per_turn(tiny_engine):
    stt = NemotronSTTService(engine=tiny_engine, ttfs_p99_latency=0.3)
    down, up = await run_test(
        stt,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            *audio_frames(1.5),
            SleepFrame(0.8),
            VADUserStoppedSpeakingFrame(stop_secs=0.2),
            SleepFrame(0.8),
        ],
    )
    interims = [f for f in down if isinstance(f, InterimTranscriptionFrame)]
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert interims, "partial text while the user speaks"
    assert len(finals) == 1 and finals[0].finalized and finals[0].text
    assert finals[0].text.startswith(interims[-1].text[:20])
    # The result holds the whole utterance's words with their times, in order.
    words = finals[0].result.words
    assert words and " ".join(w.word for w in words) == finals[0].result.text.strip()
    assert [w.start_s for w in words] == sorted(w.start_s for w in words)
    assert 0 <= words[0].start_s < words[-1].end_s <= 1.5 + 0.4
    # Audio passes through for the user aggregator's VAD; the VAD frames go on too.
    assert len([f for f in down if isinstance(f, InputAudioRawFrame)]) == 75
    assert any(isinstance(f, VADUserStoppedSpeakingFrame) for f in down)
    metadata = [f for f in down if isinstance(f, STTMetadataFrame)]
    assert metadata and metadata[0].ttfs_p99_latency == 0.3
    assert not [f for f in up if isinstance(f, ErrorFrame)]


async def test_speculative_final_is_discarded_when_speech_resumes(tiny_engine):
    stt = NemotronSTTService(engine=tiny_engine, reset_after_secs=None)
    down, _ = await run_test(
        stt,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            *audio_frames(1.0),
            SleepFrame(0.5),
            VADUserStoppedSpeakingFrame(stop_secs=0.2),
            VADUserStartedSpeakingFrame(),  # speech resumes before the final is back
            *audio_frames(0.6, seed=1),
            SleepFrame(0.5),
            VADUserStoppedSpeakingFrame(stop_secs=0.2),
            SleepFrame(0.8),
        ],
    )
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert len(finals) == 1 and finals[0].finalized
    assert stt.finals_discarded == 1 and stt.finals_pushed == 1


async def test_ttfb_and_usage_metrics(tiny_engine):
    stt = NemotronSTTService(engine=tiny_engine)
    async with LivePipeline(
        [stt], PipelineParams(enable_metrics=True, enable_usage_metrics=True)
    ) as live:
        await live.send(VADUserStartedSpeakingFrame())
        await live.send_audio(speechlike_pcm(1.0), speed=4)
        await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
        assert await live.wait_for(lambda: live.of(TranscriptionFrame))
        await asyncio.sleep(0.1)
    data = [d for f in live.of(MetricsFrame) for d in f.data]
    ttfb = [
        d for d in data if isinstance(d, TTFBMetricsData) and d.processor == stt.name and d.value
    ]
    usage = [d for d in data if isinstance(d, STTUsageMetricsData)]
    assert ttfb and 0.2 <= ttfb[0].value < 5.0  # speech end (VAD stop - 0.2 s) -> final
    assert usage and usage[0].value.audio_seconds == pytest.approx(1.0, abs=0.05)
    assert stt.measured_ttfs_p99 is not None and stt.measured_ttfs_p99 >= 0.2


@pytest.fixture
def engine_hogs(tiny_engine):
    """Every free stream of the shared engine, held open; all closed after the test, whatever
    it asserted, so later tests find the engine empty again."""
    hogs = []
    try:
        while True:
            hogs.append(tiny_engine.open_stream())
    except EngineFullError:
        pass
    yield hogs
    for hog in hogs:
        hog.close()


async def test_full_engine_gives_an_error_frame_and_the_session_goes_on(tiny_engine, engine_hogs):
    stt = NemotronSTTService(engine=tiny_engine, reopen_interval_secs=0.05)
    async with LivePipeline([stt]) as live:
        assert await live.wait_for(lambda: live.of(ErrorFrame, up=True))
        error = live.of(ErrorFrame, up=True)[0]
        assert "capacity" in error.error and not error.fatal
        for hog in engine_hogs:
            hog.close()
        await live.send(VADUserStartedSpeakingFrame())
        await live.send_audio(speechlike_pcm(1.0), speed=4)  # reopens the stream
        await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
        assert await live.wait_for(lambda: live.of(TranscriptionFrame))


async def test_stream_is_freed_when_the_pipeline_ends(tiny_engine):
    before = tiny_engine.stats()["live_streams"]
    stt = NemotronSTTService(engine=tiny_engine)
    async with LivePipeline([stt]) as live:
        await live.send_audio(speechlike_pcm(0.3), speed=8)
        assert tiny_engine.stats()["live_streams"] == before + 1
    assert tiny_engine.stats()["live_streams"] == before


async def test_measure_finalize_latency_reports_the_slowest_final(tiny_engine):
    """The number announced as TTFS p99 is the worst final it timed, not a typical one.

    The engine's scheduler is held (its tick lock) for ``stall`` seconds, as a busy engine
    would be, so one of the three finals it times takes at least that long.
    """
    stall = 1.0
    quick = await asyncio.to_thread(measure_finalize_latency, tiny_engine, runs=3)
    assert 0 < quick < stall, "an idle engine finalizes well within the stall"

    lock = tiny_engine._tick_lock
    await asyncio.to_thread(lock.acquire)
    held_at = time.perf_counter()
    release = threading.Timer(stall, lock.release)
    release.start()
    try:
        stalled = await asyncio.to_thread(measure_finalize_latency, tiny_engine, runs=3)
    finally:
        release.join()
    elapsed = time.perf_counter() - held_at
    # The stalled final counts whole (a mean of three would be a third of it), and nothing
    # beyond the measurement's own run time is reported.
    assert stall - 0.05 <= stalled <= elapsed


async def test_sessions_share_one_engine_process_that_restarts_after_dying(tiny_nemo):
    """``engine_process=True``: the engine runs in one child process for every session."""
    from services.asr.engine import EngineConfig, EngineProcess

    config = EngineConfig(model=str(tiny_nemo), device="cpu", dtype="fp32", chunk_ms=160)
    stts = [
        NemotronSTTService(
            engine_config=config,
            engine_process=True,
            reset_after_secs=None,
            reopen_interval_secs=0.2,
        )
        for _ in range(2)
    ]
    pcm = speechlike_pcm(1.2)

    async def turn(live: LivePipeline, stt: NemotronSTTService) -> None:
        pushed = stt.finals_pushed
        await live.send(VADUserStartedSpeakingFrame())
        await live.send_audio(pcm)
        await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
        assert await live.wait_for(lambda: stt.finals_pushed == pushed + 1, timeout=30)

    engine = None
    try:
        # The first session's start waits for the engine process to load the model.
        async with (
            LivePipeline([stts[0]], start_timeout=120) as first,
            LivePipeline([stts[1]], start_timeout=120) as second,
        ):
            await asyncio.gather(turn(first, stts[0]), turn(second, stts[1]))
            engine = stts[0].engine
            assert isinstance(engine, EngineProcess) and stts[1].engine is engine
            assert engine.pid != os.getpid()
            finals = [
                f
                for live in (first, second)
                for f in live.down.frames
                if isinstance(f, TranscriptionFrame)
            ]
            # Same audio, same engine: the same text for both sessions.
            assert len(finals) == 2 and finals[0].text and finals[0].text == finals[1].text

            # The engine process dies: the session reports it and goes on; a new process
            # loads in the background and the next turn is transcribed again.
            os.kill(engine.pid, signal.SIGKILL)
            assert await first.wait_for(
                lambda: any(isinstance(f, ErrorFrame) for f in first.up.frames), timeout=30
            )
            await first.send_audio(speechlike_pcm(0.4, seed=3))
            assert await first.wait_for(
                lambda: stts[0].engine is not engine and not stts[0].engine.is_shutdown, timeout=60
            )
            await first.send_audio(speechlike_pcm(0.4, seed=4))  # reopens its stream
            await turn(first, stts[0])
    finally:
        for candidate in {engine, stts[0].engine}:
            if isinstance(candidate, EngineProcess):
                await candidate.aclose()
