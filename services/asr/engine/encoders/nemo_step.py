"""The reference encoder step: NeMo's own ``cache_aware_stream_step``, unchanged.

Its attention cache holds the last 70 *inputs* of every layer ``[layers, B, 70, d_model]``;
keys and values are re-projected from them in every layer at every step. Kept as the
reference the fast step is tested against and selectable with ``encoder = "nemo"``.
"""

from __future__ import annotations

import contextlib

import torch

from .base import CacheLayout, select_rows, write_rows


class NemoStep:
    """``ConformerEncoder.cache_aware_stream_step`` behind the ``StreamingEncoder`` protocol.

    State: ``last_channel [L, B, 70, D]``, ``last_time [L, B, D, K-1]``,
    ``last_channel_len [B]``, NeMo's own layout. Call from one thread only: NeMo writes
    ``drop_extra_pre_encoded`` into the encoder's shared ``streaming_cfg`` at every step.
    """

    name = "nemo"

    def __init__(
        self,
        encoder,
        *,
        device: torch.device,
        cache_dtype: torch.dtype = torch.float32,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        """Args:
        encoder: the loaded model's ``ConformerEncoder``, configured for streaming.
        device: where the caches live.
        cache_dtype: dtype of the cached layer inputs and conv states.
        autocast_dtype: run the step under autocast to this dtype (None: no autocast).
        """
        self.encoder = encoder
        self.device = device
        self.autocast_dtype = autocast_dtype
        ch, ct, ch_len = encoder.get_initial_cache_state(
            batch_size=1, dtype=cache_dtype, device=device
        )
        self.layout = CacheLayout(
            templates={"last_channel": ch, "last_time": ct, "last_channel_len": ch_len},
            batch_dims={"last_channel": 1, "last_time": 1, "last_channel_len": 0},
        )

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # cache_enabled=False: cached weight casts would be baked into CUDA graphs.
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def start(self, caches: dict[str, torch.Tensor], rows: torch.Tensor | None) -> None:
        """Zero the rows: NeMo's initial cache state (length 0 masks the attention cache)."""
        for name, dim in self.layout.batch_dims.items():
            if rows is None:
                caches[name].zero_()
            else:
                caches[name].index_fill_(dim, rows, 0)

    def step(
        self,
        mel: torch.Tensor,
        caches: dict[str, torch.Tensor],
        rows: torch.Tensor | None,
        *,
        drop: int,
        keep_all: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """NeMo's step on the selected rows; new caches written back in place.

        Shapes: ``mel [B, n_mels, n]`` -> ``encoded [B, D, T]``, ``lengths [B]``.
        """
        dims = self.layout.batch_dims
        cur = select_rows(caches, dims, rows)
        mel_len = torch.full((mel.shape[0],), mel.shape[2], dtype=torch.long, device=mel.device)
        with self._autocast():
            enc, enc_len, ch, ct, ch_len = self.encoder.cache_aware_stream_step(
                processed_signal=mel,
                processed_signal_length=mel_len,
                cache_last_channel=cur["last_channel"],
                cache_last_time=cur["last_time"],
                cache_last_channel_len=cur["last_channel_len"],
                keep_all_outputs=keep_all,
                drop_extra_pre_encoded=drop,
            )
        write_rows(
            caches,
            dims,
            rows,
            {"last_channel": ch, "last_time": ct, "last_channel_len": ch_len},
        )
        return enc, enc_len
