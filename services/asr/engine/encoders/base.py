"""What the model runner needs from a streaming encoder: a cache layout and an in-place step.

Two implementations sit behind this protocol, chosen by ``EngineConfig.encoder``:

- ``nemo`` (``nemo_step.NemoStep``): NeMo's own ``cache_aware_stream_step``, the reference.
- ``fast`` (``kv_cached.KVCachedStep``): our FastConformer step that caches projected keys and
  values in a ring instead of re-projecting 70 cached layer inputs in every layer, every step.

Both keep per-stream state in named tensors with one batch dim each (the slot pool stores them
for every stream) and update the rows of a call in place, so the engine can hand either one the
pool itself (live steps) or a private copy (finals, which must not touch the live state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class CacheLayout:
    """Per-stream state tensors: a batch-1 zero template of each and the batch dim of each.

    Attributes:
        templates: name -> tensor with batch size 1 (gives shape, dtype and device).
        batch_dims: name -> the dim that indexes streams.
    """

    templates: dict[str, torch.Tensor]
    batch_dims: dict[str, int]

    def zeros(self, batch: int) -> dict[str, torch.Tensor]:
        """Fresh zero tensors for ``batch`` streams."""
        out = {}
        for name, t in self.templates.items():
            shape = list(t.shape)
            shape[self.batch_dims[name]] = batch
            out[name] = t.new_zeros(shape)
        return out

    def nbytes_per_stream(self) -> int:
        """Bytes of state one stream holds."""
        return sum(t.numel() * t.element_size() for t in self.templates.values())


def select_rows(
    caches: dict[str, torch.Tensor], dims: dict[str, int], rows: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Copies of ``rows`` of the tensors named in ``dims`` (the tensors when ``rows`` is None)."""
    if rows is None:
        return {name: caches[name] for name in dims}
    return {name: caches[name].index_select(dim, rows) for name, dim in dims.items()}


def write_rows(
    caches: dict[str, torch.Tensor],
    dims: dict[str, int],
    rows: torch.Tensor | None,
    values: dict[str, torch.Tensor],
) -> None:
    """Write ``values`` (one row per index of ``rows``) into ``caches`` in place."""
    for name, value in values.items():
        t = caches[name]
        src = value.to(t.dtype)
        if rows is None:
            t.copy_(src)
        else:
            t.index_copy_(dims[name], rows, src)


class StreamingEncoder(Protocol):
    """A cache-aware encoder step over named per-stream state tensors.

    ``rows`` is a long tensor of B distinct indices into the caches' batch dims (on the device),
    or None when the caches hold exactly the B rows of the call, in order.
    """

    name: str
    layout: CacheLayout

    def start(self, caches: dict[str, torch.Tensor], rows: torch.Tensor | None) -> None:
        """Put ``rows`` in the state of a stream that has heard nothing (before a first step)."""
        ...

    def step(
        self,
        mel: torch.Tensor,
        caches: dict[str, torch.Tensor],
        rows: torch.Tensor | None,
        *,
        drop: int,
        keep_all: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One cache-aware step; the rows' caches are updated in place.

        Args:
            mel: ``[B, n_mels, n]`` fp32 features (pre-encode cache frames included), every row
                ``n`` frames long.
            caches: the state tensors (``layout``), B rows of them selected by ``rows``.
            rows: which rows of ``caches`` the B inputs belong to (None: all, in order).
            drop: pre-encoded frames to drop from the front (they belong to the previous step).
            keep_all: keep outputs past ``valid_out_len`` (the last step of a final).

        Returns:
            ``encoded [B, d_model, T]`` and ``lengths [B]`` (int64).
        """
        ...
