"""One engine-config builder for every ASR server front end (``asr-server``, Ray Serve).

Both take the same options under the same names (the ``asr-server`` flags with underscores),
so a setting means the same on one box and in a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.asr.engine.config import EngineConfig

# Options that configure the engine; None (or absent) keeps EngineConfig's default.
ENGINE_OPTIONS = (
    "model",
    "device",
    "dtype",
    "chunk_ms",
    "encoder",
    "max_streams",
    "max_batch",
    "cuda_graphs",
    "batch_window_ms",
    "final_rows",
)
# The dtype a server runs when none was chosen: bf16 where it pays (CUDA), fp32 elsewhere.
DEFAULT_DTYPE = "bf16"


def resolves_to_cpu(device: str) -> bool:
    """``device`` runs on the CPU here (``auto`` on a machine without CUDA)."""
    if device == "cpu":
        return True
    if device != "auto":
        return False
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:  # no usable torch: nothing runs on CUDA
        return True


def serving_engine_config(options: Mapping[str, Any], *, dtype_chosen: bool) -> EngineConfig:
    """The engine settings of a server from its options.

    Args:
        options: Any of :data:`ENGINE_OPTIONS`; other keys are ignored, None means default.
        dtype_chosen: The user set the dtype. Otherwise bf16 (the GPU default) becomes fp32 on
            a CPU, where bf16 autocast is slower, not faster.

    Raises:
        ValueError: An invalid value (from ``EngineConfig``).
    """
    kwargs = {key: options[key] for key in ENGINE_OPTIONS if options.get(key) is not None}
    kwargs.setdefault("dtype", DEFAULT_DTYPE)
    if kwargs.get("cuda_graphs") is not None:
        kwargs["cuda_graphs"] = bool(kwargs["cuda_graphs"])
    if (
        kwargs["dtype"] == "bf16"
        and not dtype_chosen
        and resolves_to_cpu(kwargs.get("device", "auto"))
    ):
        kwargs["dtype"] = "fp32"
    return EngineConfig(**kwargs)
