"""Presets for OpenAI-compatible LLM servers: base URL, model and API key conventions.

A preset only fills in what the user left unset: an explicit ``base_url``, ``model`` or
``api_key`` always wins. Local servers that need no key get a placeholder (the OpenAI client
refuses an empty key and would otherwise fall back to ``OPENAI_API_KEY``, leaking it to a server
that is not OpenAI's). A preset with no default model asks the server (``GET /v1/models``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LLMPreset:
    """Conventions of one kind of OpenAI-compatible server.

    Parameters:
        name: The preset name used in config (``llm.preset``).
        base_url: Default endpoint, ending in ``/v1``.
        model: Default model; None means "ask the server which model it serves".
        key_env: Environment variables to take the API key from, in order.
        key_placeholder: Key sent when none is configured and the server needs none.
        requires_key: Whether a missing key is a configuration error.
        chat_template_kwargs: Whether the thinking toggle is sent as
            ``extra_body.chat_template_kwargs.enable_thinking`` (vLLM, NIM, llama.cpp, SGLang).
        description: One line for docs and ``voice-agent config``.
    """

    name: str
    base_url: str
    model: str | None
    key_env: tuple[str, ...] = ()
    key_placeholder: str | None = None
    requires_key: bool = False
    chat_template_kwargs: bool = True
    description: str = ""


PRESETS: dict[str, LLMPreset] = {
    preset.name: preset
    for preset in (
        LLMPreset(
            name="openai",
            base_url="https://api.openai.com/v1",
            model="gpt-4.1-mini",
            key_env=("OPENAI_API_KEY",),
            requires_key=True,
            chat_template_kwargs=False,
            description="OpenAI's API (OPENAI_API_KEY)",
        ),
        LLMPreset(
            name="vllm",
            base_url="http://localhost:8000/v1",
            model=None,
            key_env=("VLLM_API_KEY",),
            key_placeholder="EMPTY",
            description="a vLLM server (vllm serve MODEL); the served model is discovered",
        ),
        LLMPreset(
            name="nim",
            base_url="http://localhost:8000/v1",
            model=None,
            key_env=("NIM_API_KEY",),
            key_placeholder="not-used",
            description="a local NVIDIA NIM for LLMs; the served model is discovered",
        ),
        LLMPreset(
            name="llamacpp",
            base_url="http://localhost:8080/v1",
            model=None,
            key_env=("LLAMA_API_KEY",),
            key_placeholder="no-key",
            description="a llama.cpp server (llama-server or llama_cpp.server) you run yourself",
        ),
        LLMPreset(
            name="ollama",
            base_url="http://localhost:11434/v1",
            model="llama3.2",
            key_env=("OLLAMA_API_KEY",),
            key_placeholder="ollama",
            description="Ollama's OpenAI-compatible endpoint (ollama pull MODEL first)",
        ),
        LLMPreset(
            name="nvidia-hosted",
            base_url="https://integrate.api.nvidia.com/v1",
            model="nvidia/llama-3.3-nemotron-super-49b-v1.5",
            key_env=("NVIDIA_API_KEY",),
            requires_key=True,
            description="NVIDIA's hosted API at build.nvidia.com (NVIDIA_API_KEY)",
        ),
        LLMPreset(
            name="local",
            base_url="http://127.0.0.1:0/v1",
            model="local",
            key_placeholder="no-key",
            description="an embedded llama.cpp server the app starts with a GGUF (CPU)",
        ),
    )
}


class PresetError(ValueError):
    """A preset cannot be resolved into a usable endpoint (message is meant for the user)."""


@dataclass(frozen=True)
class LLMEndpoint:
    """A resolved endpoint: what the OpenAI client is given.

    Parameters:
        preset: The preset it came from.
        base_url: The endpoint URL.
        model: The model name, or None to discover it from the server.
        api_key: The key to send (a placeholder for servers that need none).
        chat_template_kwargs: Whether the thinking toggle travels as chat template kwargs.
    """

    preset: str
    base_url: str
    model: str | None
    api_key: str
    chat_template_kwargs: bool


def resolve_endpoint(
    preset: str,
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> LLMEndpoint:
    """Fill base URL, model and key from a preset; explicit values win.

    Args:
        preset: A name in :data:`PRESETS`.
        base_url: Explicit endpoint, or None for the preset's.
        model: Explicit model, or None for the preset's (None there means discover).
        api_key: Explicit key, or None to read the preset's environment variables.
        env: Environment to read keys from (defaults to ``os.environ``).

    Raises:
        PresetError: For an unknown preset or a missing required key.
    """
    env = os.environ if env is None else env
    try:
        spec = PRESETS[preset]
    except KeyError:
        raise PresetError(
            f"unknown LLM preset {preset!r}; known: {', '.join(sorted(PRESETS))}"
        ) from None
    key = api_key or next((env[name] for name in spec.key_env if env.get(name)), None)
    if not key:
        if spec.requires_key and not base_url:
            names = " or ".join(spec.key_env)
            raise PresetError(
                f"llm.preset = {preset!r} needs an API key: set llm.api_key or {names}"
            )
        key = spec.key_placeholder or "not-used"
    return LLMEndpoint(
        preset=preset,
        base_url=(base_url or spec.base_url).rstrip("/"),
        model=model or spec.model,
        api_key=key,
        chat_template_kwargs=spec.chat_template_kwargs,
    )
