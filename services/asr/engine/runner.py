"""Model runner: the only code that calls the model.

One call of ``encode`` is one batched cache-aware encoder step (``EngineConfig.encoder``: our
K/V-cached step, or NeMo's own ``cache_aware_stream_step``); one call of ``decode`` is one
batched greedy RNNT (label-looping) decode that continues every row from its saved state. GPU
specifics live here and nowhere else: bf16, padding to fixed buckets and CUDA graphs of the
encoder step for those static shapes (buckets only when graphs are on).

All methods must be called from one thread (the scheduler's): NeMo writes
``drop_extra_pre_encoded`` into the encoder's shared ``streaming_cfg`` on every step.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import EngineConfig
from .encoders import CacheLayout, build_encoder
from .features import IncrementalMel
from .slots import DecoderLayout

logger = logging.getLogger(__name__)

FIRST = "first"  # an utterance's first step: chunk_size[0] frames, no pre-encode cache, drop 0
# The step after a first step shorter than the pre-encode cache (80 ms chunks: 1 mel frame):
# only the real frames are fed, so the subsampling convs see their own zero padding as offline
# does (not 8 zero mel frames from before the stream began), and one output fewer is dropped.
SECOND = "second"
LATER = "later"  # every other step: 9 cached mel frames + chunk_size[1] frames, drop 2

_CUDA_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

MEL_TAIL = "mel_tail"  # the pre-encode cache: the last mel frames a later step re-reads


@dataclass
class EncoderOut:
    """Encoder output of a batch (the caches were updated in place)."""

    encoded: torch.Tensor  # [B, d_model, T]
    lengths: torch.Tensor  # [B]


class _CudaGraph:
    """``run`` captured once in a CUDA graph (GPU only); ``replay`` reruns it on its buffers.

    The verified recipe: warm up on a side stream, then capture (autocast's weight cache is
    off in the encoder step). ``out`` holds the captured outputs, rewritten by each replay.
    """

    @staticmethod
    def new_pool(device: torch.device):
        """The memory pool the graphs of one runner share (their intermediates overlap)."""
        return torch.cuda.graph_pool_handle()

    def __init__(self, run: Callable[[], Any], device: torch.device, pool) -> None:
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.out = run()

    def replay(self) -> None:
        self.graph.replay()


class ModelRunner:
    """Executes batched encoder steps and greedy decodes for the engine."""

    # Makes a graph of a step: ``factory(run, device, pool)`` with ``.out`` and ``.replay()``,
    # and ``factory.new_pool(device)`` the memory pool its graphs share. Tests put a CPU fake here.
    graph_factory: type = _CudaGraph

    def __init__(self, model, config: EngineConfig, device: torch.device) -> None:
        from nemo.collections.asr.parts.submodules.transducer_decoding.rnnt_label_looping import (
            GreedyBatchedRNNTLabelLoopingComputer,
        )

        self.model = model
        self.device = device
        self.config = config
        self.features = IncrementalMel(model.preprocessor, device)
        self.n_mels = self.features.n_mels

        cfg = model.encoder.streaming_cfg
        chunk = cfg.chunk_size
        self.chunk_first, self.chunk = (
            (chunk[0], chunk[1]) if isinstance(chunk, list) else (chunk, chunk)
        )
        pre = cfg.pre_encode_cache_size
        self.pre_cache = int(pre[1] if isinstance(pre, list) else pre)
        self.drop_later = int(cfg.drop_extra_pre_encoded)
        self.out_per_step = int(cfg.valid_out_len)
        self.encoder = build_encoder(
            config.encoder,
            model.encoder,
            device=device,
            dtype=config.dtype,
            max_new_frames=self.out_per_step,
        )
        # A second step exists when the first step leaves fewer mel frames than the cache.
        self.has_second = 0 < self.chunk_first < self.pre_cache
        self.drop_second = (
            self._pre_encoded_frames(self.chunk_first + self.chunk)[1] - self.out_per_step
            if self.has_second
            else self.drop_later
        )
        self.widths = self._output_widths()
        enc_layout = self.encoder.layout
        self.cache_layout = CacheLayout(
            templates={
                **enc_layout.templates,
                MEL_TAIL: torch.zeros(1, self.n_mels, self.pre_cache, device=device),
            },
            batch_dims={**enc_layout.batch_dims, MEL_TAIL: 0},
        )

        self.use_cuda = device.type == "cuda"
        self.use_graphs = bool(
            config.cuda_graphs and (self.use_cuda or self.graph_factory is not _CudaGraph)
        )
        if config.cuda_graphs and not self.use_graphs:
            logger.warning("cuda_graphs ignored: device %s is not CUDA", device)
        self.buckets: tuple[int, ...] = ()  # eager calls need no fixed shapes
        if self.use_graphs:
            top = config.max_batch  # the top bucket: the scheduler never plans more rows
            given = config.batch_buckets
            self.buckets = tuple(b for b in (given or _CUDA_BUCKETS) if b < top) + (top,)
        self._graphs: dict[tuple[str, int], _GraphedEncoderStep] = {}
        self._graph_pool = None
        # Bound by ``bind_store``: the slot pool's encoder state, which the graphs read and write
        # in place, and the row that padded rows of a bucket point at.
        self._store: dict[str, torch.Tensor] | None = None
        self._scratch = -1
        self._static_rows: torch.Tensor | None = None
        self._static_mel: dict[int, torch.Tensor] = {}
        self._missed: set[tuple[str, int]] = set()

        decoder, joint = model.decoder, model.joint
        if not getattr(decoder, "blank_as_pad", False):
            raise ValueError(
                "the RNNT decoder must use blank_as_pad (label-looping greedy decoding)"
            )
        self.blank = int(decoder.blank_idx)
        max_symbols = getattr(getattr(model.decoding, "decoding", None), "max_symbols", None)
        self.computer = GreedyBatchedRNNTLabelLoopingComputer(
            decoder=decoder,
            joint=joint,
            blank_index=self.blank,
            max_symbols_per_step=max_symbols or 10,
            allow_cuda_graphs=self.use_graphs,
        )
        self._pred_state_is_tuple = False
        self._n_pred_states = 0
        self.decoder_layout = self._decoder_layout()

    # ---- shapes and templates ----

    @torch.inference_mode()
    def _pre_encoded_frames(self, n_mel: int) -> tuple[int, int]:
        """Frames the pre-encode subsampling makes of ``n_mel`` mel frames: (shape, length)."""
        mel = torch.zeros(1, n_mel, self.n_mels, device=self.device)
        x, lengths = self.model.encoder.pre_encode(
            x=mel, lengths=torch.tensor([n_mel], device=self.device)
        )
        return int(x.shape[1]), int(lengths[0])

    def _output_widths(self) -> dict[str, int] | None:
        """Encoder frames a step of each kind outputs with ``keep_all``; None if not static.

        Every row of a call gets the same number of mel frames, so its output length is the
        output's width: the engine slices and joins outputs by these numbers instead of reading
        lengths back from the device mid-tick. None (a subsampling whose length formula and
        output shape disagree) makes the engine read the lengths instead.
        """
        steps = [
            (FIRST, self.chunk_first, 0),
            (LATER, self.pre_cache + self.chunk, self.drop_later),
        ]
        if self.has_second:
            steps.append((SECOND, self.chunk_first + self.chunk, self.drop_second))
        widths = {}
        for kind, n_mel, drop in steps:
            shape, length = self._pre_encoded_frames(n_mel)
            if shape != length:
                return None
            widths[kind] = shape - drop
        return widths

    def width(self, kind: str, keep_all: bool) -> int | None:
        """Output width of a ``kind`` step (None when not static, see ``_output_widths``)."""
        if self.widths is None:
            return None
        full = self.widths[kind]
        return full if keep_all else min(full, self.out_per_step)

    def _start_state(self, batch: int) -> list[torch.Tensor]:
        labels = torch.full([batch], self.blank, dtype=torch.long, device=self.device)
        out, state, *_ = self.model.decoder.predict(
            labels.unsqueeze(1), None, add_sos=False, batch_size=batch
        )
        out = self.model.joint.project_prednet(out)
        self._pred_state_is_tuple = isinstance(state, tuple)
        self._n_pred_states = len(state)
        return [*state, out, labels]

    def _decoder_layout(self) -> DecoderLayout:
        one, two = self._start_state(1), self._start_state(2)
        dims = []
        for a, b in zip(one, two, strict=True):
            diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y]
            if len(diff) != 1:
                raise ValueError(f"cannot find the batch dim of decoder state {tuple(a.shape)}")
            dims.append(diff[0])
        return DecoderLayout(batch_dims=dims, start=one)

    def bucket(self, batch: int) -> int:
        """Batch size a call of ``batch`` rows is padded to (only with CUDA graphs)."""
        if not self.buckets or batch > self.buckets[-1]:
            return batch
        return self.buckets[bisect.bisect_left(self.buckets, batch)]

    # ---- encoder ----

    def encode(
        self,
        kind: str,
        new_mel: torch.Tensor | list[torch.Tensor],
        caches: dict[str, torch.Tensor],
        rows: torch.Tensor | None = None,
        keep_all: bool = False,
    ) -> EncoderOut:
        """One batched cache-aware encoder step; the rows' caches advance in place.

        Args:
            kind: ``FIRST`` (the rows start an utterance), ``SECOND`` or ``LATER``.
            new_mel: ``[B, n_mels, n]`` new mel frames of each row, or parts of it to be
                joined along the batch (a graph copies each into its static input).
            caches: state tensors in ``cache_layout`` (the slot pool's, or a private copy).
            rows: indices of the B rows in ``caches`` (None: ``caches`` holds exactly B rows).
            keep_all: keep outputs past ``valid_out_len`` (the last step of a final). The
                caches advance the same either way: only the output is cut.

        With graphs, the outputs are views of the graph's own, rewritten by its next replay.
        """
        parts = new_mel if isinstance(new_mel, list) else [new_mel]
        if rows is not None and caches is self._store and self._graphs:
            return self._encode_graphed(kind, parts, rows, keep_all)
        mel = parts[0] if len(parts) == 1 else torch.cat(parts)
        enc, enc_len = self._step(kind, mel, caches, rows, keep_all)
        return EncoderOut(enc, enc_len)

    def _step(
        self,
        kind: str,
        new_mel: torch.Tensor,
        caches: dict[str, torch.Tensor],
        rows: torch.Tensor | None,
        keep_all: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode``'s body: device work only, no host syncs (CUDA graphs capture it)."""
        dims = self.cache_layout.batch_dims
        tail_store = caches[MEL_TAIL]
        if kind == FIRST:
            self.encoder.start(caches, rows)
            mel, drop = new_mel, 0
            # The tail starts with zeros; a second step reads only the real frames of it.
            missing = max(self.pre_cache - new_mel.shape[2], 0)
            joined = torch.nn.functional.pad(new_mel, (missing, 0))
        else:
            tail = tail_store if rows is None else tail_store.index_select(0, rows)
            joined = torch.cat((tail, new_mel), dim=2)
            if kind == SECOND:
                mel, drop = joined[:, :, self.pre_cache - self.chunk_first :], self.drop_second
            else:
                mel, drop = joined, self.drop_later
        new_tail = joined[:, :, -self.pre_cache :]
        if rows is None:
            tail_store.copy_(new_tail)
        else:
            tail_store.index_copy_(dims[MEL_TAIL], rows, new_tail)
        return self.encoder.step(mel, caches, rows, drop=drop, keep_all=keep_all)

    # ---- CUDA graphs of the live step ----

    def bind_store(self, store: dict[str, torch.Tensor], scratch: int) -> None:
        """Let graphs step rows of ``store`` (the slot pool's encoder state) in place.

        Args:
            store: tensors in ``cache_layout``, allocated once (a graph keeps their addresses).
            scratch: a row of ``store`` no stream owns: a bucket's padded rows step it.
        """
        self._store, self._scratch = store, scratch
        top = self.buckets[-1] if self.buckets else 1
        self._static_rows = torch.full((top,), scratch, dtype=torch.long, device=self.device)
        # One set of static inputs at the top bucket; every bucket is captured on slices of it.
        for n in {self.chunk_first, self.chunk}:
            self._static_mel[n] = torch.zeros(top, self.n_mels, n, device=self.device)

    def capture_graphs(self) -> None:
        """Capture every (kind, bucket) step on the bound store (warm-up only).

        The graphs keep all outputs (a final's last step needs them); ``encode`` cuts them to
        ``valid_out_len`` for the other calls, outside the graph.
        """
        if self._store is None:
            raise RuntimeError("bind_store() before capture_graphs()")
        if self._graph_pool is None:
            self._graph_pool = self.graph_factory.new_pool(self.device)
        kinds = [FIRST, SECOND, LATER] if self.has_second else [FIRST, LATER]
        # Largest first: smaller graphs then reuse the pool memory the larger ones freed.
        for batch in sorted(self.buckets, reverse=True):
            for kind in kinds:
                n = self.chunk_first if kind == FIRST else self.chunk
                self._graphs[(kind, batch)] = _GraphedEncoderStep(
                    lambda mel, rows, kind=kind: self._step(kind, mel, self._store, rows, True),
                    self._static_mel[n][:batch],
                    self._static_rows[:batch],
                    self._scratch,
                    lambda run: self.graph_factory(run, self.device, self._graph_pool),
                )
        logger.info("Captured CUDA graphs: %s steps, batch buckets %s", kinds, self.buckets)

    def _encode_graphed(
        self, kind: str, mel_parts: list[torch.Tensor], rows: torch.Tensor, keep_all: bool
    ) -> EncoderOut:
        batch, top = rows.shape[0], self.buckets[-1]
        if batch > top:  # live rows plus finals' rows: split rather than capture a new shape
            new_mel = mel_parts[0] if len(mel_parts) == 1 else torch.cat(mel_parts)
            parts = [
                self._encode_graphed(kind, [new_mel[i : i + top]], rows[i : i + top], keep_all)
                for i in range(0, batch, top)
            ]
            # Each part is a view of a graph's output, which the next replay overwrites.
            return EncoderOut(
                torch.cat([p.encoded.clone() for p in parts]),
                torch.cat([p.lengths.clone() for p in parts]),
            )
        key = (kind, self.bucket(batch))
        step = self._graphs.get(key)
        if step is None:  # nothing is captured after warm-up (it would stall the scheduler)
            if key not in self._missed:
                self._missed.add(key)
                logger.warning("no CUDA graph for %s step of batch %d: running it eagerly", *key)
            new_mel = mel_parts[0] if len(mel_parts) == 1 else torch.cat(mel_parts)
            return EncoderOut(*self._step(kind, new_mel, self._store, rows, keep_all))
        enc, enc_len = step(mel_parts, rows)
        if not keep_all and enc.shape[2] > self.out_per_step:
            enc, enc_len = enc[:, :, : self.out_per_step], enc_len.clamp(max=self.out_per_step)
        return EncoderOut(enc, enc_len)

    def device_done(self) -> Callable[[], bool]:
        """A check of whether the device has run everything queued so far (a CUDA event).

        On CPU every call has run when it returns: always True.
        """
        if not self.use_cuda:
            return lambda: True
        event = torch.cuda.Event()
        event.record()
        return event.query

    # ---- decoder ----

    def _to_nemo_state(self, state: list[torch.Tensor]):
        from nemo.collections.asr.parts.submodules.transducer_decoding.label_looping_base import (
            BatchedLabelLoopingState,
        )

        n = self._n_pred_states
        pred = tuple(state[:n]) if self._pred_state_is_tuple else list(state[:n])
        labels = state[n + 1]
        return BatchedLabelLoopingState(
            predictor_states=pred,
            predictor_outputs=state[n],
            labels=labels,
            decoded_lengths=torch.zeros_like(labels),
            fusion_states_list=[],
            time_jumps=None,
        )

    def decode(
        self, encoded: torch.Tensor, lengths: torch.Tensor, state: list[torch.Tensor]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[torch.Tensor]]:
        """One batched greedy decode continuing each row from ``state``.

        Args:
            encoded: ``[B, d_model, T]`` encoder output (rows padded past ``lengths``).
            lengths: valid frames per row.
            state: decoder state tensors (layout ``decoder_layout``).

        Returns:
            ``counts`` ``[B]`` new tokens per row; ``ids`` and ``frames`` ``[B, W]`` int64 (row
            ``i`` valid up to ``counts[i]``; frames index the row's ``T``); the new decoder
            state. Arrays, not per-row lists: most rows of a tick emit nothing.
        """
        # The decoder and joint are small: they run in fp32 even in bf16 mode (the bf16 LSTM has
        # no oneDNN kernel on CPU, and fp32 keeps greedy argmax ties out of the picture).
        hyps, new = self.computer(
            x=encoded.float().transpose(1, 2),
            out_len=lengths,
            prev_batched_state=self._to_nemo_state(state),
        )
        counts = hyps.current_lengths.cpu().numpy().astype(np.int64)
        width = int(counts.max(initial=0))
        ids = hyps.transcript[:, :width].cpu().numpy().astype(np.int64)
        frames = hyps.timestamps[:, :width].cpu().numpy().astype(np.int64)
        pred = list(new.predictor_states)
        return counts, ids, frames, [*pred, new.predictor_outputs, new.labels]

    # ---- warm-up ----

    def warmup(self, max_batch: int) -> None:
        """Run every step shape once; with CUDA graphs, capture them all (nothing is later).

        Raises:
            RuntimeError: the graphs of the buckets asked for do not fit in GPU memory.
        """
        n_first = self.features.window_length(self.chunk_first)
        n_later = self.features.window_length(self.chunk)
        kinds = [SECOND, LATER] if self.has_second else [LATER]
        if self.use_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        # Eager kernels (finals run eagerly) and the decoder, at batch 1.
        caches = self.cache_layout.zeros(1)
        mel = self.features.compute(np.zeros((1, n_first), np.float32), self.chunk_first)
        out = self.encode(FIRST, mel, caches)
        mel = self.features.compute(np.zeros((1, n_later), np.float32), self.chunk)
        for kind in kinds:
            out = self.encode(kind, mel, caches)
        sizes = list(self.buckets) or [1]
        for batch in sizes:
            state = [
                s.expand(*[batch if i == d else -1 for i in range(s.dim())]).clone()
                for s, d in zip(
                    self.decoder_layout.start, self.decoder_layout.batch_dims, strict=True
                )
            ]
            encoded = out.encoded.expand(batch, -1, -1).contiguous()
            self.decode(encoded, out.lengths.expand(batch).contiguous(), state)
        if self.use_graphs and self._store is not None:
            try:
                self.capture_graphs()
            except torch.cuda.OutOfMemoryError as exc:
                raise RuntimeError(
                    f"CUDA graphs for batch buckets up to {self.buckets[-1]} do not fit in GPU "
                    f"memory ({_gib(torch.cuda.max_memory_allocated(self.device))} GiB peak "
                    "before failing): lower stt max_batch (or max_streams), or turn "
                    "cuda_graphs off"
                ) from exc
        if self.use_cuda:
            torch.cuda.synchronize(self.device)
            free, total = torch.cuda.mem_get_info(self.device)
            logger.info(
                "ASR warm-up peak GPU memory %s GiB (%s GiB of %s GiB free now)",
                _gib(torch.cuda.max_memory_allocated(self.device)),
                _gib(free),
                _gib(total),
            )
        logger.info("ASR warm-up done (%s encoder) for batch sizes %s", self.encoder.name, sizes)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f}"


