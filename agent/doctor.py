"""``voice-agent doctor``: checks the set-up and says how to fix each failure.

The check helpers live in ``pipelines/checks.py`` (start-up uses them too) and stay importable
from here. A backend's builder module may add its own checks by defining
``checks(settings) -> list[Check]`` (for example, a model file or a server port).
"""

from __future__ import annotations

import importlib

from agent import daily
from agent.config import AgentSettings
from pipelines.checks import (  # noqa: F401
    Check,
    check_gpu,
    check_http_endpoint,
    check_model,
    check_package,
    check_tcp,
    hf_model_available,
)
from pipelines.registry import REGISTRIES


def backend_checks(settings: AgentSettings) -> list[Check]:
    """Checks that each selected backend's builder module contributes."""
    found: list[Check] = []
    for capability, name in (
        ("stt", settings.stt.backend),
        ("llm", settings.llm.preset),
        ("tts", settings.tts.backend),
    ):
        module_name = REGISTRIES[capability][name].partition(":")[0]
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            found.append(
                Check(
                    f"{capability} backend {name}",
                    False,
                    f"cannot import: {exc}",
                    "install the packages this backend needs (see README)",
                )
            )
            continue
        checks = getattr(module, "checks", None)
        if checks is None:
            found.append(Check(f"{capability} backend {name}", True, "importable"))
        else:
            found.extend(checks(settings))
    return found


def run_checks(settings: AgentSettings) -> list[Check]:
    """Every check, core first."""
    results = [
        check_package("pipecat", "pipecat-ai"),
        check_package("aiortc", "pipecat-ai[webrtc]"),
        check_package("daily", "daily-python", required=settings.transport.type == "daily"),
        check_package("torch", "torch"),
        check_gpu(settings),
    ]
    if settings.transport.type == "daily":
        results.append(daily.check_api_key())  # the same check as `run -t daily`
    results.extend(backend_checks(settings))
    return results


def format_table(results: list[Check]) -> str:
    """A plain table: status, check, detail, and the fix under each failure."""
    width = max(len(c.name) for c in results)
    lines = []
    for check in results:
        status = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        lines.append(f"{status}  {check.name.ljust(width)}  {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"      {''.ljust(width)}  fix: {check.fix}")
    return "\n".join(lines)
