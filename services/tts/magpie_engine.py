"""One loaded Magpie TTS model per (model, device), shared by every session in the process.

Synthesis runs on the engine's own worker thread, never on the asyncio event loop. Requests
from all sessions queue in order on that thread, so the model is only ever used by one thread at
a time. A request can be cancelled while it waits or while it runs: a forward pre-hook on the
model's decoder checks the running request's cancel flag at every decoder step and aborts the
autoregressive loop, so an interrupted sentence stops costing compute within one step.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

DEFAULT_MAGPIE_MODEL = "nvidia/magpie_tts_multilingual_357m"

# Baked speakers of nvidia/magpie_tts_multilingual_357m, by index.
MAGPIE_SPEAKERS: dict[str, int] = {"john": 0, "sofia": 1, "aria": 2, "jason": 3, "leo": 4}
MAGPIE_LANGUAGES = ("en", "es", "de", "fr", "vi", "it", "zh", "hi", "ja")


class _PerCallNoise(logging.Filter):
    """Drops the INFO lines NeMo's Magpie logs on every synthesis (tokenizer, decoder steps)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Decoding timestep", "Using tokenizer"))


def _quiet_per_call_logs() -> None:
    nemo_logger = logging.getLogger("nemo_logger")
    if not any(isinstance(f, _PerCallNoise) for f in nemo_logger.filters):
        nemo_logger.addFilter(_PerCallNoise())
    # Magpie asks for fp32 autocast, which CPU autocast does not support: harmless, per call.
    warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype")


class SynthesisCancelled(Exception):
    """Raised inside the worker thread when the running request was cancelled."""


@dataclass
class MagpieResult:
    """One synthesized utterance.

    Parameters:
        audio: Float32 mono samples in [-1, 1].
        sample_rate: Sample rate of ``audio``.
        seconds: Wall time the synthesis took on the worker thread.
    """

    audio: np.ndarray
    sample_rate: int
    seconds: float


