"""Backend registry: config names -> builder functions.

Each entry maps a name that users write in config (``stt.backend = "whisper"``) to a
``"module:function"`` path. The module is imported only when that backend is selected, so
heavy stacks (NeMo, llama.cpp) cost nothing unless used. A builder takes the resolved
``AgentSettings`` and returns a Pipecat ``FrameProcessor`` (or, for the LLM, an object with
``service`` and the per-session extras it needs).

Adding a backend = one builder file in ``pipelines/backends/`` + one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

STT_BACKENDS: dict[str, str] = {
    "nemotron": "pipelines.backends.stt_nemotron:build",
    "remote": "pipelines.backends.stt_remote:build",
    "whisper": "pipelines.backends.stt_whisper:build",
}

TTS_BACKENDS: dict[str, str] = {
    "magpie": "pipelines.backends.tts_magpie:build",
    "magpie-nim": "pipelines.backends.tts_magpie_nim:build",
    "hibari": "pipelines.backends.tts_hibari:build",
    "piper": "pipelines.backends.tts_piper:build",
}

LLM_BACKENDS: dict[str, str] = {
    "openai": "pipelines.backends.llm_openai_compatible:build",
    "vllm": "pipelines.backends.llm_openai_compatible:build",
    "nim": "pipelines.backends.llm_openai_compatible:build",
    "llamacpp": "pipelines.backends.llm_openai_compatible:build",
    "ollama": "pipelines.backends.llm_openai_compatible:build",
    "nvidia-hosted": "pipelines.backends.llm_openai_compatible:build",
    "local": "pipelines.backends.llm_local:build",
}

REGISTRIES: dict[str, dict[str, str]] = {
    "stt": STT_BACKENDS,
    "tts": TTS_BACKENDS,
    "llm": LLM_BACKENDS,
}


class UnknownBackendError(ValueError):
    """Raised when config names a backend that is not registered."""


def resolve(capability: str, name: str) -> Callable[..., Any]:
    """Import and return the builder registered for ``name``.

    Args:
        capability: One of ``"stt"``, ``"tts"``, ``"llm"``.
        name: The backend name from config.

    Raises:
        UnknownBackendError: If ``name`` is not registered for ``capability``.
    """
    registry = REGISTRIES[capability]
    try:
        target = registry[name]
    except KeyError:
        allowed = ", ".join(sorted(registry))
        raise UnknownBackendError(
            f"{capability} backend {name!r} is not registered; allowed: {allowed}"
        ) from None
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)
