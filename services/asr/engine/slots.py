"""Slot pool: every stream's model state lives in one row ("slot") of shared tensors.

The encoder state is whatever the configured encoder step keeps (``encoders.CacheLayout``: named
tensors, each with its batch dim), plus the mel frames the next step re-reads (the pre-encode
cache). Live steps update their rows in place; a final works on a copy (``gather_encoder``). The
decoder state (LSTM ``h``/``c``, last predictor output, last label) lives here too. The pool grows
by doubling up to ``max_slots`` and never shrinks: freed slots are reused, and a stream's first
step puts its row in the start state before reading it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from .encoders import CacheLayout


@dataclass
class DecoderLayout:
    """How a decoder state is laid out: tensors, the batch dim of each, the start state."""

    batch_dims: list[int]
    start: list[torch.Tensor]  # the state after <SOS>, batch size 1


class SlotPool:
    """Fixed-layout per-stream state tensors with acquire/release of rows."""

    def __init__(
        self,
        encoder: CacheLayout,
        decoder: DecoderLayout,
        max_slots: int,
        initial_slots: int = 8,
        scratch: bool = False,
    ) -> None:
        """Args:
        encoder: the encoder state layout (batch-1 templates and batch dims).
        decoder: decoder state layout with its start state.
        max_slots: hard cap on slots.
        initial_slots: rows allocated up front (grows by doubling).
        scratch: allocate every slot now, plus one row (``scratch``) no stream gets, and never
            grow: CUDA graphs keep the tensors' addresses and pad their buckets with that row.
        """
        self.max_slots = max_slots
        self._layout = encoder
        self._decoder = decoder
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._in_use: set[int] = set()
        self.capacity = 0
        self.encoder_state: dict[str, torch.Tensor] = {}
        self._dec: list[torch.Tensor] = []
        self.scratch: int | None = None
        if scratch:
            self._grow(max_slots + 1)
            with self._lock:
                self.scratch = max_slots
                self._free.remove(max_slots)
                self.capacity = max_slots
        else:
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
        dims = self._layout.batch_dims
        new_enc = self._layout.zeros(new_capacity)
        for name, buf in new_enc.items():
            if old:
                buf.narrow(dims[name], 0, old).copy_(self.encoder_state[name])
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
        self.encoder_state, self._dec = new_enc, new_dec
        with self._lock:
            # Hand out low slot numbers first (pop() takes from the end).
            self._free = list(range(new_capacity - 1, old - 1, -1)) + self._free
            self.capacity = new_capacity

    # -- tensor access (scheduler thread only) --

    def gather_encoder(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Copies of the encoder state of slots ``idx`` (a long tensor on the pool device)."""
        dims = self._layout.batch_dims
        return {name: t.index_select(dims[name], idx) for name, t in self.encoder_state.items()}

    def copy_encoder(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the encoder state of slots ``src`` into slots ``dst`` (long tensors, same size)."""
        dims = self._layout.batch_dims
        for name, t in self.encoder_state.items():
            t.index_copy_(dims[name], dst, t.index_select(dims[name], src))

    def initial_encoder(self, batch: int) -> dict[str, torch.Tensor]:
        """Zero encoder state for ``batch`` streams starting an utterance (not in any slot)."""
        return self._layout.zeros(batch)

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
        tensors = (*self.encoder_state.values(), *self._dec)
        return sum(t.numel() * t.element_size() for t in tensors)
