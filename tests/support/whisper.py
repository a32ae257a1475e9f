"""The ``whisper`` STT backend's settings and real speech as 20 ms input frames."""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import InputAudioRawFrame

from agent.config import AgentSettings

SAMPLE_RATE = 16000
# 20 ms of 16 kHz PCM16, as the transports deliver it.
FRAME_BYTES = 320 * 2


def whisper_settings(**stt) -> AgentSettings:
    """Default settings with ``stt.backend = "whisper"`` and the given ``stt`` fields."""
    settings = AgentSettings()
    settings.stt.backend = "whisper"
    for key, value in stt.items():
        setattr(settings.stt, key, value)
    return settings


def audio_frames(pcm: bytes | np.ndarray) -> list[InputAudioRawFrame]:
    """``pcm`` (int16) as 20 ms input frames at 16 kHz, a partial last frame left out."""
    data = pcm.tobytes() if isinstance(pcm, np.ndarray) else pcm
    return [
        InputAudioRawFrame(audio=data[i : i + FRAME_BYTES], sample_rate=SAMPLE_RATE, num_channels=1)
        for i in range(0, len(data) - FRAME_BYTES + 1, FRAME_BYTES)
    ]
