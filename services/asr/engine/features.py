"""Exact incremental log-mel features.

With ``center=True`` STFT, mel frame ``f`` is a window of ``win_length`` samples centred on
``f * hop``. So frames ``[a, b)`` depend only on samples ``[a*hop - win/2 - 1, (b-1)*hop + win/2)``
(the extra sample feeds pre-emphasis). Running the preprocessor on samples
``[a*hop - k*hop, b*hop + lookahead)`` and keeping columns ``k .. k + (b-a)`` gives exactly the
offline frames (verified max difference 0.0 for the 16 kHz, 10 ms hop, 25 ms window models:
``k = 2``, ``lookahead = 40`` samples = 2.5 ms). Samples before the stream start or after the
audio known to a final are zeros, which is what the offline STFT's constant padding sees too.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class IncrementalMel:
    """Computes mel frames ``[a, b)`` of many streams from just the audio they need."""

    def __init__(self, preprocessor, device: torch.device) -> None:
        featurizer = preprocessor.featurizer
        self._preprocessor = preprocessor
        self.device = device
        self.hop = int(featurizer.hop_length)
        self.win = int(featurizer.win_length)
        self.n_mels = int(featurizer.nfilt)
        self.sample_rate = int(getattr(featurizer, "sample_rate", 16000))
        if getattr(featurizer, "exact_pad", False):
            raise ValueError("exact_pad preprocessors are not supported by incremental features")
        # Frames needed on the left so that pre-emphasis and the first window see real samples.
        self.lookback_frames = math.ceil((self.win // 2 + 1) / self.hop)
        self.lookback = self.lookback_frames * self.hop
        # Samples needed after frame b's start so that frame b-1's window is complete.
        self.lookahead = max(self.win // 2 - self.hop, 0)

    def window(self, a: int, b: int) -> tuple[int, int]:
        """Sample range ``[lo, hi)`` that frames ``[a, b)`` depend on."""
        return a * self.hop - self.lookback, b * self.hop + self.lookahead

    def samples_needed(self, b: int) -> int:
        """Samples a stream must have so that frames up to ``b`` (exclusive) are exact."""
        return b * self.hop + self.lookahead

    def window_length(self, n_frames: int) -> int:
        """Length in samples of the window for ``n_frames`` frames."""
        return n_frames * self.hop + self.lookback + self.lookahead

    @torch.inference_mode()
    def compute(self, windows: np.ndarray, n_frames: int) -> torch.Tensor:
        """Mel frames for a batch of equal-length sample windows.

        Args:
            windows: float32 ``[B, window_length(n_frames)]`` (array or CPU tensor) from
                ``window(a, a + n_frames)``.
            n_frames: frames wanted per row.

        Returns:
            float32 ``[B, n_mels, n_frames]`` on the engine device.
        """
        batch, length = windows.shape
        if length != self.window_length(n_frames):
            raise ValueError(f"window of {length} samples does not give {n_frames} frames")
        if isinstance(windows, np.ndarray):
            windows = torch.from_numpy(windows)
        signal = windows.to(self.device, non_blocking=True)
        lengths = torch.full((batch,), length, dtype=torch.long, device=self.device)
        # The preprocessor must stay fp32 even when the encoder runs under bf16 autocast.
        with torch.autocast(self.device.type, enabled=False):
            mel, _ = self._preprocessor(input_signal=signal, length=lengths)
        k = self.lookback_frames
        return mel[:, :, k : k + n_frames].float()
