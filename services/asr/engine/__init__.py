"""Batched cache-aware streaming ASR engine (no Pipecat imports).

Usage::

    engine = get_engine(EngineConfig(model="nvidia/nemotron-speech-streaming-en-0.6b"))
    stream = engine.open_stream()
    stream.push_audio(pcm_bytes)          # int16 LE mono 16 kHz
    async for event in stream.events():   # partial transcripts
        ...
    final = await stream.finalize()       # speculative final; stream.reset() to accept it
    stream.close()
"""

from .config import DEFAULT_MODEL, EngineConfig
from .engine import (
    SAMPLE_RATE,
    ASREngine,
    ASRStream,
    EngineFullError,
    EngineOverloadedError,
    StreamClosedError,
    TranscriptEvent,
    get_engine,
)
from .loader import ModelLoadError

__all__ = [
    "DEFAULT_MODEL",
    "SAMPLE_RATE",
    "ASREngine",
    "ASRStream",
    "EngineConfig",
    "EngineFullError",
    "EngineOverloadedError",
    "ModelLoadError",
    "StreamClosedError",
    "TranscriptEvent",
    "get_engine",
]
