"""Shared test helpers: an engine on the tiny test model, and test audio.

The model is the engine tests' ``tiny_nemo`` fixture (tests/asr/conftest.py): a real ``.nemo``
whose random weights emit garbage but deterministic text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


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
