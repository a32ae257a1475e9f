"""Shared test helpers: a tiny random-weight cache-aware RNNT ``.nemo`` and test audio.

The model comes from the engine's own ``services.asr.engine.arch.build_model`` (the same recipe
its tests use), saved with ``save_to`` so it loads through the real ``.nemo`` path. A negative
blank bias makes the random weights emit text (garbage, but deterministic) on every step, so
partial transcripts keep growing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
BLANK_BIAS = -5.0


def build_tiny_nemo(path: Path, *, seed: int = 0) -> Path:
    """Write the tiny model to ``path`` and return it."""
    from services.asr.engine.arch import build_model

    build_model("tiny", seed=seed, blank_bias=BLANK_BIAS).save_to(str(path))
    return path


def open_tiny_engine(path: Path, *, max_streams: int = 128):
    """A CPU fp32 engine (160 ms chunks) on the tiny model; call ``shutdown()`` when done."""
    from services.asr.engine import ASREngine, EngineConfig

    return ASREngine(
        EngineConfig(
            model=str(path), device="cpu", dtype="fp32", chunk_ms=160, max_streams=max_streams
        )
    )


def speechlike_pcm(seconds: float, *, seed: int = 0) -> bytes:
    """Int16 mono 16 kHz noise with a syllable-rate envelope (the tiny model needs no words)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    audio = rng.standard_normal(n) * 0.1 * envelope
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def chunks(pcm: bytes, ms: int = 20) -> list[bytes]:
    """Split PCM16 into ``ms`` pieces (Pipecat transports deliver 20 ms frames)."""
    size = SAMPLE_RATE * 2 * ms // 1000
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]
