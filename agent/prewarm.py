"""Load models before the first user connects, so nobody waits for a model load mid-call."""

from __future__ import annotations

import importlib
import inspect
import time

from loguru import logger

from agent.config import AgentSettings
from pipelines.registry import REGISTRIES


def prewarm(settings: AgentSettings) -> None:
    """Call ``prewarm(settings)`` on each selected backend's builder module, if it has one."""
    import asyncio

    for capability, name in (
        ("stt", settings.stt.backend),
        ("llm", settings.llm.preset),
        ("tts", settings.tts.backend),
    ):
        module = importlib.import_module(REGISTRIES[capability][name].partition(":")[0])
        warm = getattr(module, "prewarm", None)
        if warm is None:
            continue
        logger.info(f"Preparing {capability} backend {name}...")
        start = time.perf_counter()
        result = warm(settings)
        if inspect.isawaitable(result):
            asyncio.run(result)
        logger.info(f"{capability} backend {name} ready in {time.perf_counter() - start:.1f} s")
