"""LLM presets, the thinking toggle and <think> stripping against a real local server."""

from __future__ import annotations

import time

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import run_test

from pipelines.registry import LLM_BACKENDS, resolve
from services.llm.openai_compatible import OpenAICompatibleLLMService
from services.llm.presets import PRESETS, PresetError, resolve_endpoint
from tests.support.settings import section_settings

pytestmark = pytest.mark.timeout(60)


def llm_settings(preset: str, **values: str):
    return section_settings("llm", preset=preset, **values)


def build_llm(preset: str, **values: str) -> OpenAICompatibleLLMService:
    service = resolve("llm", preset)(llm_settings(preset, **values))
    assert isinstance(service, OpenAICompatibleLLMService)
    return service


async def ask(service, text: str = "Hi!"):
    context = LLMContext(messages=[{"role": "user", "content": text}])
    down, up = await run_test(service, frames_to_send=[LLMContextFrame(context)])
    spoken = "".join(f.text for f in down if isinstance(f, LLMTextFrame))
    return spoken, down, up


def test_every_preset_is_registered():
    assert set(PRESETS) == set(LLM_BACKENDS)


@pytest.mark.parametrize(
    ("preset", "env", "base_url", "model", "key"),
    [
        ("openai", {"OPENAI_API_KEY": "sk-x"}, "https://api.openai.com/v1", "gpt-4.1-mini", "sk-x"),
        ("vllm", {}, "http://localhost:8000/v1", None, "EMPTY"),
        ("vllm", {"VLLM_API_KEY": "v"}, "http://localhost:8000/v1", None, "v"),
        ("nim", {}, "http://localhost:8000/v1", None, "not-used"),
        ("llamacpp", {}, "http://localhost:8080/v1", None, "no-key"),
        ("ollama", {}, "http://localhost:11434/v1", "llama3.2", "ollama"),
        (
            "nvidia-hosted",
            {"NVIDIA_API_KEY": "nvapi-x"},
            "https://integrate.api.nvidia.com/v1",
            "nvidia/llama-3.3-nemotron-super-49b-v1.5",
            "nvapi-x",
        ),
    ],
)
def test_preset_conventions(preset, env, base_url, model, key):
    endpoint = resolve_endpoint(preset, env=env)
    assert (endpoint.base_url, endpoint.model, endpoint.api_key) == (base_url, model, key)


def test_explicit_values_win_over_the_preset():
    endpoint = resolve_endpoint(
        "ollama", base_url="http://gpu-box:11434/v1/", model="qwen3:8b", api_key="k", env={}
    )
    assert (endpoint.base_url, endpoint.model, endpoint.api_key) == (
        "http://gpu-box:11434/v1",
        "qwen3:8b",
        "k",
    )


@pytest.mark.parametrize("preset", ["openai", "nvidia-hosted"])
def test_hosted_presets_need_a_key(preset):
    with pytest.raises(PresetError, match="needs an API key"):
        resolve_endpoint(preset, env={})


@pytest.mark.parametrize("preset", ["openai", "vllm", "nim", "llamacpp", "ollama", "nvidia-hosted"])
def test_config_selects_the_preset(preset, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-test")
    service = build_llm(preset)
    assert str(service._client.base_url).rstrip("/") == PRESETS[preset].base_url


async def test_vllm_preset_discovers_the_model_and_sends_thinking_off(fake_llm):
    service = build_llm("vllm", base_url=fake_llm.base_url)
    spoken, down, up = await ask(service)
    assert spoken == "Hello there."
    body = fake_llm.requests[0]
    assert body["model"] == "served/model-x" and fake_llm.model_lists == 1
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["stream"] is True
    assert fake_llm.headers[0]["Authorization"] == "Bearer EMPTY"
    assert not [f for f in up if isinstance(f, ErrorFrame)]


async def test_thinking_toggle_and_settings_reach_the_server(fake_llm):
    service = build_llm(
        "nim",
        base_url=fake_llm.base_url,
        model="nvidia/nemotron-nano-9b-v2",
        thinking="true",
        temperature="0.2",
        max_tokens="64",
    )
    await ask(service)
    body = fake_llm.requests[0]
    assert body["model"] == "nvidia/nemotron-nano-9b-v2" and fake_llm.model_lists == 0
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["temperature"] == 0.2 and body["max_tokens"] == 64


async def test_user_extra_body_is_merged_and_wins(fake_llm):
    service = build_llm(
        "vllm",
        base_url=fake_llm.base_url,
        model="m",
        extra_body='{"top_k": 20, "chat_template_kwargs": {"enable_thinking": true, "x": 1}}',
    )
    await ask(service)
    body = fake_llm.requests[0]
    assert body["top_k"] == 20
    assert body["chat_template_kwargs"] == {"enable_thinking": True, "x": 1}


async def test_openai_preset_never_sends_chat_template_kwargs(fake_llm):
    service = build_llm("openai", base_url=fake_llm.base_url, api_key="sk-test", thinking="true")
    await ask(service)
    body = fake_llm.requests[0]
    assert "chat_template_kwargs" not in body and body["model"] == "gpt-4.1-mini"
    assert fake_llm.headers[0]["Authorization"] == "Bearer sk-test"


async def test_think_text_never_reaches_the_tts(fake_llm):
    fake_llm.chunks = [
        "<thi",
        "nk>The user greets me. I should",
        " answer briefly.</th",
        "ink>\n\nHello",
        " there! How",
        " can I <help>?",
    ]
    service = build_llm("llamacpp", base_url=fake_llm.base_url, thinking="true")
    spoken, down, _ = await ask(service)
    assert spoken == "Hello there! How can I <help>?"
    assert isinstance(down[-1], LLMFullResponseEndFrame)


async def test_reasoning_content_is_not_spoken(fake_llm):
    fake_llm.reasoning = ["Let me think", " about it."]
    fake_llm.chunks = ["Forty", "-two."]
    spoken, _, _ = await ask(build_llm("vllm", base_url=fake_llm.base_url, model="m"))
    assert spoken == "Forty-two."


async def test_dead_endpoint_fails_the_turn_fast_and_the_session_runs_on(fake_llm):
    service = build_llm("vllm", base_url="http://127.0.0.1:1/v1", model="m")
    started = time.monotonic()
    context = LLMContext(messages=[{"role": "user", "content": "Hi"}])
    down, up = await run_test(
        service, frames_to_send=[LLMContextFrame(context), LLMContextFrame(context)]
    )
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 2 and "Connection error" in errors[0].error
    assert time.monotonic() - started < 15
    assert sum(isinstance(f, LLMFullResponseEndFrame) for f in down) == 2


@pytest.mark.parametrize(("preset", "role"), [("llamacpp", "user"), ("openai", "developer")])
async def test_developer_messages_only_reach_servers_that_accept_them(fake_llm, preset, role):
    # Pipecat adds a developer message after a user-turn timeout; llama.cpp rejects that role
    # with HTTP 500 and the message would then break every later request of the session.
    service = build_llm(preset, base_url=fake_llm.base_url, model="m", api_key="sk-x")
    context = LLMContext(
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": "The user went quiet."},
        ]
    )
    await run_test(service, frames_to_send=[LLMContextFrame(context)])
    roles = [m["role"] for m in fake_llm.requests[0]["messages"]]
    assert "developer" not in roles if role == "user" else "developer" in roles