def resolve_device(device: str) -> str:
    """Map ``auto`` to ``cuda`` when PyTorch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def speaker_index(voice: str | int | None, num_speakers: int | None = None) -> int:
    """Resolve a speaker name (John, Sofia, Aria, Jason, Leo) or index to an index.

    Raises:
        ValueError: For an unknown name or an index the model does not have.
    """
    if voice is None or voice == "":
        index = MAGPIE_SPEAKERS["aria"]
    elif isinstance(voice, int) or str(voice).strip().isdigit():
        index = int(voice)
    else:
        key = str(voice).strip().lower()
        # Accept NIM-style names too: "Magpie-Multilingual.EN-US.Aria" -> "aria".
        key = key.rsplit(".", 1)[-1]
        if key not in MAGPIE_SPEAKERS:
            names = ", ".join(name.capitalize() for name in MAGPIE_SPEAKERS)
            raise ValueError(f"unknown Magpie speaker {voice!r}; known: {names} (or an index)")
        index = MAGPIE_SPEAKERS[key]
    if num_speakers is not None and not 0 <= index < num_speakers:
        raise ValueError(f"Magpie speaker index {index} out of range; the model has {num_speakers}")
    return index


class MagpieEngine:
    """A Magpie model loaded once, with a single worker thread that runs every synthesis.

    Use :func:`get_magpie_engine` to share one engine per (model, device) in a process.
    """

    def __init__(self, model: str = DEFAULT_MAGPIE_MODEL, device: str = "auto"):
        """Create an engine; nothing is loaded until :meth:`load` or the first synthesis.

        Args:
            model: A Hugging Face id (``nvidia/...``) or a path to a local ``.nemo`` file.
            device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        """
        self.model_name = model
        self.device = device
        self._model: Any = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="magpie-tts"
        )
        self._load_future: concurrent.futures.Future | None = None
        self._lock = threading.Lock()
        self._current_cancel: threading.Event | None = None
        self._closed = False
        self.sample_rate: int | None = None
        self.num_speakers: int | None = None

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded and ready."""
        return self._model is not None

    async def load(self) -> None:
        """Load the model on the worker thread (once); later calls wait for the same load.

        Raises:
            RuntimeError: If the model cannot be loaded, with the reason.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("Magpie engine has been shut down")
            failed = (
                self._load_future is not None
                and self._load_future.done()
                and self._load_future.exception() is not None
            )
            if self._load_future is None or failed:
                self._load_future = self._executor.submit(self._load_blocking)
            future = self._load_future
        await asyncio.wrap_future(future)

    def _load_blocking(self) -> None:
        import torch
        from nemo.collections.tts.models import MagpieTTSModel

        _quiet_per_call_logs()
        device = resolve_device(self.device)
        started = time.perf_counter()
        source = self.model_name
        try:
            if source.endswith(".nemo") or Path(source).expanduser().is_file():
                path = Path(source).expanduser()
                if not path.is_file():
                    raise FileNotFoundError(f"no such .nemo file: {path}")
                model = MagpieTTSModel.restore_from(str(path), map_location=torch.device(device))
            else:
                model = MagpieTTSModel.from_pretrained(source, map_location=torch.device(device))
        except Exception as e:
            raise RuntimeError(
                f"could not load Magpie TTS model {source!r} on {device}: {e}"
            ) from e
        model.eval()
        if not model.has_baked_context_embedding:
            raise RuntimeError(
                f"Magpie model {source!r} has no baked speakers; do_tts needs a checkpoint "
                "with them"
            )
        model.decoder.register_forward_pre_hook(self._check_cancelled)
        self._model = model
        self.sample_rate = int(model.output_sample_rate)
        self.num_speakers = int(model.num_baked_speakers)
        logger.info(
            f"Magpie TTS {source} loaded on {device} in {time.perf_counter() - started:.1f} s "
            f"({self.sample_rate} Hz, {self.num_speakers} speakers)"
        )

    def _check_cancelled(self, module, args) -> None:
        cancel = self._current_cancel
        if cancel is not None and cancel.is_set():
            raise SynthesisCancelled()

    async def synthesize(
        self,
        text: str,
        *,
        language: str = "en",
        speaker: int = 0,
        cfg_scale: float | None = None,
        cancel: threading.Event | None = None,
    ) -> MagpieResult:
        """Synthesize one utterance off the event loop.

        Args:
            text: The text to speak (one sentence or clause works best).
            language: Magpie language code (``en``, ``es``, ``de``, ...).
            speaker: Baked speaker index.
            cfg_scale: Classifier-free guidance scale; None keeps the model's own setting,
                1.0 turns guidance off (half the compute).
            cancel: Set it to abandon the request; the worker stops at the next decoder step.

        Returns:
            The audio at the model's own sample rate.

        Raises:
            SynthesisCancelled: If ``cancel`` was set before the audio was complete.
            asyncio.CancelledError: If the awaiting task is cancelled (so is the request).
        """
        await self.load()
        cancel = cancel or threading.Event()
        with self._lock:
            if self._closed:
                raise RuntimeError("Magpie engine has been shut down")
            future = self._executor.submit(
                self._synthesize_blocking, text, language, speaker, cfg_scale, cancel
            )
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.set()
            future.cancel()
            raise

    def _synthesize_blocking(
        self,
        text: str,
        language: str,
        speaker: int,
        cfg_scale: float | None,
        cancel: threading.Event,
    ) -> MagpieResult:
        if cancel.is_set():
            raise SynthesisCancelled()
        import torch

        model = self._model
        params = model.inference_parameters
        saved_scale = params.cfg_scale
        use_cfg = cfg_scale is None or cfg_scale != 1.0
        if cfg_scale is not None:
            params.cfg_scale = float(cfg_scale)
        self._current_cancel = cancel
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                audio, audio_len = model.do_tts(
                    text, language=language, use_cfg=use_cfg, speaker_index=speaker
                )
        finally:
            self._current_cancel = None
            params.cfg_scale = saved_scale
        if cancel.is_set():
            raise SynthesisCancelled()
        samples = audio[0, : int(audio_len[0])].float().cpu().numpy()
        return MagpieResult(
            audio=samples, sample_rate=self.sample_rate, seconds=time.perf_counter() - started
        )

    def shutdown(self) -> None:
        """Cancel the running request, drop queued ones and release the model."""
        with self._lock:
            self._closed = True
            cancel = self._current_cancel
        if cancel is not None:
            cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._model = None


_engines: dict[tuple[str, str], MagpieEngine] = {}
_engines_lock = threading.Lock()


def get_magpie_engine(model: str = DEFAULT_MAGPIE_MODEL, device: str = "auto") -> MagpieEngine:
    """Return the process-wide engine for (model, device), creating it on first use."""
    key = (str(Path(model).expanduser().resolve()) if model.endswith(".nemo") else model, device)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None or engine._closed:
            engine = MagpieEngine(model, device)
            _engines[key] = engine
        return engine


def shutdown_magpie_engines() -> None:
    """Shut down every shared engine (registered with ``atexit``)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.shutdown()


atexit.register(shutdown_magpie_engines)
