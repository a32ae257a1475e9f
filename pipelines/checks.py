"""Set-up checks and the start-up error: shared by ``voice-agent doctor`` and start-up.

Each helper returns a :class:`Check` (what was checked, whether it passed, the fix). The doctor
prints them all; start-up turns a failed required one into a :class:`StartupError`, which the CLI
prints as one line with its fix (no traceback). They live here, below ``agent/``, so the
builders in ``pipelines/backends/`` can use them without importing the CLI layer.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipelines.settings import AgentSettings


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
    if looks_like_path(model):  # an id like "org/name" is not a path
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
    if not ok and looks_like_path(model):  # a hub download cannot bring a local file back
        fix = f"set {label} to the path of an existing .nemo file, or to a Hugging Face model id"
    elif not ok:
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


class StartupError(Exception):
    """A predictable start-up failure: what went wrong and what to do about it.

    The CLI prints ``voice-agent: MESSAGE`` and a ``fix:`` line, with no traceback unless the log
    level is DEBUG, and exits 1.
    """

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


def require(check: Check) -> Check:
    """Return ``check`` if it passed or is optional; raise :class:`StartupError` if not.

    Raises:
        StartupError: With the check's detail as the message and its fix.
    """
    if check.required and not check.ok:
        raise StartupError(check.detail, check.fix)
    return check


def _cuda_status() -> tuple[int, str]:
    """How many CUDA devices torch sees, and a description for messages."""
    try:
        import torch
    except Exception as exc:  # torch missing or broken: no CUDA either way
        return 0, f"torch is unusable: {exc}"
    if torch.cuda.is_available():
        return torch.cuda.device_count(), f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    if not torch.version.cuda:
        return 0, f"torch {torch.__version__} is a CPU-only build"
    return 0, f"torch {torch.__version__} finds no NVIDIA GPU"


def _setting(key: str, value: str) -> str:
    """``stt.device = 'cuda'`` for a setting, ``--device 'cuda'`` for a command-line flag."""
    return f"{key} {value!r}" if key.startswith("--") else f"{key} = {value!r}"


def check_device(key: str, device: str, *, cpu_hint: str | None = None) -> Check:
    """A ``cuda`` / ``cuda:N`` setting has that GPU behind it (``auto`` and ``cpu`` always pass).

    Args:
        key: The setting or flag, for the message (``stt.device``, ``--device``).
        device: Its value.
        cpu_hint: How to ask for the CPU instead; default ``--set KEY=cpu or --profile cpu``.
    """
    if not device.startswith("cuda"):
        return Check(key, True, _setting(key, device), required=False)
    count, status = _cuda_status()
    index = int(device.partition(":")[2] or 0)
    if index < count:
        return Check(key, True, f"{_setting(key, device)} ({status})")
    cause = "CUDA is not available" if count == 0 else f"torch sees only {count} CUDA device(s)"
    return Check(
        key,
        False,
        f"{_setting(key, device)} but {cause} ({status})",
        f"on this machine use {cpu_hint or f'--set {key}=cpu or --profile cpu'}; for the GPU "
        "path install an NVIDIA driver and a CUDA build of torch",
    )


def looks_like_path(model: str) -> bool:
    """Whether a model setting names a file or folder rather than a Hugging Face id.

    The same rule as the ASR loader's: a ``.nemo`` name, an explicit path, or anything that exists.
    """
    return (
        model.endswith(".nemo")
        or model.startswith(("/", "./", "../", "~"))
        or os.path.exists(os.path.expanduser(model))
    )


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the Hugging Face hub (read as huggingface_hub does)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def check_model_source(key: str, model: str) -> Check:
    """A model start-up can load: a local file that exists, or a hub id it may fetch.

    A hub id not in the cache passes (it downloads on first start) unless ``HF_HUB_OFFLINE`` is
    set: then the load is certain to fail.
    """
    if looks_like_path(model):
        path = Path(model).expanduser()
        if path.exists():
            return Check(key, True, f"local file {path}")
        return Check(
            key,
            False,
            f"{_setting(key, model)}: {path.resolve()} does not exist",
            f"set {key} to the path of an existing .nemo file, or to a Hugging Face model id",
        )
    if not hub_offline():
        return Check(key, True, f"{model} (from the Hugging Face hub or its cache)")
    cached, detail = hf_model_available(model)
    if cached:
        return Check(key, True, detail)
    return Check(
        key,
        False,
        f"{_setting(key, model)} is not in the Hugging Face cache and HF_HUB_OFFLINE forbids "
        "a download",
        f"download it where the hub is reachable (huggingface-cli download {model}) into this "
        f"cache, or copy the .nemo here and set {key} to its path",
    )


def check_port_free(key: str, host: str, port: int, *, fix: str) -> Check:
    """Nothing listens on ``host:port`` yet, so a server can bind it.

    Binds with ``SO_REUSEADDR``, as uvicorn and asyncio servers do, so a port left in TIME_WAIT
    by a server that just stopped counts as free.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                detail = f"port {port} on {host} is already in use"
            else:
                detail = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            return Check(key, False, detail, fix)
    return Check(key, True, f"{host}:{port} is free")
