"""``voice-agent doctor``: checks the set-up and says how to fix each failure.

Core checks live here; a backend's builder module may add its own by defining
``checks(settings) -> list[Check]`` (for example, a model file or a server port).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from agent.config import AgentSettings
from pipelines.registry import REGISTRIES


@dataclass
class Check:
    """One doctor line: what was checked, whether it passed, and what to do if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def check_package(module: str, pip_name: str, *, required: bool = True) -> Check:
    """A Python package is importable."""
    found = importlib.util.find_spec(module) is not None
    return Check(
        name=f"package {pip_name}",
        ok=found,
        detail="installed" if found else "not installed",
        fix="" if found else f"pip install {pip_name!r} (or re-run the README set-up command)",
        required=required,
    )


def check_gpu(settings: AgentSettings) -> Check:
    """CUDA is usable when a backend asks for it."""
    wants_cuda = any(
        str(getattr(section, "device", "")).startswith("cuda")
        for section in (settings.stt, settings.tts)
    )
    try:
        import torch

        available = torch.cuda.is_available()
        detail = (
            f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
            if available
            else f"no CUDA device (torch {torch.__version__})"
        )
    except Exception as exc:  # torch missing or broken
        available, detail = False, f"torch unusable: {exc}"
    fix = ""
    if wants_cuda and not available:
        fix = (
            "a backend is set to device=cuda: install an NVIDIA driver and a CUDA build of torch, "
            "or use --profile cpu / set stt.device and tts.device to cpu"
        )
    return Check("GPU (CUDA)", available or not wants_cuda, detail, fix, required=wants_cuda)


def hf_model_available(model: str) -> tuple[bool, str]:
    """Whether a model id is in the local Hugging Face cache, or a local path exists."""
    if model.endswith(".nemo") or os.path.sep in model and not model.startswith("nvidia/"):
        path = Path(model).expanduser()
        return path.exists(), f"local file {path}" + ("" if path.exists() else " is missing")
    try:
        from huggingface_hub import scan_cache_dir

        cached = {repo.repo_id for repo in scan_cache_dir().repos}
    except Exception:
        cached = set()
    if model in cached:
        return True, f"{model} is in the Hugging Face cache"
    return False, f"{model} is not in the Hugging Face cache (it downloads on first start)"


def check_model(label: str, model: str) -> Check:
    """A model is loadable without a download, or will download on start."""
    ok, detail = hf_model_available(model)
    fix = ""
    if not ok:
        fix = (
            f"on a machine with internet: huggingface-cli download {model}; offline: copy the "
            f".nemo here and set {label} to its path"
        )
    return Check(f"model {label}", ok, detail, fix)


def check_http_endpoint(name: str, base_url: str, *, api_key: str | None = None) -> Check:
    """An OpenAI-compatible endpoint answers ``GET /models``."""
    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return Check(name, True, f"{url} answered HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return Check(
                name,
                False,
                f"{url} refused the API key (HTTP {exc.code})",
                "set llm.api_key (or the key variable of your preset) to a valid key",
            )
        return Check(name, True, f"{url} is reachable (HTTP {exc.code})")
    except Exception as exc:
        return Check(
            name,
            False,
            f"{url} unreachable: {exc}",
            "start the LLM server, or point llm.base_url / llm.preset at a running one",
        )


def check_tcp(name: str, address: str) -> Check:
    """A host:port accepts TCP connections (gRPC servers, the ASR server)."""
    parsed = urlparse(address if "//" in address else f"//{address}")
    host, port = parsed.hostname or "localhost", parsed.port or 80
    try:
        with socket.create_connection((host, port), timeout=2):
            return Check(name, True, f"{host}:{port} accepts connections")
    except OSError as exc:
        return Check(
            name,
            False,
            f"{host}:{port} unreachable: {exc}",
            f"start the server on {host}:{port} or change the address in the config",
        )


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
        has_key = bool(os.environ.get("DAILY_API_KEY"))
        results.append(
            Check(
                "DAILY_API_KEY",
                has_key,
                "set" if has_key else "not set",
                "" if has_key else "export DAILY_API_KEY=... (or put it in .env)",
            )
        )
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
