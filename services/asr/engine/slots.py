"""Slot pool: every stream's model state lives in one row ("slot") of shared tensors.

Encoder caches are stored as ``[layers, slots, ...]`` exactly as NeMo's encoder takes them, so a
batch is one ``index_select`` along dim 1 and the update one ``index_copy_``. The decoder state
(LSTM ``h``/``c``, last predictor output, last label) and the 9 mel frames the next step re-reads
(the pre-encode cache) live here too. The pool grows by doubling up to ``max_slots`` and never
shrinks: freed slots are reused, and a fresh stream's first step never reads its slot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch


@dataclass
class EncoderCaches:
    """Cache tensors of a batch, in NeMo's layout."""

    last_channel: torch.Tensor  # [layers, B, left_context, d_model]
    last_time: torch.Tensor  # [layers, B, d_model, conv_kernel - 1]
    last_channel_len: torch.Tensor  # [B] int64
    mel_tail: torch.Tensor  # [B, n_mels, pre_encode_cache] fp32


@dataclass
class DecoderLayout:
    """How a decoder state is laid out: tensors, the batch dim of each, the start state."""

    batch_dims: list[int]
    start: list[torch.Tensor]  # the state after <SOS>, batch size 1


class SlotPool:
    """Fixed-layout per-stream state tensors with acquire/release of rows."""

    def __init__(
        self,
        template: EncoderCaches,
        decoder: DecoderLayout,
        max_slots: int,
        initial_slots: int = 8,
    ) -> None:
        """Args:
        template: batch-1 caches giving shapes, dtypes and device of each tensor.
        decoder: decoder state layout with its start state.
        max_slots: hard cap on slots.
        initial_slots: rows allocated up front (grows by doubling).
        """
        self.max_slots = max_slots
        self._template = template
        self._decoder = decoder
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._in_use: set[int] = set()
        self.capacity = 0
        self._enc: list[torch.Tensor] = []
        self._dec: list[torch.Tensor] = []
        self._grow(min(max(initial_slots, 1), max_slots))

    # -- allocation (acquire on the scheduler thread; release from any thread) --

    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._in_use)

    def acquire(self) -> int:
        """Take a free slot, growing the tensors if needed (call from the scheduler thread)."""
        with self._lock:
            if not self._free:
                if self.capacity >= self.max_slots:
                    raise RuntimeError(f"all {self.max_slots} slots are in use")
                grow_to = min(self.capacity * 2, self.max_slots)
            else:
                grow_to = 0
        if grow_to:
            self._grow(grow_to)
        with self._lock:
            slot = self._free.pop()
            self._in_use.add(slot)
            return slot

    def release(self, slot: int) -> None:
        """Give a slot back; idempotent."""
        with self._lock:
            if slot in self._in_use:
                self._in_use.discard(slot)
                self._free.append(slot)

    def _grow(self, new_capacity: int) -> None:
        old = self.capacity
        t = self._template
        enc_dims = (1, 1, 0, 0)
        new_enc = []
        for i, (src, dim) in enumerate(
            zip(
                (t.last_channel, t.last_time, t.last_channel_len, t.mel_tail), enc_dims, strict=True
            )
        ):
            shape = list(src.shape)
            shape[dim] = new_capacity
            buf = torch.zeros(shape, dtype=src.dtype, device=src.device)
            if old:
                buf.narrow(dim, 0, old).copy_(self._enc[i])
            new_enc.append(buf)
        new_dec = []
        for i, (src, dim) in enumerate(
            zip(self._decoder.start, self._decoder.batch_dims, strict=True)
        ):
            shape = list(src.shape)
            shape[dim] = new_capacity
            buf = torch.zeros(shape, dtype=src.dtype, device=src.device)
            if old:
                buf.narrow(dim, 0, old).copy_(self._dec[i])
            new_dec.append(buf)
        self._enc, self._dec = new_enc, new_dec
        with self._lock:
            # Hand out low slot numbers first (pop() takes from the end).
            self._free = list(range(new_capacity - 1, old - 1, -1)) + self._free
            self.capacity = new_capacity

    # -- tensor access (scheduler thread only) --

    def gather_encoder(self, idx: torch.Tensor) -> EncoderCaches:
        """Copies of the encoder caches of slots ``idx`` (a long tensor on the pool device)."""
        ch, ct, ch_len, tail = self._enc
        return EncoderCaches(
            ch.index_select(1, idx),
            ct.index_select(1, idx),
            ch_len.index_select(0, idx),
            tail.index_select(0, idx),
        )

    def scatter_encoder(self, idx: torch.Tensor, caches: EncoderCaches) -> None:
        """Write the caches of a batch back into slots ``idx``."""
        ch, ct, ch_len, tail = self._enc
        ch.index_copy_(1, idx, caches.last_channel.to(ch.dtype))
        ct.index_copy_(1, idx, caches.last_time.to(ct.dtype))
        ch_len.index_copy_(0, idx, caches.last_channel_len.to(ch_len.dtype))
        tail.index_copy_(0, idx, caches.mel_tail.to(tail.dtype))

    def initial_encoder(self, batch: int) -> EncoderCaches:
        """Zero caches for ``batch`` streams starting an utterance."""
        t = self._template
        return EncoderCaches(
            t.last_channel.new_zeros((t.last_channel.shape[0], batch, *t.last_channel.shape[2:])),
            t.last_time.new_zeros((t.last_time.shape[0], batch, *t.last_time.shape[2:])),
            t.last_channel_len.new_zeros((batch,)),
            t.mel_tail.new_zeros((batch, *t.mel_tail.shape[1:])),
        )

    def gather_decoder(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Copies of the decoder states of slots ``idx``."""
        return [
            buf.index_select(d, idx)
            for buf, d in zip(self._dec, self._decoder.batch_dims, strict=True)
        ]

    def scatter_decoder(self, idx: torch.Tensor, state: list[torch.Tensor]) -> None:
        """Write decoder states of a batch back into slots ``idx``."""
        for buf, d, src in zip(self._dec, self._decoder.batch_dims, state, strict=True):
            buf.index_copy_(d, idx, src.to(buf.dtype))

    def reset_decoder(self, idx: torch.Tensor) -> None:
        """Put slots ``idx`` in the decoder start state (a new utterance)."""
        n = idx.numel()
        start = [
            s.expand(*[n if i == d else -1 for i in range(s.dim())])
            for s, d in zip(self._decoder.start, self._decoder.batch_dims, strict=True)
        ]
        self.scatter_decoder(idx, start)

    def start_decoder(self, batch: int) -> list[torch.Tensor]:
        """Decoder start states for ``batch`` rows (not stored in any slot)."""
        return [
            s.expand(*[batch if i == d else -1 for i in range(s.dim())]).clone()
            for s, d in zip(self._decoder.start, self._decoder.batch_dims, strict=True)
        ]

    def nbytes(self) -> int:
        """Bytes held by the pool tensors."""
        return sum(t.numel() * t.element_size() for t in (*self._enc, *self._dec))
