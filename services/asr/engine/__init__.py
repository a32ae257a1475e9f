"""Batched cache-aware streaming ASR engine (no Pipecat imports).

Usage::

    engine = get_engine(EngineConfig(model="nvidia/nemotron-speech-streaming-en-0.6b"))
    stream = engine.open_stream()
    stream.push_audio(pcm_bytes)          # int16 LE mono 16 kHz
    async for event in stream.events():   # partial transcripts
        ...
    final = await stream.finalize()       # speculative final; stream.reset() to accept it
    stream.close()

``EngineProcess`` runs the same engine in a child process behind the same interface.

Names are imported on first use: a process that only talks to an engine in another process
(the ASR server's front end) never imports torch or NeMo.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_MODEL": ".config",
    "EngineConfig": ".config",
    "SAMPLE_RATE": ".events",
    "EngineFullError": ".events",
    "EngineOverloadedError": ".events",
    "StreamClosedError": ".events",
    "TranscriptEvent": ".events",
    "ASREngine": ".engine",
    "ASRStream": ".engine",
    "get_engine": ".engine",
    "ModelLoadError": ".loader",
    "EngineProcess": ".process",
    "shared_engine_process": ".process",
    "prespawn_engine_process": ".process",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
