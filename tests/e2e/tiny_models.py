"""Tiny NeMo models for the nvidia-profile end-to-end tests, saved as real ``.nemo`` files.

The Magpie is the TTS tests' recipe (``tests/tts/tiny_magpie.py``). The Nemotron is the engine
tests' tiny cache-aware RNNT (``services/asr/engine/arch.py``), taught in a few seconds to hear
speech: the random-weight one of ``tests/asr/conftest.py`` writes text on silence too, above all
in the first frames of every stream. The STT starts a fresh stream for each utterance when a
turn ends, so that text arrived as an interim transcript while the bot began its answer, and
Pipecat took it for the user barging in: the answer was cut before it played. A real model
writes nothing on silence. This one is trained (frame by frame, cross-entropy, on synthetic
syllable-paced noise bursts over silence and faint noise) to emit ``a`` on voiced frames and
blank otherwise, one symbol per frame at most. Its transcripts are ``aaaa...``; nothing
should be asserted about their words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
ENCODER_FRAME = 1280  # samples per encoder frame: 80 ms (8x subsampling of 10 ms mel frames)
VOICED_LABEL = 1  # "a" in the tiny char vocabulary (index 0 is the space)


def _speechlike(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a syllable-rate envelope (2.5-5 bursts a second)."""
    t = np.arange(n) / SAMPLE_RATE
    rate = rng.uniform(2.5, 5.0)
    envelope = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 6)), 0, None) ** 0.5
    return rng.standard_normal(n) * envelope


def _example(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Quiet, a voiced stretch, quiet; and which 80 ms frames are voiced."""
    spans = ((0.2, 1.5), (0.8, 2.5), (0.8, 2.0))  # seconds: lead, voiced, tail
    lead, body, tail = (int(rng.uniform(low, high) * SAMPLE_RATE) for low, high in spans)
    # Digital silence (what a WebRTC client sends between utterances) and faint room noise.
    audio = rng.standard_normal(lead + body + tail) * rng.choice([0.0, 1e-4, 1e-3, 3e-3])
    audio[lead : lead + body] += _speechlike(body, rng) * rng.uniform(0.03, 0.3)
    frames = len(audio) // ENCODER_FRAME
    rms = np.sqrt((audio[: frames * ENCODER_FRAME].reshape(frames, ENCODER_FRAME) ** 2).mean(1))
    return audio.astype(np.float32), rms > 0.01


def build_hearing_tiny_nemotron(path: str | Path, *, steps: int = 100) -> Path:
    """Train and save the tiny RNNT that emits only on voiced audio (10-15 s on 2 cores)."""
    import torch

    # One intra-op thread: on a few busy cores OpenMP workers spin-wait on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_and_save(Path(path), steps)
    finally:
        torch.set_num_threads(threads)


def _train_and_save(path: Path, steps: int) -> Path:
    import torch
    from nemo.collections.asr.models import EncDecRNNTModel
    from omegaconf import OmegaConf

    from services.asr.engine.arch import model_config

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = model_config("tiny")
    config["decoding"]["greedy"]["max_symbols"] = 1  # at most one "a" per 80 ms frame
    model = EncDecRNNTModel(cfg=OmegaConf.create(config))
    # Trained in the agent's default chunk mode (160 ms); the offline pass equals streaming.
    model.encoder.set_default_att_context_size([70, 1])
    blank = model.decoder.blank_idx
    data = [_example(rng) for _ in range(16)]
    signal = torch.zeros(len(data), max(len(a) for a, _ in data))
    for i, (audio, _) in enumerate(data):
        signal[i, : len(audio)] = torch.from_numpy(audio)
    lengths = torch.tensor([len(a) for a, _ in data])
    # The joint also sees the predictor's state: after no token, and after a few histories,
    # so silence stays blank mid-utterance too.
    histories = [None] + [torch.tensor([[t]]) for t in range(0, blank, 3)]
    histories += [torch.from_numpy(rng.integers(0, blank, (1, 3))) for _ in range(6)]
    trained = [p for name, p in model.named_parameters() if not name.startswith("preprocessor")]
    optimizer = torch.optim.Adam(trained, lr=5e-3)
    model.train()
    for _ in range(steps):
        mel, mel_len = model.preprocessor(input_signal=signal, length=lengths)
        encoded, encoded_len = model.encoder(audio_signal=mel, length=mel_len)
        states = torch.stack(
            [
                model.decoder.predict(h, state=None, add_sos=True, batch_size=1)[0][0, -1]
                for h in histories
            ]
        )
        hidden = model.joint.enc(encoded.transpose(1, 2))[:, :, None] + model.joint.pred(states)
        logits = model.joint.joint_net(hidden)  # [batch, frames, states, vocab + blank]
        losses = []
        for i, (_, voiced) in enumerate(data):
            frames = min(int(encoded_len[i]), len(voiced))
            target = torch.full((frames,), blank, dtype=torch.long)
            target[torch.from_numpy(voiced[:frames])] = VOICED_LABEL
            row = logits[i, :frames]
            losses.append(
                torch.nn.functional.cross_entropy(
                    row.reshape(-1, row.shape[-1]), target.repeat_interleave(row.shape[1])
                )
            )
        optimizer.zero_grad()
        torch.stack(losses).mean().backward()
        optimizer.step()
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(path))
    return path
