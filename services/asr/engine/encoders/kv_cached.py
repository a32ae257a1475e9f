"""Our cache-aware FastConformer step: projected keys and values cached per layer in a ring.

NeMo's step (``nemo_step.py``) caches the last 70 normalized *inputs* of every attention layer
and re-projects keys and values over all of them in every layer at every step: at the Nemotron
shape and 160 ms chunks that is ~76% of a step's FLOPs. Here a frame's K and V are projected
once, when the frame is new, and kept per layer in a ring of ``S = 70 + T_max`` slots per stream
(``T_max`` new frames per step), written in place; attention runs with
``scaled_dot_product_attention`` over the whole ring with the Transformer-XL relative-position
term as an additive bias. ``linear_pos(pos_emb)`` depends only on the shape, so it is computed
once at construction, not per step.

For head h, query i of the step (absolute frame ``pos + i``) and ring slot s holding absolute
frame ``t_s``, with ``rel = pos + i - t_s``::

    score = ((q_i + u_h) . k_s + (q_i + v_h) . P_h[rel]) / sqrt(d_k)

masked where ``t_s < 0`` (not heard yet), ``t_s < pos - 70`` (older than the left context) or
NeMo's chunked-limited mask forbids the pair. That is NeMo's ``RelPositionMultiHeadAttention``
with its ``rel_shift`` read as an index into ``P``. Everything else (feed-forwards, the causal
depthwise convolution with its K-1 frame cache, norms) is the same arithmetic as NeMo's layer;
the pre-encode subsampling is NeMo's own module.

Precision: the residual stream and the norms stay fp32; matmuls, the K/V ring and the conv
cache use ``dtype`` (bf16 on GPU), like autocast but with the weights cast once, not per step.

On CPU the matmul weights are prepacked once for oneDNN (``torch.ops.mkldnn``, what
``torch.compile`` uses on CPU): at the handful of rows a streaming step has, that ran 3-4x faster
than ``F.linear`` on the build machine. ``VOICE_AGENT_ASR_PREPACK=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import CacheLayout


class UnsupportedEncoderError(ValueError):
    """The model's encoder uses a feature the K/V-cached step does not implement."""


def check_supported(encoder) -> None:
    """Raise ``UnsupportedEncoderError`` unless the K/V-cached step can run ``encoder`` exactly."""

    def refuse(what: str) -> None:
        raise UnsupportedEncoderError(
            f"encoder='fast' does not support {what}; use encoder='nemo' (NeMo's own step) for "
            "this model"
        )

    if getattr(encoder, "self_attention_model", None) != "rel_pos":
        refuse(f"self_attention_model={getattr(encoder, 'self_attention_model', None)!r}")
    if getattr(encoder, "att_context_style", None) != "chunked_limited":
        refuse(f"att_context_style={getattr(encoder, 'att_context_style', None)!r}")
    cfg = getattr(encoder, "streaming_cfg", None)
    if cfg is None or int(cfg.cache_drop_size) != 0 or int(cfg.last_channel_cache_size) <= 0:
        refuse("a streaming config without a positive left cache and cache_drop_size 0")
    if getattr(encoder, "reduction_position", None) is not None:
        refuse("reduction subsampling inside the encoder")
    if isinstance(encoder.pre_encode, torch.nn.Linear):
        refuse("a linear pre-encoder")
    is_adapter = getattr(encoder, "is_adapter_available", None)
    if callable(is_adapter) and is_adapter():
        refuse("adapters")
    if list(encoder.att_context_size)[1] < 0:
        refuse("unlimited right context")
    for layer in encoder.layers:
        conv = layer.conv
        if conv.pointwise_activation != "glu_":
            refuse(f"conv pointwise_activation={conv.pointwise_activation!r}")
        if conv.norm_type not in ("batch_norm", "layer_norm", "fused_batch_norm"):
            refuse(f"conv_norm_type={conv.norm_type!r}")
        dw = conv.depthwise_conv
        if dw._right_padding != 0 or dw.stride[0] != 1 or dw.dilation[0] != 1:
            refuse("a non-causal depthwise convolution (conv_context_size must be causal)")
        if getattr(layer.self_attn, "cache_drop_size", 0):
            refuse("attention cache_drop_size > 0")


def _cast(t: torch.Tensor | None, dtype: torch.dtype, device: torch.device):
    return None if t is None else t.detach().to(device=device, dtype=dtype)


