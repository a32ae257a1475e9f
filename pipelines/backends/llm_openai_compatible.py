"""``llm.preset = openai | vllm | nim | llamacpp | ollama | nvidia-hosted``: OpenAI-compatible.

The preset fills ``llm.base_url``, ``llm.model`` and the API key convention (see
``services/llm/presets.py``); each stays overridable. vLLM, NIM and llama.cpp presets have no
default model: the served one is discovered (``GET /v1/models``) unless ``llm.model`` is set.
``llm.thinking`` is sent as ``chat_template_kwargs.enable_thinking`` (not to OpenAI's own API);
``llm.extra_body`` is merged into every request and wins over the toggle. ``<think>`` text is
never passed to the TTS. Adding a preset = one ``LLMPreset`` entry + one registry line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.checks import Check
    from pipelines.settings import AgentSettings


def endpoint(settings: AgentSettings, **overrides):
    """The resolved endpoint (base URL, model, key) for the configured preset."""
    from services.llm.presets import resolve_endpoint

    llm = settings.llm
    values = {
        "base_url": llm.base_url,
        "model": llm.model,
        "api_key": llm.api_key.get_secret_value() if llm.api_key else None,
    }
    values.update(overrides)
    return resolve_endpoint(llm.preset, **values)


def make_service(settings: AgentSettings, resolved, **kwargs):
    """An ``OpenAICompatibleLLMService`` for a resolved endpoint and the LLM settings."""
    from services.llm.openai_compatible import OpenAICompatibleLLMService

    llm = settings.llm
    extra = {"extra_body": dict(llm.extra_body)} if llm.extra_body else {}
    service_settings = OpenAICompatibleLLMService.Settings(
        model=resolved.model or "default",
        temperature=llm.temperature,
        # Pipecat 1.14 wants the system prompt on the service, not as a context message.
        system_instruction=llm.system_prompt,
        extra=extra,
    )
    if llm.max_tokens is not None:
        service_settings.max_tokens = llm.max_tokens
    return OpenAICompatibleLLMService(
        base_url=resolved.base_url,
        api_key=resolved.api_key,
        thinking=llm.thinking,
        send_chat_template_kwargs=resolved.chat_template_kwargs,
        discover_model=resolved.model is None,
        developer_role=settings.llm.preset == "openai",
        settings=service_settings,
        **kwargs,
    )


def build(settings: AgentSettings):
    """The LLM service for the configured preset."""
    return make_service(settings, endpoint(settings))


def preflight(settings: AgentSettings) -> None:
    """Fail now if the preset cannot make an endpoint (a required API key is missing).

    The endpoint is not asked: a local LLM server may well start after the agent.

    Raises:
        StartupError: With the cause and the fix.
    """
    from pipelines.checks import StartupError
    from services.llm.presets import PRESETS, PresetError

    try:
        endpoint(settings)
    except PresetError as exc:
        key_env = PRESETS[settings.llm.preset].key_env
        variable = key_env[0] if key_env else "the key variable"
        raise StartupError(
            str(exc),
            f"export {variable}=... (or put it in .env), or pick a preset that needs no key: "
            "--set llm.preset=local (embedded, CPU) or vllm / ollama / llamacpp",
        ) from exc


def checks(settings: AgentSettings) -> list[Check]:
    """Doctor checks: the preset resolves (key present) and the endpoint answers."""
    from pipelines.checks import Check, check_http_endpoint
    from services.llm.presets import PresetError

    try:
        resolved = endpoint(settings)
    except PresetError as e:
        return [Check(f"llm preset {settings.llm.preset}", False, str(e), "set the API key")]
    return [
        check_http_endpoint(
            f"llm endpoint ({settings.llm.preset})", resolved.base_url, api_key=resolved.api_key
        )
    ]
