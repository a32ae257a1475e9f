"""Model runner: the only code that calls the model.

One call of ``encode`` is one batched ``cache_aware_stream_step``; one call of ``decode`` is one
batched greedy RNNT (label-looping) decode that continues every row from its saved state. GPU
specifics live here and nowhere else: bf16 autocast, padding batches up to fixed buckets, and
CUDA graphs of the encoder step for those static shapes.

All methods must be called from one thread (the scheduler's): NeMo writes
``drop_extra_pre_encoded`` into the encoder's shared ``streaming_cfg`` on every step.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from .config import EngineConfig
from .features import IncrementalMel
from .slots import DecoderLayout, EncoderCaches

logger = logging.getLogger(__name__)

FIRST = "first"  # an utterance's first step: chunk_size[0] frames, no pre-encode cache, drop 0
LATER = "later"  # every other step: 9 cached mel frames + chunk_size[1] frames, drop 2

_CUDA_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass
class EncoderOut:
    """Encoder output of a batch plus the updated caches."""

    encoded: torch.Tensor  # [B, d_model, T]
    lengths: torch.Tensor  # [B]
    caches: EncoderCaches


class ModelRunner:
    """Executes batched encoder steps and greedy decodes for the engine."""

    def __init__(self, model, config: EngineConfig, device: torch.device) -> None:
        from nemo.collections.asr.parts.submodules.transducer_decoding.rnnt_label_looping import (
            GreedyBatchedRNNTLabelLoopingComputer,
        )

        self.model = model
        self.encoder = model.encoder
        self.device = device
        self.config = config
        self.features = IncrementalMel(model.preprocessor, device)
        self.n_mels = self.features.n_mels

        cfg = self.encoder.streaming_cfg
        chunk = cfg.chunk_size
        self.chunk_first, self.chunk = (
            (chunk[0], chunk[1])
            if isinstance(chunk, list)
            else (
                chunk,
                chunk,
            )
        )
        pre = cfg.pre_encode_cache_size
        self.pre_cache = int(pre[1] if isinstance(pre, list) else pre)
        self.drop_later = int(cfg.drop_extra_pre_encoded)
        self.out_per_step = int(cfg.valid_out_len)

        self.autocast_dtype = torch.bfloat16 if config.dtype == "bf16" else None
        self.cache_dtype = torch.bfloat16 if config.dtype == "bf16" else torch.float32
        self.use_cuda = device.type == "cuda"
        if config.batch_buckets:
            self.buckets: tuple[int, ...] = config.batch_buckets
        elif self.use_cuda:
            top = next((b for b in _CUDA_BUCKETS if b >= config.max_batch), config.max_batch)
            self.buckets = tuple(b for b in _CUDA_BUCKETS if b < top) + (top,)
        else:
            self.buckets = ()
        self.use_graphs = bool(config.cuda_graphs and self.use_cuda)
        if config.cuda_graphs and not self.use_cuda:
            logger.warning("cuda_graphs ignored: device %s is not CUDA", device)
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

    def encoder_template(self) -> EncoderCaches:
        """Batch-1 zero caches: shapes, dtypes and device of every per-stream encoder tensor."""
        ch, ct, ch_len = self.encoder.get_initial_cache_state(
            batch_size=1, dtype=self.cache_dtype, device=self.device
        )
        tail = torch.zeros(1, self.n_mels, self.pre_cache, device=self.device)
        return EncoderCaches(ch, ct, ch_len, tail)

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
        """Batch size a call of ``batch`` rows is padded to."""
        if not self.buckets or batch > self.buckets[-1]:
            return batch
        return self.buckets[bisect.bisect_left(self.buckets, batch)]

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # cache_enabled=False: cached weight casts would be baked into CUDA graphs.
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    # ---- encoder ----

    def _encoder_eager(self, mel, mel_len, ch, ct, ch_len, drop: int, keep_all: bool):
        with self._autocast():
            return self.encoder.cache_aware_stream_step(
                processed_signal=mel,
                processed_signal_length=mel_len,
                cache_last_channel=ch,
                cache_last_time=ct,
                cache_last_channel_len=ch_len,
                keep_all_outputs=keep_all,
                drop_extra_pre_encoded=drop,
            )

    def encode(
        self, kind: str, new_mel: torch.Tensor, caches: EncoderCaches, keep_all: bool = False
    ) -> EncoderOut:
        """One batched cache-aware encoder step.

        Args:
            kind: ``FIRST`` (caches must be zeros) or ``LATER``.
            new_mel: ``[B, n_mels, n]`` new mel frames of each row.
            caches: the rows' caches (their ``mel_tail`` holds the previous frames).
            keep_all: keep outputs past ``valid_out_len`` (the last step of a final).
        """
        batch = new_mel.shape[0]
        joined = torch.cat((caches.mel_tail, new_mel), dim=2)
        new_tail = joined[:, :, -self.pre_cache :]
        if kind == FIRST:
            mel, drop = new_mel, 0
        else:
            mel, drop = joined, self.drop_later
        ch, ct, ch_len = caches.last_channel, caches.last_time, caches.last_channel_len
        padded = self.bucket(batch)
        if padded != batch:
            extra = padded - batch
            # Zero rows are a valid (silent, fresh) stream; their outputs are dropped below.
            mel = torch.cat((mel, mel.new_zeros((extra, *mel.shape[1:]))), 0)
            ch = torch.cat((ch, ch.new_zeros((ch.shape[0], extra, *ch.shape[2:]))), 1)
            ct = torch.cat((ct, ct.new_zeros((ct.shape[0], extra, *ct.shape[2:]))), 1)
            ch_len = torch.cat((ch_len, ch_len.new_zeros(extra)), 0)
        mel_len = torch.full((padded,), mel.shape[2], dtype=torch.long, device=self.device)
        if self.use_graphs and not keep_all:
            step = self._graphs.get((kind, padded))
            if step is None:
                step = self._capture(kind, padded, mel.shape[2])
            enc, enc_len, ch, ct, ch_len = step(mel, mel_len, ch, ct, ch_len)
        else:
            enc, enc_len, ch, ct, ch_len = self._encoder_eager(
                mel, mel_len, ch, ct, ch_len, drop, keep_all
            )
        if padded != batch:
            enc, enc_len = enc[:batch], enc_len[:batch]
            ch, ct, ch_len = ch[:, :batch], ct[:, :batch], ch_len[:batch]
        return EncoderOut(enc, enc_len, EncoderCaches(ch, ct, ch_len, new_tail))

    def _capture(self, kind: str, batch: int, n_frames: int) -> _GraphedEncoderStep:
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        drop = 0 if kind == FIRST else self.drop_later
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
    ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """One batched greedy decode continuing each row from ``state``.

        Args:
            encoded: ``[B, d_model, T]`` encoder output (rows padded past ``lengths``).
            lengths: valid frames per row.
            state: decoder state tensors (layout ``decoder_layout``).

        Returns:
            New token ids per row, and the new decoder state.
        """
        # The decoder and joint are small: they run in fp32 even in bf16 mode (the bf16 LSTM has
        # no oneDNN kernel on CPU, and fp32 keeps greedy argmax ties out of the picture).
        hyps, new = self.computer(
            x=encoded.float().transpose(1, 2),
            out_len=lengths,
            prev_batched_state=self._to_nemo_state(state),
        )
        counts = hyps.current_lengths.tolist()
        width = max(counts, default=0)
        rows = hyps.transcript[:, :width].tolist() if width else [[] for _ in counts]
        tokens = [row[:n] for row, n in zip(rows, counts, strict=True)]
        pred = list(new.predictor_states)
        return tokens, [*pred, new.predictor_outputs, new.labels]

    # ---- warm-up ----

    def warmup(self, max_batch: int) -> None:
        """Run (and on CUDA with graphs, capture) every step shape that will be used."""
        sizes = [b for b in self.buckets if b <= self.bucket(max_batch)] or [1]
        if not self.use_cuda:
            sizes = sizes[:1]
        n_first = self.features.window_length(self.chunk_first)
        n_later = self.features.window_length(self.chunk)
        template = self.encoder_template()
        for batch in sizes:
            mel_first = self.features.compute(
                np.zeros((batch, n_first), np.float32), self.chunk_first
            )
            mel_later = self.features.compute(np.zeros((batch, n_later), np.float32), self.chunk)
            zeros = _zero_caches(template, batch)
            first = self.encode(FIRST, mel_first, zeros)
            later = self.encode(LATER, mel_later, first.caches)
            state = [
                s.expand(*[batch if i == d else -1 for i in range(s.dim())]).clone()
                for s, d in zip(
                    self.decoder_layout.start, self.decoder_layout.batch_dims, strict=True
                )
            ]
            self.decode(later.encoded, later.lengths, state)
        if self.use_cuda:
            torch.cuda.synchronize(self.device)
        logger.info("ASR warm-up done for batch sizes %s", sizes)


def _zero_caches(template: EncoderCaches, batch: int) -> EncoderCaches:
    def rep(t: torch.Tensor, dim: int) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = batch
        return t.new_zeros(shape)

    return EncoderCaches(
        rep(template.last_channel, 1),
        rep(template.last_time, 1),
        rep(template.last_channel_len, 0),
        rep(template.mel_tail, 0),
    )


class _GraphedEncoderStep:
    """The encoder step for one (kind, batch) captured in a CUDA graph (GPU only).

    Inputs are copied into static buffers, the graph is replayed and the static outputs are
    cloned (the next replay overwrites them). Capture follows the verified recipe: warm up on a
    side stream, then capture with autocast's weight cache disabled.
    """

    def __init__(self, runner: ModelRunner, batch: int, n_frames: int, drop: int, pool) -> None:
        dev = runner.device
        template = runner.encoder_template()
        zeros = _zero_caches(template, batch)
        self.mel = torch.zeros(batch, runner.n_mels, n_frames, device=dev)
        self.mel_len = torch.full((batch,), n_frames, dtype=torch.long, device=dev)
        self.ch = zeros.last_channel
        self.ct = zeros.last_time
        self.ch_len = zeros.last_channel_len

        def run():
            return runner._encoder_eager(
                self.mel, self.mel_len, self.ch, self.ct, self.ch_len, drop, False
            )

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

    def __call__(self, mel, mel_len, ch, ct, ch_len):
        self.mel.copy_(mel)
        self.mel_len.copy_(mel_len)
        self.ch.copy_(ch)
        self.ct.copy_(ct)
        self.ch_len.copy_(ch_len)
        self.graph.replay()
        return tuple(t.clone() for t in self.out)