def _can_prepack(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cpu" or os.environ.get("VOICE_AGENT_ASR_PREPACK", "1") == "0":
        return False
    ops = torch.ops.mkldnn
    if dtype == torch.bfloat16 and not ops._is_mkldnn_bf16_supported():
        # oneDNN's bf16 path needs AVX-512 (or AVX-NE-CONVERT); on an AVX2-only CPU it refuses
        # to prepack bf16 weights, and plain F.linear serves them.
        return False
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def _register_prepacked_flops() -> None:
    """Teach torch's FLOP counter the prepacked matmul (benchmarks count FLOPs with it)."""
    try:
        from torch.utils.flop_counter import register_flop_formula

        @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
        def _flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
            return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]
    except Exception:  # an older or newer torch without these: counts are only for benchmarks
        pass


_register_prepacked_flops()


class _Linear:
    """``y = x @ weight.T + bias`` with the weight in the step's dtype, prepacked where it pays."""

    __slots__ = ("weight", "bias", "packed")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, prepack: bool) -> None:
        self.bias = bias
        self.packed = None
        self.weight: torch.Tensor | None = weight
        if prepack:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 16)
            self.weight = None  # the packed copy replaces it

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(
                x.contiguous(), self.packed, self.bias, "none", [], ""
            )
        return F.linear(x, self.weight, self.bias)


@dataclass
class _LayerWeights:
    """One ConformerLayer's weights, laid out for the step (matmul weights in ``dtype``)."""

    ff1: tuple  # (linear1, activation, linear2)
    ff2: tuple
    fc_factor: float
    norm_ff1: tuple  # (weight, bias, eps), fp32
    norm_att: tuple
    norm_conv: tuple
    norm_ff2: tuple
    norm_out: tuple
    qkv: _Linear  # D -> 3D: queries, keys, values in one matmul
    out: _Linear
    bias_u: torch.Tensor  # [H, 1, d_k] (queries laid out [B, H, T, d_k])
    bias_v: torch.Tensor  # [H, d_k] (queries laid out [B, T, H, d_k])
    pw1: _Linear  # D -> 2D, then GLU
    dw_w: torch.Tensor  # [D, 1, K] (batch norm folded in)
    dw_b: torch.Tensor | None
    conv_norm: tuple | None  # layer norm after the depthwise conv (else folded or none)
    pw2: _Linear

    @classmethod
    def from_nemo(
        cls, layer, dtype: torch.dtype, device: torch.device, prepack: bool
    ) -> _LayerWeights:
        f32 = torch.float32

        def norm(ln) -> tuple:
            return (_cast(ln.weight, f32, device), _cast(ln.bias, f32, device), ln.eps)

        def linear(weight: torch.Tensor, bias: torch.Tensor | None) -> _Linear:
            return _Linear(_cast(weight, dtype, device), _cast(bias, dtype, device), prepack)

        def ff(mod) -> tuple:
            first = linear(mod.linear1.weight, mod.linear1.bias)
            return (first, mod.activation, linear(mod.linear2.weight, mod.linear2.bias))

        att = layer.self_attn
        h, d_k = att.h, att.d_k
        biases = [att.linear_q.bias, att.linear_k.bias, att.linear_v.bias]
        b_qkv = None if biases[0] is None else torch.cat([b.detach() for b in biases])
        conv = layer.conv
        dw = conv.depthwise_conv
        dw_w = dw.weight.detach().float()
        dw_b = None if dw.bias is None else dw.bias.detach().float()
        conv_norm = None
        bn = conv.batch_norm
        if conv.norm_type == "batch_norm":
            # Eval-mode batch norm is a per-channel affine map: fold it into the conv.
            scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)
            shift = bn.bias.detach().float() - bn.running_mean.float() * scale
            dw_b = shift if dw_b is None else dw_b * scale + shift
            dw_w = dw_w * scale[:, None, None]
        elif conv.norm_type == "fused_batch_norm":
            scale, shift = bn.weight.detach().float(), bn.bias.detach().float()
            dw_b = shift if dw_b is None else dw_b * scale + shift
            dw_w = dw_w * scale[:, None, None]
        else:
            conv_norm = norm(bn)
        return cls(
            ff1=ff(layer.feed_forward1),
            ff2=ff(layer.feed_forward2),
            fc_factor=float(layer.fc_factor),
            norm_ff1=norm(layer.norm_feed_forward1),
            norm_att=norm(layer.norm_self_att),
            norm_conv=norm(layer.norm_conv),
            norm_ff2=norm(layer.norm_feed_forward2),
            norm_out=norm(layer.norm_out),
            qkv=linear(
                torch.cat([att.linear_q.weight, att.linear_k.weight, att.linear_v.weight]), b_qkv
            ),
            out=linear(att.linear_out.weight, att.linear_out.bias),
            bias_u=_cast(att.pos_bias_u, dtype, device).view(h, 1, d_k),
            bias_v=_cast(att.pos_bias_v, dtype, device).view(h, d_k),
            pw1=linear(conv.pointwise_conv1.weight[:, :, 0], conv.pointwise_conv1.bias),
            dw_w=_cast(dw_w, dtype, device),
            dw_b=_cast(dw_b, dtype, device),
            conv_norm=conv_norm,
            pw2=linear(conv.pointwise_conv2.weight[:, :, 0], conv.pointwise_conv2.bias),
        )


