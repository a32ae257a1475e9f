"""What the engine hands its callers: transcript events, errors, audio conversion.

Kept free of torch and NeMo so that processes which only talk to an engine (the ASR server's
front end, clients) can import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000


class EngineFullError(RuntimeError):
    """``open_stream`` was called with ``max_streams`` streams already open."""


class EngineOverloadedError(RuntimeError):
    """A stream is further behind real time than ``max_backlog_s``: its audio was refused."""


class StreamClosedError(RuntimeError):
    """The stream (or its engine) is closed."""


@dataclass(frozen=True)
class WordTiming:
    """One word of a transcript and when it was said.

    Attributes:
        word: the word as the model's decoding groups tokens into words.
        start_s: its first token's encoder frame, seconds on the stream clock (0 = open/reset).
        end_s: the end of its last token's frame, same clock.
    """

    word: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class TranscriptEvent:
    """A transcript of the current utterance of one stream.

    Attributes:
        stream_id: the stream's id.
        text: the whole current utterance so far (not a delta).
        is_final: True for the result of ``finalize``.
        audio_start_s: start of the audio covered, seconds on the stream clock (0 = open/reset).
        audio_end_s: end of the audio covered, seconds on the stream clock.
        latency_s: finals: finalize request -> result; partials: the chunk's audio complete ->
            event; None when unknown.
        utterance: index of the utterance (0 at open, +1 per ``reset``).
        words: finals: every word of the utterance with its times (from the RNNT token
            frames); None on partials.
    """

    stream_id: str
    text: str
    is_final: bool
    audio_start_s: float
    audio_end_s: float
    latency_s: float | None
    utterance: int
    words: tuple[WordTiming, ...] | None = None


def _checked(pcm: bytes | bytearray | memoryview | np.ndarray) -> memoryview | np.ndarray:
    """Pushed audio, checked: a byte view of int16 samples, or a 1-D int16/float array.

    Raises:
        ValueError: odd byte length, wrong dimensions, dtype or type.
    """
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        raw = memoryview(pcm).cast("B")
        if raw.nbytes % 2:
            raise ValueError(f"PCM bytes must be int16 (even length), got {raw.nbytes} bytes")
        return raw
    if isinstance(pcm, np.ndarray):
        if pcm.ndim != 1:
            raise ValueError(f"audio array must be 1-D (mono), got shape {pcm.shape}")
        if pcm.dtype not in (np.int16, np.float32, np.float64):
            raise ValueError(f"audio array dtype must be float32 or int16, got {pcm.dtype}")
        return pcm
    raise ValueError(f"audio must be bytes or a numpy array, got {type(pcm).__name__}")


def _check_finite(samples: np.ndarray) -> None:
    """Reject NaN and infinite samples (one vectorised pass; float arrays only).

    One such sample spreads through the mel features and the encoder's attention and cache,
    spoiling the rest of the stream's utterance; int16 audio cannot carry one.

    Raises:
        ValueError: how many samples are not finite, and what to send instead.
    """
    finite = np.isfinite(samples)
    if not finite.all():
        bad = samples.size - int(np.count_nonzero(finite))
        raise ValueError(
            f"audio has {bad} non-finite sample(s) (NaN or Inf) out of {samples.size}; "
            "send finite float samples in [-1, 1] or int16 PCM"
        )


def to_float32(pcm: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Convert pushed audio to float32 samples in [-1, 1].

    Args:
        pcm: int16 little-endian mono bytes, or a 1-D float32/float64/int16 array.

    Raises:
        ValueError: odd byte length, wrong dimensions, dtype or type; NaN or infinite samples.
    """
    audio = _checked(pcm)
    if isinstance(audio, memoryview):
        return np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768.0
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    samples = audio.astype(np.float32)  # a copy: the caller may reuse its buffer
    _check_finite(samples)  # after the cast, which turns float64 past float32's range into Inf
    return samples


def to_pcm16(pcm: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    """Convert pushed audio to int16 little-endian bytes (floats are clipped to [-1, 1)).

    Raises:
        ValueError: as :func:`to_float32`.
    """
    audio = _checked(pcm)
    if isinstance(audio, memoryview):
        return pcm if isinstance(pcm, bytes) else audio.tobytes()
    if audio.dtype == np.int16:
        return audio.astype("<i2").tobytes()
    _check_finite(audio)  # else clipping makes Inf full scale and the cast makes NaN arbitrary
    return (np.clip(audio, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
