"""Streaming encoder steps behind one protocol (``base.StreamingEncoder``), chosen by config.

``fast`` (default): our step with projected K/V cached in a ring (``kv_cached.py``).
``nemo``: NeMo's own ``cache_aware_stream_step`` (``nemo_step.py``), the reference.
"""

from __future__ import annotations

import torch

from .base import CacheLayout, StreamingEncoder
from .kv_cached import KVCachedStep, UnsupportedEncoderError
from .nemo_step import NemoStep

ENCODERS = ("fast", "nemo")

__all__ = [
    "ENCODERS",
    "CacheLayout",
    "KVCachedStep",
    "NemoStep",
    "StreamingEncoder",
    "UnsupportedEncoderError",
    "build_encoder",
]


def build_encoder(
    name: str,
    encoder,
    *,
    device: torch.device,
    dtype: str,
    max_new_frames: int,
) -> StreamingEncoder:
    """The step ``name`` over the loaded model's (streaming-configured) encoder.

    Args:
        name: ``fast`` or ``nemo``.
        encoder: NeMo ``ConformerEncoder`` with ``set_default_att_context_size`` applied.
        device: torch device of the model.
        dtype: ``fp32`` or ``bf16`` (the engine's setting).
        max_new_frames: most encoder frames one step adds (the chunk mode's ``valid_out_len``).
    """
    bf16 = dtype == "bf16"
    if name == "fast":
        return KVCachedStep(
            encoder,
            device=device,
            max_new_frames=max_new_frames,
            dtype=torch.bfloat16 if bf16 else torch.float32,
        )
    if name == "nemo":
        return NemoStep(
            encoder,
            device=device,
            cache_dtype=torch.bfloat16 if bf16 else torch.float32,
            autocast_dtype=torch.bfloat16 if bf16 else None,
        )
    raise ValueError(f"encoder={name!r} is unknown; allowed: {ENCODERS}")
