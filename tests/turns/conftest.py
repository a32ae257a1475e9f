"""Helpers for the turn tests: real recorded speech, the assembled pipeline, timed frames."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from pipecat.frames.frames import Frame, InputAudioRawFrame

from pipelines.settings import AgentSettings
from tests.e2e.speech import Utterance, load_utterances
from tests.stt.harness import LivePipeline

RATE = 16000
FRAME_BYTES = RATE // 50 * 2  # 20 ms of PCM16


@pytest.fixture(scope="session")
def speech() -> dict[str, Utterance]:
    """The real recordings of the speech cache (scripts/fetch_speech.py), by id."""
    try:
        found = load_utterances()
    except RuntimeError as exc:
        pytest.skip(f"real speech unavailable: {exc}")
    if not found:
        pytest.skip("no real speech cached (scripts/fetch_speech.py)")
    return {u.id: u for u in found}


def pcm_of(utterance: Utterance, *, trim: bool = False) -> bytes:
    """The recording as 16 kHz mono PCM16; ``trim``: only its first to last voiced frame."""
    from tests.e2e.voice_client import load_audio, voiced_bounds

    audio = load_audio(utterance.path, RATE)
    if trim:
        bounds = voiced_bounds(audio)
        if bounds is not None:
            audio = audio[bounds[0] : bounds[1]]
    return audio.tobytes()


def silence(seconds: float) -> bytes:
    """PCM16 silence."""
    return bytes(int(seconds * RATE) * 2)


async def play(live: LivePipeline, pcm: bytes) -> None:
    """Send PCM16 as 20 ms input frames in real time (the VAD and turn timers run on it)."""
    start = time.monotonic()
    for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        await live.send(InputAudioRawFrame(pcm[i : i + FRAME_BYTES], RATE, 1))
        delay = start + (i // FRAME_BYTES + 1) * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def voiced_end(pcm: bytes) -> float:
    """Seconds into ``pcm`` where its last voiced 20 ms frame ends (RMS above ~-45 dBFS)."""
    samples = np.frombuffer(pcm, np.int16).astype(np.float64)
    frames = samples[: len(samples) // 320 * 320].reshape(-1, 320)
    voiced = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) >= 180.0)
    return float((voiced[-1] + 1) * 0.02) if voiced.size else 0.0


@dataclass
class Timeline:
    """When frames passed a processor (``time.time()``), recorded by its event hooks."""

    seen: list[tuple[float, Frame]] = field(default_factory=list)

    def hook(self, processor, event: str = "on_before_process_frame") -> None:
        """Record every frame ``processor`` processes (or pushes, with ``on_after_push_frame``)."""

        async def record(_processor, frame):
            self.seen.append((time.time(), frame))

        processor.add_event_handler(event, record)

    def of(self, kind: type) -> list[tuple[float, Frame]]:
        """Times and frames of one kind."""
        return [(t, f) for t, f in self.seen if isinstance(f, kind)]

    def first(self, kind: type, after: float = 0.0) -> float | None:
        """Time of the first frame of ``kind`` at or after ``after``."""
        return next((t for t, f in self.seen if isinstance(f, kind) and t >= after), None)


def settings_with(**overrides) -> AgentSettings:
    """CPU-profile settings with dotted-key overrides (no environment, no .env)."""
    from agent.config import load_config

    return load_config(profile="cpu", overrides=overrides, env={}, dotenv_path=None).settings