class _GraphedEncoderStep:
    """The live step of one (kind, bucket) in a graph; the pool rows are read and written in it.

    Inputs are slices of static buffers shared by every bucket: ``mel [bucket, n_mels, n]`` and
    ``rows [bucket]`` (slot indices; padded rows point at the scratch slot, which absorbs their
    writes). The graph gathers the rows' caches, steps them and writes them back in place, so
    nothing is copied around it but the new mel frames and the row indices in, and the outputs
    are views (``[:n]``) of the graph's own, valid until its next replay.
    """

    def __init__(
        self,
        step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        mel: torch.Tensor,
        rows: torch.Tensor,
        scratch: int,
        capture: Callable[[Callable[[], Any]], Any],
    ) -> None:
        self.mel, self.rows, self.scratch = mel, rows, scratch
        self.rows.fill_(scratch)  # capture runs (and warm-up) touch only the scratch slot
        self.graph = capture(lambda: step(self.mel, self.rows))

    def __call__(
        self, mel_parts: list[torch.Tensor], rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = 0
        for part in mel_parts:  # each part straight into its slice of the static input
            self.mel[n : n + part.shape[0]].copy_(part)
            n += part.shape[0]
        self.rows[:n].copy_(rows)
        self.rows[n:].fill_(self.scratch)
        self.graph.replay()
        enc, enc_len = self.graph.out
        return enc[:n], enc_len[:n]
