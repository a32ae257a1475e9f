"""Check, then load, the selected backends before the first user connects.

``preflight`` runs each selected backend's cheap checks (a CUDA device, a model file, an API key)
so a start that is sure to fail stops at once with one message; ``prewarm`` loads the models, so
nobody waits for a model load mid-call. Both raise ``StartupError`` for what the user can fix.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Iterator
from types import ModuleType

from loguru import logger

from agent.config import AgentSettings
from pipelines.checks import StartupError
from pipelines.registry import REGISTRIES


def _backends(settings: AgentSettings) -> Iterator[tuple[str, str, ModuleType]]:
    """(capability, backend name, builder module) for each selected backend."""
    for capability, name in (
        ("stt", settings.stt.backend),
        ("llm", settings.llm.preset),
        ("tts", settings.tts.backend),
    ):
        module_name = REGISTRIES[capability][name].partition(":")[0]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise StartupError(
                f"{capability} backend {name} cannot be imported: {exc}",
                "install the packages it needs (README; voice-agent doctor lists them)",
            ) from exc
        yield capability, name, module


def preflight(settings: AgentSettings) -> None:
    """Call ``preflight(settings)`` on each selected backend's builder module, if it has one.

    Raises:
        StartupError: A backend cannot start with these settings on this machine.
    """
    for _capability, _name, module in _backends(settings):
        check = getattr(module, "preflight", None)
        if check is not None:
            check(settings)


def prewarm(settings: AgentSettings) -> None:
    """Call ``prewarm(settings)`` on each selected backend's builder module, if it has one.

    Raises:
        StartupError: A backend's model or server could not be loaded or started.
    """
    import asyncio

    for capability, name, module in _backends(settings):
        warm = getattr(module, "prewarm", None)
        if warm is None:
            continue
        logger.info(f"Preparing {capability} backend {name}...")
        start = time.perf_counter()
        result = warm(settings)
        if inspect.isawaitable(result):
            asyncio.run(result)
        logger.info(f"{capability} backend {name} ready in {time.perf_counter() - start:.1f} s")
