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
from dataclasses import dataclass

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


class ModelRunner:
    """Executes batched encoder steps and greedy decodes for the engine."""

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
            self._pre_encoded_frames(self.chunk_first + self.chunk) - self.out_per_step
            if self.has_second
            else self.drop_later
        )
        enc_layout = self.encoder.layout
        self.cache_layout = CacheLayout(
            templates={
                **enc_layout.templates,
                MEL_TAIL: torch.zeros(1, self.n_mels, self.pre_cache, device=device),
            },
            batch_dims={**enc_layout.batch_dims, MEL_TAIL: 0},
        )

        self.use_cuda = device.type == "cuda"
        self.use_graphs = bool(config.cuda_graphs and self.use_cuda)
        if config.cuda_graphs and not self.use_cuda:
            logger.warning("cuda_graphs ignored: device %s is not CUDA", device)
        if not self.use_graphs:
            self.buckets: tuple[int, ...] = ()  # eager calls need no fixed shapes
        elif config.batch_buckets:
            self.buckets = config.batch_buckets
        else:
            top = next((b for b in _CUDA_BUCKETS if b >= config.max_batch), config.max_batch)
            self.buckets = tuple(b for b in _CUDA_BUCKETS if b < top) + (top,)
        self._graphs: dict[tuple[str, int], _GraphedEncoderStep] = {}
        self._graph_pool = None

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
    def _pre_encoded_frames(self, n_mel: int) -> int:
        """Frames the pre-encode subsampling makes of ``n_mel`` mel frames."""
        mel = torch.zeros(1, n_mel, self.n_mels, device=self.device)
        _, lengths = self.model.encoder.pre_encode(
            x=mel, lengths=torch.tensor([n_mel], device=self.device)
        )
        return int(lengths[0])

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
        new_mel: torch.Tensor,
        caches: dict[str, torch.Tensor],
        rows: torch.Tensor | None = None,
        keep_all: bool = False,
    ) -> EncoderOut:
        """One batched cache-aware encoder step; the rows' caches advance in place.

        Args:
            kind: ``FIRST`` (the rows start an utterance), ``SECOND`` or ``LATER``.
            new_mel: ``[B, n_mels, n]`` new mel frames of each row.
            caches: state tensors in ``cache_layout`` (the slot pool's, or a private copy).
            rows: indices of the B rows in ``caches`` (None: ``caches`` holds exactly B rows).
            keep_all: keep outputs past ``valid_out_len`` (the last step of a final).
        """
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
        if self.use_graphs and not keep_all and mel.shape[0] <= self.buckets[-1]:
            step = self._graphs.get((kind, self.bucket(mel.shape[0])))
            if step is None:
                step = self._capture(kind, self.bucket(mel.shape[0]), mel.shape[2], drop)
            enc, enc_len = step(mel, caches, rows)
        else:
            enc, enc_len = self.encoder.step(mel, caches, rows, drop=drop, keep_all=keep_all)
        return EncoderOut(enc, enc_len)

    def _capture(self, kind: str, batch: int, n_frames: int, drop: int) -> _GraphedEncoderStep:
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        step = _GraphedEncoderStep(self, batch, n_frames, drop, self._graph_pool)
        self._graphs[(kind, batch)] = step
        logger.info("Captured CUDA graph: %s step, batch %d", kind, batch)
        return step

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
        """Run (and on CUDA with graphs, capture) every step shape that will be used."""
        sizes = [b for b in self.buckets if b <= self.bucket(max_batch)] or [1]
        n_first = self.features.window_length(self.chunk_first)
        n_later = self.features.window_length(self.chunk)
        kinds = [SECOND, LATER] if self.has_second else [LATER]
        for batch in sizes:
            caches = self.cache_layout.zeros(batch)
            mel = self.features.compute(np.zeros((batch, n_first), np.float32), self.chunk_first)
            out = self.encode(FIRST, mel, caches)
            mel = self.features.compute(np.zeros((batch, n_later), np.float32), self.chunk)
            for kind in kinds:
                out = self.encode(kind, mel, caches)
            state = [
                s.expand(*[batch if i == d else -1 for i in range(s.dim())]).clone()
                for s, d in zip(
                    self.decoder_layout.start, self.decoder_layout.batch_dims, strict=True
                )
            ]
            self.decode(out.encoded, out.lengths, state)
        if self.use_cuda:
            torch.cuda.synchronize(self.device)
        logger.info("ASR warm-up done (%s encoder) for batch sizes %s", self.encoder.name, sizes)


class _GraphedEncoderStep:
    """The encoder step for one (kind, batch) captured in a CUDA graph (GPU only).

    The graph runs the step on static buffers: the rows' caches are copied in, the graph is
    replayed, the updated caches are copied back and the outputs cloned (the next replay
    overwrites them). Rows past the call's batch hold stale but finite state; their outputs are
    dropped. Capture follows the verified recipe: warm up on a side stream, then capture with
    autocast's weight cache disabled.
    """

    def __init__(self, runner: ModelRunner, batch: int, n_frames: int, drop: int, pool) -> None:
        dev = runner.device
        self.encoder = runner.encoder
        self.dims = runner.encoder.layout.batch_dims
        self.caches = runner.encoder.layout.zeros(batch)
        self.mel = torch.zeros(batch, runner.n_mels, n_frames, device=dev)

        def run():
            return self.encoder.step(self.mel, self.caches, None, drop=drop, keep_all=False)

        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(3):
                run()
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.out = run()
        torch.cuda.synchronize(dev)

    def __call__(self, mel, caches, rows):
        n = mel.shape[0]
        self.mel[:n].copy_(mel)
        for name, static in self.caches.items():
            src = caches[name] if rows is None else caches[name].index_select(self.dims[name], rows)
            static.narrow(self.dims[name], 0, n).copy_(src)
        self.graph.replay()
        for name, static in self.caches.items():
            dim = self.dims[name]
            if rows is None:
                caches[name].copy_(static.narrow(dim, 0, n))
            else:
                caches[name].index_copy_(dim, rows, static.narrow(dim, 0, n))
        enc, enc_len = self.out
        return enc[:n].clone(), enc_len[:n].clone()
