"""Built-in profiles: whole-stack presets a user selects with ``--profile`` or ``profile = ...``.

``nvidia`` is the product as designed (Nemotron streaming ASR, Magpie TTS, an LLM endpoint);
``cpu`` runs everywhere, offline, from models that install from package registries.
A TOML file may redefine either or add its own under ``[profiles.NAME]``.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    "nvidia": {
        "stt": {"backend": "nemotron", "device": "cuda", "dtype": "bf16", "chunk_ms": 160},
        "tts": {"backend": "magpie", "device": "cuda"},
        "llm": {"preset": "vllm"},
    },
    "cpu": {
        "stt": {"backend": "whisper", "device": "cpu"},
        "tts": {"backend": "hibari"},
        "llm": {"preset": "local"},
    },
}


def cuda_is_available() -> bool:
    """Whether PyTorch sees an NVIDIA GPU (False when torch is missing or broken)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not stop a CPU start
        return False


def detect_default_profile(cuda_available: bool | None = None) -> str:
    """Pick ``nvidia`` when a GPU is usable, else ``cpu``."""
    if cuda_available is None:
        cuda_available = cuda_is_available()
    return "nvidia" if cuda_available else "cpu"
