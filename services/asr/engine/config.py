"""Engine configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MODEL = "nvidia/nemotron-speech-streaming-en-0.6b"

# chunk_ms -> right context R of att_context_size [70, R]; the model was trained with these four.
CHUNK_MS_TO_RIGHT_CONTEXT: dict[int, int] = {80: 0, 160: 1, 560: 6, 1120: 13}
LEFT_CONTEXT = 70

_DEVICES = ("auto", "cpu", "cuda", "cuda:<index>")
_DTYPES = ("fp32", "bf16")
# fast: our step with projected K/V cached per layer (services/asr/engine/encoders/kv_cached.py);
# nemo: NeMo's own cache_aware_stream_step, the reference it is tested against.
ENCODERS = ("fast", "nemo")


def _invalid(name: str, value: object, allowed: object) -> ValueError:
    return ValueError(f"EngineConfig.{name}={value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class EngineConfig:
    """Settings of one ASR engine.

    Attributes:
        model: Hugging Face id (loaded with ``ASRModel.from_pretrained``) or a path to a ``.nemo``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``fp32`` or ``bf16`` (bf16 runs the model under autocast; features stay fp32).
        chunk_ms: streaming chunk, one of 80/160/560/1120 (att_context_size [70, 0/1/6/13]).
        encoder: the encoder step: ``fast`` (projected keys and values cached per layer, ~4x
            fewer FLOPs at 160 ms) or ``nemo`` (NeMo's own ``cache_aware_stream_step``, which
            re-projects 70 cached frames in every layer at every step). Both give the same
            output within float rounding; switch to settle any doubt.
        max_streams: open streams allowed at once; ``open_stream`` raises beyond it.
        max_batch: most streams advanced by one encoder call; the rest wait for the next tick.
        cuda_graphs: capture the encoder step in CUDA graphs (CUDA only, static bucketed shapes).
        batch_buckets: batch sizes a call is padded up to. Empty: powers of two on CUDA, no padding
            on CPU (padding only pays off where shapes must be static).
        warmup: run each step shape once at start so the first real request is not slow.
        max_utterance_chars: cap on the text kept for one utterance (oldest text is dropped), so a
            stream that is never reset stays bounded in memory.
        freeze_gc: after loading, move every object alive (the model, NeMo, torch) out of the
            garbage collector's reach with ``gc.freeze()``. Otherwise a full collection walks
            millions of objects and stalls every thread, the asyncio loop included, for
            100-500 ms. Process-wide; harmless for code loaded later.
        max_backlog_s: audio a stream may have pushed but not yet encoded. Beyond it the engine
            is behind real time and ``push_audio`` raises ``EngineOverloadedError`` instead of
            queueing without bound (an overloaded engine otherwise grows memory until the
            process is killed, and every stream's lag with it).
        batch_window_ms: least time between the starts of two ticks, so that streams whose
            chunks complete close together share one batch (finals never wait for it). Streams
            arrive at random phases of the chunk, so without a window a busy engine runs a tick
            for every few streams and pays the fixed cost of a step each time: on a CPU that
            keeps a core 100% busy and starves the server and the bots beside it. None: 30 ms
            on CPU, 0 on CUDA (where a step's fixed cost is small and the GPU is not shared).
        final_rows: finals of one tick that run inside the live steps' encoder calls, each on
            a copy of its stream's state kept in one of this many extra slot pool rows (with
            CUDA graphs, inside the graphs). Finals beyond it in a tick run in calls of their
            own on private copies; 0 runs every final that way (the reference path). None:
            on CUDA ``max_streams // 16`` clamped to 8..256, on CPU 4 (few streams, and a row
            of the full-size model holds ~15 MB of fp32 caches).
        plan_ahead: plan the next tick's live steps (readiness, audio windows) while the
            device runs the current tick's encoder calls, looking again for rows that became
            ready until the device is done, so on a GPU that host work overlaps the device
            step; rows whose state changes meanwhile are planned again. Off by default until a
            GPU run has checked it (``scripts/gpu_exactness.py``); on a CPU nothing overlaps.
    """

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "fp32"
    chunk_ms: int = 160
    encoder: str = "fast"
    max_streams: int = 1024
    max_batch: int = 1024
    cuda_graphs: bool = False
    batch_buckets: tuple[int, ...] = field(default_factory=tuple)
    warmup: bool = True
    max_utterance_chars: int = 20_000
    freeze_gc: bool = True
    max_backlog_s: float = 10.0
    batch_window_ms: float | None = None
    final_rows: int | None = None
    plan_ahead: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise _invalid("model", self.model, "a Hugging Face model id or a path to a .nemo file")
        dev = self.device
        if not isinstance(dev, str) or not (
            dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())
        ):
            raise _invalid("device", dev, _DEVICES)
        if self.dtype not in _DTYPES:
            raise _invalid("dtype", self.dtype, _DTYPES)
        if self.encoder not in ENCODERS:
            raise _invalid("encoder", self.encoder, ENCODERS)
        if self.chunk_ms not in CHUNK_MS_TO_RIGHT_CONTEXT:
            raise _invalid("chunk_ms", self.chunk_ms, tuple(CHUNK_MS_TO_RIGHT_CONTEXT))
        for name in ("max_streams", "max_batch", "max_utterance_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _invalid(name, value, "an integer >= 1")
        for name in ("cuda_graphs", "warmup", "freeze_gc", "plan_ahead"):
            if not isinstance(getattr(self, name), bool):
                raise _invalid(name, getattr(self, name), (True, False))
        backlog = self.max_backlog_s
        if isinstance(backlog, bool) or not isinstance(backlog, int | float) or backlog <= 0:
            raise _invalid("max_backlog_s", backlog, "a number of seconds > 0")
        window = self.batch_window_ms
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int | float) or window < 0
        ):
            raise _invalid("batch_window_ms", window, "None or a number of milliseconds >= 0")
        rows = self.final_rows
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
            raise _invalid("final_rows", rows, "None or an integer >= 0")
        buckets = tuple(self.batch_buckets)
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets) or list(
            buckets
        ) != sorted(set(buckets)):
            raise _invalid("batch_buckets", self.batch_buckets, "strictly increasing integers >= 1")
        object.__setattr__(self, "batch_buckets", buckets)

    @property
    def right_context(self) -> int:
        """Right context R (lookahead, in encoder frames) of the chosen chunk mode."""
        return CHUNK_MS_TO_RIGHT_CONTEXT[self.chunk_ms]

    @property
    def att_context_size(self) -> list[int]:
        """``[left, right]`` attention context passed to ``set_default_att_context_size``."""
        return [LEFT_CONTEXT, self.right_context]

    def resolved_batch_window_s(self, device: str) -> float:
        """``batch_window_ms`` in seconds for ``device`` (None: 30 ms on CPU, 0 on CUDA)."""
        if self.batch_window_ms is not None:
            return self.batch_window_ms / 1000
        return 0.0 if device.startswith("cuda") else 0.030

    def resolved_final_rows(self, device: str) -> int:
        """``final_rows`` for ``device`` (None: CUDA ``max_streams // 16`` in 8..256, CPU 4)."""
        if self.final_rows is not None:
            return self.final_rows
        if device.startswith("cuda"):
            return min(max(self.max_streams // 16, 8), 256)
        return 4

    def resolved_device(self) -> str:
        """The concrete torch device string (``auto`` picks CUDA when available)."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
