"""NemotronSTTService finals equal NeMo's offline transcript in every chunk mode."""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from services.asr.engine import ASREngine, EngineConfig
from services.asr.engine.events import to_float32
from services.asr.nemotron_stt import NemotronSTTService

# offline, reference_model: the engine tests' reference (NeMo's own calls, a separate model copy).
from tests.asr.conftest import SR, Offline, babble, offline, reference_model  # noqa: F401
from tests.asr_server.tiny import chunks

pytestmark = pytest.mark.timeout(90)

RIGHT_CONTEXT = {80: 0, 160: 1, 560: 6, 1120: 13}


@pytest.fixture(params=sorted(RIGHT_CONTEXT), ids=lambda ms: f"{ms}ms")
def mode_engine(request, tiny_nemo):
    """An engine on the tiny model in one chunk mode (default encoder), shut down afterwards."""
    engine = ASREngine(EngineConfig(model=tiny_nemo, device="cpu", chunk_ms=request.param))
    yield engine
    engine.shutdown()


class StreamSpy:
    """Records what the service hands the engine streams it opens, and each final it gets.

    The expected text must come from exactly the samples the final covers, which is what the
    service pushed before asking for it (it may keep or re-send audio around the VAD stop).
    """

    def __init__(self, engine: ASREngine) -> None:
        self.streams = []
        self.pushed: list[np.ndarray] = []
        self.finals: list[tuple[int, object]] = []  # (samples pushed at the request, event)
        open_stream = engine.open_stream

        def spy_open(*args, **kwargs):
            stream = open_stream(*args, **kwargs)
            push, finalize = stream.push_audio, stream.finalize

            def spy_push(pcm) -> None:
                push(pcm)
                self.pushed.append(to_float32(pcm))  # the engine's own conversion

            async def spy_finalize():
                n_samples = self.n_pushed
                event = await finalize()
                self.finals.append((n_samples, event))
                return event

            stream.push_audio, stream.finalize = spy_push, spy_finalize
            self.streams.append(stream)
            return stream

        engine.open_stream = spy_open

    @property
    def n_pushed(self) -> int:
        return sum(len(piece) for piece in self.pushed)

    def audio(self, n_samples: int) -> np.ndarray:
        return np.concatenate(self.pushed)[:n_samples] if n_samples else np.zeros(0, np.float32)


async def test_final_equals_offline_transcript_at_the_modes_right_context(
    mode_engine: ASREngine,
    offline: Offline,  # noqa: F811
):
    """One utterance, VAD stop: one final, the offline text of the padded audio sent."""
    chunk_ms = mode_engine.chunk_ms
    right_context = RIGHT_CONTEXT[chunk_ms]
    # 1.5 s of seed 0: the padded lengths differ across modes, and so do the texts at R=0/1/6/13.
    float_audio = babble(1.5, seed=0)
    pcm = (np.clip(float_audio, -1, 1) * 32767).astype("<i2").tobytes()
    spy = StreamSpy(mode_engine)
    stt = NemotronSTTService(engine=mode_engine, reset_after_secs=None)

    down, up = await run_test(
        stt,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            *[
                InputAudioRawFrame(audio=piece, sample_rate=SR, num_channels=1)
                for piece in chunks(pcm)
            ],
            # Let the live steps catch up, so that the final only runs the tail in time.
            SleepFrame(1.0),
            VADUserStoppedSpeakingFrame(stop_secs=0.2),
            # The final must be back before run_test's EndFrame cancels it.
            SleepFrame(1.5),
        ],
    )

    assert not [f for f in up if isinstance(f, ErrorFrame)]
    finals = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert len(finals) == 1 and finals[0].finalized
    assert len(spy.streams) == 1 and len(spy.finals) == 1
    n_samples, event = spy.finals[0]
    # The final covers the whole utterance as sent, unchanged, and nothing after it.
    sent = to_float32(pcm)
    assert n_samples == len(sent) == spy.n_pushed
    np.testing.assert_array_equal(spy.audio(n_samples), sent)
    assert event.utterance == 0 and event.audio_end_s == pytest.approx(n_samples / SR)

    padded = np.zeros(mode_engine.padded_length(n_samples), np.float32)
    padded[:n_samples] = spy.audio(n_samples)
    expected = offline.transcript(padded, right_context)
    assert expected, "the tiny model should emit text (see tests/asr/conftest.py)"
    # The audio must tell the modes apart, or a service decoding in the wrong one would pass.
    others = {
        r: offline.transcript(padded, r) for r in RIGHT_CONTEXT.values() if r != right_context
    }
    assert expected not in others.values(), f"the audio does not tell R={right_context} apart"
    assert event.text == expected
    assert finals[0].text == expected

    # The service closed its stream at the pipeline's end.
    assert spy.streams[0].closed and mode_engine.stats()["live_streams"] == 0