@dataclass
class _Ring:
    """Per-call ring geometry, shared by every layer of the step.

    ``write [B*T]`` flat slot indices the new K/V go to; ``rel_idx [B, 1, T, S]`` the column of
    the positional scores each (query, slot) pair reads; ``neg [B, 1, T, S]`` 0 or -inf.
    """

    write: torch.Tensor
    rel_idx: torch.Tensor
    neg: torch.Tensor


class KVCachedStep:
    """Cache-aware FastConformer step with projected K/V cached in a per-layer ring.

    State per stream: ``k``, ``v`` ``[L, B, S, D]`` (ring, ``dtype``), ``conv [L, B, K-1, D]``
    (the depthwise conv's left context, ``dtype``), ``pos [B]`` int64 (encoder frames written
    since the utterance began). ``S = left_context + max_new_frames``.
    """

    name = "fast"

    def __init__(
        self,
        encoder,
        *,
        device: torch.device,
        max_new_frames: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Read the weights of NeMo's ``ConformerEncoder`` (configured for streaming).

        Args:
            encoder: the loaded model's encoder; its weights are read, not changed.
            device: where the weights (in ``dtype``) and caches live.
            max_new_frames: most encoder frames one step adds (``valid_out_len`` = R + 1).
            dtype: matmul, K/V and conv-cache dtype (fp32, or bf16 on GPU).

        Raises:
            UnsupportedEncoderError: the encoder uses a feature this step does not implement.
        """
        check_supported(encoder)
        cfg = encoder.streaming_cfg
        self.encoder = encoder
        self.device = device
        self.dtype = dtype
        self.left = int(cfg.last_channel_cache_size)
        self.t_max = int(max_new_frames)
        if self.t_max < 1:
            raise ValueError(f"max_new_frames={max_new_frames} must be >= 1")
        self.ring = self.left + self.t_max
        self.valid_out_len = int(cfg.valid_out_len)
        left_ctx, right_ctx = (int(x) for x in encoder.att_context_size)
        self.att_chunk = right_ctx + 1  # NeMo's chunked_limited chunk, in encoder frames
        self.left_chunks = left_ctx // self.att_chunk if left_ctx >= 0 else 10000
        att0 = encoder.layers[0].self_attn
        self.n_heads, self.d_k = int(att0.h), int(att0.d_k)
        self.d_model = self.n_heads * self.d_k
        self.conv_context = int(encoder.layers[0].conv.depthwise_conv._left_padding)
        self.scale = 1.0 / math.sqrt(self.d_k)
        self.xscale = encoder.pos_enc.xscale
        self.prepacked = _can_prepack(device, dtype)
        self.layers = [
            _LayerWeights.from_nemo(la, dtype, device, self.prepacked) for la in encoder.layers
        ]
        out_proj = getattr(encoder, "out_proj", None)
        self.out_proj = None
        if out_proj is not None:
            f32 = torch.float32
            self.out_proj = (_cast(out_proj.weight, f32, device), _cast(out_proj.bias, f32, device))
        self.pos_proj = self._positional_projections()
        n = len(self.layers)
        d = self.d_model
        self.layout = CacheLayout(
            templates={
                "k": torch.zeros(n, 1, self.ring, d, dtype=dtype, device=device),
                "v": torch.zeros(n, 1, self.ring, d, dtype=dtype, device=device),
                "conv": torch.zeros(n, 1, self.conv_context, d, dtype=dtype, device=device),
                "pos": torch.zeros(1, dtype=torch.long, device=device),
            },
            batch_dims={"k": 1, "v": 1, "conv": 1, "pos": 0},
        )

    # ---- set-up ----

    @torch.inference_mode()
    def _positional_projections(self) -> torch.Tensor:
        """``linear_pos(pos_emb)`` of every layer for every relative distance a step can use.

        Returns ``[L, H, d_k, n_rel]`` in ``dtype``; column k is the relative distance
        ``left + T_max - 1 - k`` (NeMo's order: far past first, future last).
        """
        dummy = torch.zeros(1, self.t_max, self.d_model, device=self.device)
        _, pos_emb = self.encoder.pos_enc(x=dummy, cache_len=self.left)
        n_rel = self.left + 2 * self.t_max - 1
        pos_emb = pos_emb[0, :n_rel].float()
        out = []
        for layer in self.encoder.layers:
            lin = layer.self_attn.linear_pos
            bias = None if lin.bias is None else lin.bias.float()
            p = F.linear(pos_emb, lin.weight.float(), bias)
            out.append(p.view(n_rel, self.n_heads, self.d_k).permute(1, 2, 0))
        return torch.stack(out).to(self.dtype).contiguous()

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)

    # ---- protocol ----

    def start(self, caches: dict[str, torch.Tensor], rows: torch.Tensor | None) -> None:
        """Position 0 and a zero conv context; the K/V ring needs no clearing (it is masked)."""
        if rows is None:
            caches["pos"].zero_()
            caches["conv"].zero_()
        else:
            caches["pos"].index_fill_(0, rows, 0)
            caches["conv"].index_fill_(1, rows, 0)

    @torch.inference_mode()
    def step(
        self,
        mel: torch.Tensor,
        caches: dict[str, torch.Tensor],
        rows: torch.Tensor | None,
        *,
        drop: int,
        keep_all: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for B streams; their K/V rings, conv caches and positions advance in place.

        Shapes: ``mel [B, n_mels, n]`` -> ``encoded [B, D, T]`` fp32, ``lengths [B]`` int64,
        T = pre-encoded frames - ``drop`` (at most ``max_new_frames``), cut to
        ``valid_out_len`` unless ``keep_all``.
        """
        batch = mel.shape[0]
        mel_len = torch.full((batch,), mel.shape[2], dtype=torch.long, device=mel.device)
        with self._autocast():
            x, lengths = self.encoder.pre_encode(x=mel.transpose(1, 2), lengths=mel_len)
        x = x.float()
        lengths = lengths.to(torch.long)
        if drop > 0:
            x = x[:, drop:]
            lengths = (lengths - drop).clamp(min=0)
        n_new = x.shape[1]
        if not 1 <= n_new <= self.t_max:
            raise ValueError(
                f"a step of {n_new} encoder frames does not fit the K/V ring "
                f"(max_new_frames={self.t_max})"
            )
        if self.xscale:
            x = x * self.xscale
        pos = caches["pos"] if rows is None else caches["pos"].index_select(0, rows)
        ring = self._ring(pos, n_new, rows)
        for index, weights in enumerate(self.layers):
            x = self._layer(x, weights, index, ring, caches, rows)
        if self.out_proj is not None:
            x = F.linear(x, *self.out_proj)
        new_pos = pos + n_new
        if rows is None:
            caches["pos"].copy_(new_pos)
        else:
            caches["pos"].index_copy_(0, rows, new_pos)
        encoded = x.transpose(1, 2)
        if not keep_all:
            encoded = encoded[:, :, : self.valid_out_len]
            lengths = lengths.clamp(max=self.valid_out_len)
        return encoded, lengths

    # ---- internals ----

    def _ring(self, pos: torch.Tensor, n_new: int, rows: torch.Tensor | None) -> _Ring:
        """Where this step's frames go and how every (query, slot) pair is scored."""
        dev = pos.device
        size, left, c = self.ring, self.left, self.att_chunk
        slots = torch.arange(size, device=dev)
        queries = torch.arange(n_new, device=dev)
        # back[b, s]: how many frames before the step's newest frame slot s was written.
        back = (pos[:, None] + (n_new - 1) - slots[None, :]) % size
        heard = back <= pos[:, None] + (n_new - 1)  # t_s >= 0
        in_window = back <= left + n_new - 1  # t_s >= pos - left
        # NeMo's chunked-limited mask over its [cache | new] sequence: key j, query left + i.
        key_j = left + n_new - 1 - back
        q_chunk = torch.div(left + queries, c, rounding_mode="floor")
        k_chunk = torch.div(key_j, c, rounding_mode="floor")
        diff = q_chunk[None, :, None] - k_chunk[:, None, :]
        visible = (heard & in_window)[:, None, :] & (diff >= 0) & (diff <= self.left_chunks)
        rel_idx = (left + self.t_max + n_new - 2) - queries[None, :, None] - back[:, None, :]
        neg = torch.zeros(visible.shape, dtype=self.dtype, device=dev)
        neg.masked_fill_(~visible, float("-inf"))
        base = rows if rows is not None else torch.arange(pos.shape[0], device=dev)
        write = (base[:, None] * size + (pos[:, None] + queries[None, :]) % size).reshape(-1)
        return _Ring(write=write, rel_idx=rel_idx.unsqueeze(1), neg=neg.unsqueeze(1))

    def _ff(self, h: torch.Tensor, ff: tuple) -> torch.Tensor:
        first, act, second = ff
        return second(act(first(h.to(self.dtype))))

    def _layer(
        self,
        x: torch.Tensor,
        w: _LayerWeights,
        index: int,
        ring: _Ring,
        caches: dict[str, torch.Tensor],
        rows: torch.Tensor | None,
    ) -> torch.Tensor:
        """One ConformerLayer; ``x [B, T, D]`` fp32 in and out."""
        batch, n_new, d = x.shape
        heads, d_k, dt = self.n_heads, self.d_k, self.dtype

        x = x + w.fc_factor * self._ff(F.layer_norm(x, (d,), *w.norm_ff1), w.ff1)

        # Self-attention over the ring: new K/V written in place first, then all S slots read.
        h = F.layer_norm(x, (d,), *w.norm_att).to(dt)
        q, k_new, v_new = w.qkv(h).split(d, dim=-1)
        keys, values = caches["k"][index], caches["v"][index]  # [N, S, D]
        keys.view(-1, d).index_copy_(0, ring.write, k_new.reshape(-1, d))
        values.view(-1, d).index_copy_(0, ring.write, v_new.reshape(-1, d))
        if rows is not None:
            keys, values = keys.index_select(0, rows), values.index_select(0, rows)
        keys = keys.view(batch, self.ring, heads, d_k).transpose(1, 2)  # [B, H, S, d_k]
        values = values.view(batch, self.ring, heads, d_k).transpose(1, 2)
        q = q.reshape(batch, n_new, heads, d_k)
        # Positional scores as one matmul per head over all B*T queries: [H, B*T, n_rel].
        q_v = (q + w.bias_v).permute(2, 0, 1, 3).reshape(heads, batch * n_new, d_k)
        pos_scores = torch.bmm(q_v, self.pos_proj[index]).view(heads, batch, n_new, -1)
        pos_scores = pos_scores.permute(1, 0, 2, 3)  # [B, H, T, n_rel]
        bias = torch.gather(pos_scores, 3, ring.rel_idx.expand(batch, heads, n_new, self.ring))
        q = q.transpose(1, 2)  # [B, H, T, d_k]
        bias = bias * self.scale + ring.neg
        att = F.scaled_dot_product_attention(q + w.bias_u, keys, values, attn_mask=bias)
        x = x + w.out(att.transpose(1, 2).reshape(batch, n_new, d))

        # Causal depthwise convolution over [K-1 cached frames | new frames].
        h = F.layer_norm(x, (d,), *w.norm_conv).to(dt)
        g = F.glu(w.pw1(h), dim=-1)  # [B, T, D]
        conv = caches["conv"][index]  # [N, K-1, D]
        prev = conv if rows is None else conv.index_select(0, rows)
        joined = torch.cat((prev, g), dim=1)  # [B, K-1+T, D]
        if rows is None:
            conv.copy_(joined[:, n_new:])
        else:
            conv.index_copy_(0, rows, joined[:, n_new:])
        y = F.conv1d(joined.transpose(1, 2), w.dw_w, w.dw_b, groups=d)
        # Contiguous [B, T, D]: a strided 3-D input makes F.linear broadcast the weight per row.
        y = y.transpose(1, 2).contiguous()
        if w.conv_norm is not None:
            y = F.layer_norm(y.float(), (d,), *w.conv_norm).to(dt)
        y = w.pw2(F.silu(y))
        x = x + y

        x = x + w.fc_factor * self._ff(F.layer_norm(x, (d,), *w.norm_ff2), w.ff2)
        return F.layer_norm(x, (d,), *w.norm_out)
