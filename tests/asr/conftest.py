"""Fixtures for the ASR engine tests: a tiny random cache-aware RNNT saved as a real .nemo."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from services.asr.engine import ASREngine, EngineConfig
from services.asr.engine.arch import babble, build_model  # noqa: F401 (babble: re-exported)

SR = 16000

# One intra-op thread: the test machines have 2 shared, busy cores, where OpenMP worker threads
# spin-wait on each other and make tiny-model steps 10-50x slower. The engine itself never
# changes process-wide torch settings.
torch.set_num_threads(1)


def make_joint_emit(model, generator: torch.Generator | None = None) -> None:
    """Make a random model's joint emit text: a wider output layer, blank biased to +3."""
    with torch.no_grad():
        out = model.joint.joint_net[-1]
        torch.nn.init.normal_(out.weight, std=1.0, generator=generator)
        out.bias.zero_()
        out.bias[model.decoder.blank_idx] = 3.0
        model.joint.enc.weight.mul_(3.0)
        model.joint.pred.weight.mul_(3.0)


@pytest.fixture(scope="session")
def tiny_nemo(tmp_path_factory) -> str:
    """Path of a tiny random-weight model saved with ``save_to`` (loaded like the real one).

    Random weights almost always pick blank, which gives empty transcripts. The joint is made
    to emit: its output layer is re-drawn with a larger spread, the blank logit is biased to +3
    (so blank still wins often) and the predictor's weight on the joint is raised. The text is
    garbage ("mmpmpp...") but deterministic and dependent on the audio, which is all the
    streaming == offline checks need.
    """
    model = build_model("tiny", seed=0)
    make_joint_emit(model)
    path = tmp_path_factory.mktemp("asr") / "tiny_rnnt.nemo"
    model.save_to(str(path))
    return str(path)


@pytest.fixture(scope="session")
def reference_model(tiny_nemo):
    """A separate copy of the tiny model for offline references."""
    from nemo.collections.asr.models import ASRModel

    return ASRModel.restore_from(tiny_nemo, map_location="cpu").eval()


class Offline:
    """Offline (whole-utterance) encoding and greedy decoding with NeMo's own calls."""

    def __init__(self, model) -> None:
        self.model = model

    @torch.inference_mode()
    def encode(self, audio: np.ndarray, right_context: int) -> torch.Tensor:
        """Encoder output ``[d_model, T]`` of the whole audio with att_context [70, R]."""
        m = self.model
        m.encoder.set_default_att_context_size([70, right_context])
        signal = torch.from_numpy(audio)[None]
        mel, mel_len = m.preprocessor(input_signal=signal, length=torch.tensor([signal.shape[1]]))
        enc, enc_len = m.encoder(audio_signal=mel, length=mel_len)
        return enc[0, :, : int(enc_len[0])]

    @torch.inference_mode()
    def decode(self, encoded: torch.Tensor) -> str:
        """Greedy transcript of encoder frames ``[d_model, T]``."""
        hyps = self.model.decoding.rnnt_decoder_predictions_tensor(
            encoder_output=encoded[None],
            encoded_lengths=torch.tensor([encoded.shape[1]]),
            return_hypotheses=True,
        )
        return hyps[0].text

    def transcript(self, audio: np.ndarray, right_context: int, frames: int | None = None) -> str:
        enc = self.encode(audio, right_context)
        return self.decode(enc if frames is None else enc[:, :frames])


@pytest.fixture(scope="session")
def offline(reference_model) -> Offline:
    return Offline(reference_model)


@pytest.fixture
def make_engine(tiny_nemo):
    """Factory of CPU engines on the tiny model; all are shut down after the test."""
    engines: list[ASREngine] = []

    def make(**kwargs) -> ASREngine:
        kwargs.setdefault("device", "cpu")
        kwargs.setdefault("model", tiny_nemo)
        engine = ASREngine(EngineConfig(**kwargs))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def wait_steps(engine: ASREngine, stream, mel_frames: int, what: str = "live steps") -> None:
    """Wait until ``stream``'s live steps reached ``mel_frames`` and their tick committed.

    Positions move when a tick's steps are queued, before its results are committed (so the
    next tick can be planned meanwhile); the tick holds ``_tick_lock`` until it committed.
    """
    wait_until(lambda: stream._state.mel_pos == mel_frames, what=what)
    with engine._tick_lock:
        pass


def live_steps_for(engine: ASREngine, n_samples: int) -> int:
    """Mel frames the live stream will have consumed once ``n_samples`` samples are pushed."""
    sched = engine._scheduler
    pos = 0
    while True:
        n = sched.chunk_first if pos == 0 else sched.chunk
        if sched.features.samples_needed(pos + n) > n_samples:
            return pos
        pos += n
