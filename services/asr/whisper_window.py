"""Whisper over a shorter window: a voice turn's segment encoded over 15 s, not 30 s.

faster-whisper pads every segment to Whisper's 30 s window (3,000 feature frames) and encodes
all of it, so a two-second question costs as much encoder work as a half-minute monologue: on
two CPU cores that is most of tiny.en's ~0.4 s per utterance. The encoder's attention is
global, so a shorter window is not free of risk: Whisper was trained on 30 s windows, and below
~10 s it starts looping on short prompts (measured: 7-10 s windows repeated one-word prompts).
At 15 s the Asterisk prompt set decodes as well as at 30 s (WER 21.9% vs 22.7%, 200 prompts)
in ~40% of the time.

:class:`WindowedWhisperModel` is a ``faster_whisper.WhisperModel`` whose ``transcribe`` encodes
a segment that fits the window over that window, decodes it once, greedily, and redoes it over
the full 30 s when a segment's text compresses like a loop (ratio above 2.4, Whisper's own
threshold). Longer segments take the normal path.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from faster_whisper import WhisperModel

SAMPLE_RATE = 16000
# Whisper's feature frames: 10 ms each, 3,000 in its 30 s window.
FRAMES_PER_SEC = 100
FULL_WINDOW_SECS = 30.0
# Whisper's own threshold for a looping (repetitive) transcript (openai/whisper transcribe()).
LOOP_COMPRESSION_RATIO = 2.4


class WindowedWhisperModel(WhisperModel):
    """A ``WhisperModel`` that encodes short segments over ``window_secs`` instead of 30 s.

    Args:
        *args: As ``WhisperModel``.
        window_secs: Encoder window for segments that fit it (0 or >= 30: always 30 s).
        **kwargs: As ``WhisperModel``.
    """

    def __init__(self, *args: Any, window_secs: float = 15.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.window_secs = window_secs
        # Per calling thread: the frames the current transcribe() encodes (None: all of them).
        self._window = threading.local()
        # Short segments redone over 30 s because the short window looped.
        self.redone = 0

    @property
    def window_frames(self) -> int | None:
        """Feature frames of the short window, or None when it is off."""
        if not 0 < self.window_secs < FULL_WINDOW_SECS:
            return None
        return int(self.window_secs * FRAMES_PER_SEC)

    def encode(self, features: np.ndarray):
        """Encode ``features`` ([n_mels, frames] or [batch, n_mels, frames]).

        Inside a short-window ``transcribe`` only the first ``window_frames`` are encoded: the
        rest is the padding faster-whisper adds up to 30 s (``pad_or_trim``).
        """
        frames = getattr(self._window, "frames", None)
        if frames is not None and features.shape[-1] > frames:
            features = np.ascontiguousarray(features[..., :frames])
        return super().encode(features)

    def transcribe(self, audio: np.ndarray, **kwargs: Any):
        """Transcribe float32 16 kHz ``audio``; returns (list of segments, info).

        Segments come as a list, not faster-whisper's lazy generator: the window must be in
        force while they are decoded, and the loop check reads them all.
        """
        frames = self.window_frames
        # The window must hold the audio and the decoder's margin (a few frames of padding).
        fits = frames is not None and len(audio) / SAMPLE_RATE <= self.window_secs - 0.5
        if not fits:
            segments, info = super().transcribe(audio, **kwargs)
            return list(segments), info
        # One greedy pass at temperature 0: faster-whisper's temperature fallback would decode
        # again at the short window; a loop is redone over the full window instead.
        short_kwargs = {**kwargs, "temperature": 0.0}
        segments, info = self._decode_in_window(audio, frames, short_kwargs)
        if any(s.compression_ratio > LOOP_COMPRESSION_RATIO for s in segments):
            self.redone += 1
            segments, info = super().transcribe(audio, **kwargs)
            segments = list(segments)
        return segments, info

    def _decode_in_window(self, audio: np.ndarray, frames: int, kwargs: dict[str, Any]):
        self._window.frames = frames
        try:
            segments, info = super().transcribe(audio, **kwargs)
            return list(segments), info
        finally:
            self._window.frames = None
