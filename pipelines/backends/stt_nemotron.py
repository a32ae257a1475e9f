"""``stt.backend = "nemotron"``: cache-aware Nemotron streaming ASR in this process.

Every session streams into one batched engine per (model, device, dtype, chunk): a GPU serves
many users with one encoder step per chunk. ``prewarm`` loads it before the first user connects
and measures one final, so the service announces a measured TTFS (speech end -> final) to the
turn strategies instead of a guess.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from pipelines.checks import Check
    from pipelines.settings import AgentSettings
    from services.asr.engine import EngineConfig
    from services.asr.nemotron_stt import NemotronSTTService

# Measured speech-end -> final p99 (seconds) per engine key, filled by prewarm.
_measured_ttfs: dict[tuple, float] = {}
_lock = threading.Lock()


def engine_config(settings: AgentSettings) -> EngineConfig:
    """The engine settings for ``stt.*`` (bf16 only where it pays: on CUDA)."""
    from services.asr.engine import EngineConfig

    stt = settings.stt
    dtype = stt.dtype
    if dtype == "bf16" and not _uses_cuda(stt.device):
        dtype = "fp32"  # bf16 autocast on a CPU is slower, not faster
    return EngineConfig(
        model=stt.model,
        device=stt.device,
        dtype=dtype,
        chunk_ms=stt.chunk_ms,
        encoder=stt.encoder,
    )


def _uses_cuda(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _key(config: EngineConfig) -> tuple:
    return (config.model, config.resolved_device(), config.dtype, config.chunk_ms, config.encoder)


def build(settings: AgentSettings) -> NemotronSTTService:
    """A Nemotron STT service for one session, on the process-wide engine."""
    from services.asr.nemotron_stt import NEMOTRON_TTFS_P99, NemotronSTTService

    config = engine_config(settings)
    with _lock:
        ttfs = _measured_ttfs.get(_key(config), NEMOTRON_TTFS_P99)
    return NemotronSTTService(
        engine_config=config,
        ttfs_p99_latency=ttfs,
        engine_process=settings.stt.engine_process,
        # Each speculative final at the VAD stop is an eager end of turn the LLM answers.
        enable_eager_end_of_turn=settings.turn.speculative,
    )


def preflight(settings: AgentSettings) -> None:
    """Fail now, before a model loads, where start-up is sure to fail: no CUDA, no model file.

    Raises:
        StartupError: With the cause and the fix.
    """
    from pipelines.checks import check_device, check_model_source, require

    require(check_device("stt.device", settings.stt.device))
    require(check_model_source("stt.model", settings.stt.model))


_LOAD_FIX = (
    "set stt.model to an existing .nemo file or a reachable Hugging Face id of a cache-aware "
    "model (voice-agent doctor checks it), or use --profile cpu"
)


def prewarm(settings: AgentSettings) -> None:
    """Load the engine (with progress logs) and measure one final on it.

    Raises:
        StartupError: The model could not be loaded (the loader's reason and what to do).
    """
    from pipelines.checks import StartupError
    from services.asr.engine.loader import ModelLoadError
    from services.asr.engine.process import EngineProcessError

    try:
        _prewarm(settings)
    except (EngineProcessError, ModelLoadError) as exc:
        raise StartupError(str(exc), _LOAD_FIX) from exc


def _prewarm(settings: AgentSettings) -> None:
    from services.asr.engine import get_engine
    from services.asr.nemotron_stt import measure_finalize_latency

    config = engine_config(settings)
    where = " in its own process" if settings.stt.engine_process else ""
    logger.info(
        f"Loading Nemotron ASR {config.model} on {config.resolved_device()}{where} "
        f"({config.dtype}, {config.chunk_ms} ms chunks); the first load of a hub model downloads it"
    )
    started = time.perf_counter()
    if settings.stt.engine_process:
        from pipelines.logs import setup_logging
        from services.asr.engine import prespawn_engine_process

        # The model loads in the child now; the first session's event loop attaches to it.
        engine = prespawn_engine_process(
            config, init=functools.partial(setup_logging, settings.log_level)
        )
        engine.wait_ready()
        logger.info(
            f"Nemotron ASR engine process ready in {time.perf_counter() - started:.1f} s; "
            "sessions attach to it"
        )
        return
    engine = get_engine(config)
    logger.info(
        f"Nemotron ASR engine loaded in {time.perf_counter() - started:.1f} s; timing a final"
    )
    finalize = measure_finalize_latency(engine, runs=3)
    ttfs = round(settings.vad.stop_secs + finalize, 3)
    with _lock:
        _measured_ttfs[_key(config)] = ttfs
    logger.info(
        f"Nemotron ASR ready: final in {finalize * 1000:.0f} ms, TTFS p99 ~{ttfs:.2f} s with VAD "
        f"stop_secs {settings.vad.stop_secs}"
    )


def checks(settings: AgentSettings) -> list[Check]:
    """Doctor checks: NeMo importable, the model present, the device usable."""
    from pipelines.checks import Check, check_model, check_package

    found = [check_package("nemo.collections.asr", "nemo_toolkit[asr]")]
    found.append(check_model("stt.model", settings.stt.model))
    device = settings.stt.device
    if device.startswith("cuda") and not _uses_cuda("auto"):
        found.append(
            Check(
                "stt device",
                False,
                f"stt.device = {device!r} but CUDA is not available",
                "install a CUDA build of torch on a GPU machine, or set stt.device = 'cpu' "
                "(slow for the 0.6B model), or use stt.backend = 'remote' with an ASR server",
            )
        )
    elif not _uses_cuda(device):
        found.append(
            Check(
                "stt device",
                True,
                "CPU: the 0.6B Nemotron model is slow on a CPU (fine for a tiny test model); "
                "the cpu profile uses whisper",
                required=False,
            )
        )
    return found
