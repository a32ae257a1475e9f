"""Leading-silence trimming: a voice that opens each sentence with ~0.3 s of silence adds that
much to every turn's voice-to-voice latency."""

from __future__ import annotations

import numpy as np


def trim_leading_silence(
    audio: np.ndarray,
    sample_rate: int,
    *,
    threshold_dbfs: float = -45.0,
    keep_s: float = 0.0,
    window_s: float = 0.005,
) -> np.ndarray:
    """Drop float audio's leading silence, keeping ``keep_s`` before the first sound.

    Args:
        audio: Mono float samples in [-1, 1].
        sample_rate: Samples per second.
        threshold_dbfs: A window whose peak is below this level counts as silence.
        keep_s: Silence kept before the first sound. The window holding the first sound is
            kept whole, so up to ``window_s`` before it stays anyway and no onset is clipped.
        window_s: Analysis window.

    Returns:
        A view of ``audio`` starting shortly before its first sound (all of it if silent).
    """
    window = max(1, int(window_s * sample_rate))
    usable = len(audio) // window * window
    if usable == 0:
        return audio
    peaks = np.abs(audio[:usable]).reshape(-1, window).max(axis=1)
    loud = np.flatnonzero(peaks > 10 ** (threshold_dbfs / 20))
    if loud.size == 0:
        return audio
    start = max(0, loud[0] * window - int(keep_s * sample_rate))
    return audio[start:]
