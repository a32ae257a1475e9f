"""Our K/V-cached encoder step equals NeMo's ``cache_aware_stream_step``, step for step.

Both steps get the same inputs: every chunk mode, first, second (80 ms) and later steps,
``keep_all_outputs``, rows at different positions and cache fills in one call, rows picked out
of a larger store in any order, past the point where the K/V ring wraps. Untrained NeMo models
have zero positional biases and identity batch norms, which would hide mistakes in those terms,
so the tests draw them at random first.
"""

from __future__ import annotations

import pytest
import torch

from services.asr.engine import ASREngine, EngineConfig
from services.asr.engine.arch import build_model
from services.asr.engine.encoders import KVCachedStep, NemoStep, UnsupportedEncoderError
from services.asr.engine.encoders.kv_cached import check_supported

ATOL = 1e-4
CPU = torch.device("cpu")


def draw_untrained_terms(model, seed: int) -> None:
    """Random positional biases and batch-norm statistics (NeMo initialises them to no-ops)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, scale: float, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen) * scale + offset

    with torch.no_grad():
        for name, param in model.encoder.named_parameters():
            if "pos_bias" in name:
                param.copy_(rand(param, 0.2))
        for mod in model.encoder.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.copy_(rand(mod.running_mean, 0.2))
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) + 0.5)
                mod.weight.copy_(rand(mod.weight, 0.2, 1.0))
                mod.bias.copy_(rand(mod.bias, 0.2))


class Lockstep:
    """Both steps over stores of the same rows, fed the same random mel frames."""

    def __init__(self, model, right_context: int, rows: int, seed: int = 0) -> None:
        enc = model.encoder
        enc.set_default_att_context_size([70, right_context])
        cfg = enc.streaming_cfg
        self.first, self.later = cfg.chunk_size
        self.pre_cache = cfg.pre_encode_cache_size[1]
        self.n_mels = model.preprocessor.featurizer.nfilt
        self.fast = KVCachedStep(enc, device=CPU, max_new_frames=cfg.valid_out_len)
        self.nemo = NemoStep(enc, device=CPU)
        self.store_fast = self.fast.layout.zeros(rows)
        self.store_nemo = self.nemo.layout.zeros(rows)
        self.gen = torch.Generator().manual_seed(seed)
        self.worst = 0.0
        self.steps = 0

    def step(self, rows: list[int], n_frames: int, drop: int, keep_all: bool = False) -> None:
        idx = torch.tensor(rows)
        mel = torch.randn(len(rows), self.n_mels, n_frames, generator=self.gen)
        with torch.inference_mode():
            fast, fast_len = self.fast.step(mel, self.store_fast, idx, drop=drop, keep_all=keep_all)
            ref, ref_len = self.nemo.step(mel, self.store_nemo, idx, drop=drop, keep_all=keep_all)
        assert fast.shape == ref.shape and torch.equal(fast_len, ref_len)
        self.worst = max(self.worst, (fast - ref).abs().max().item())
        self.steps += 1

    def start(self, row: int) -> None:
        idx = torch.tensor([row])
        self.fast.start(self.store_fast, idx)
        self.nemo.start(self.store_nemo, idx)
        self.step([row], self.first, drop=0)

    def later_step(self, rows: list[int], keep_all: bool = False) -> None:
        self.step(rows, self.pre_cache + self.later, drop=2, keep_all=keep_all)


def run_modes(model, histories: list[int], modes=(0, 1, 6, 13)) -> dict[int, float]:
    """Per chunk mode: rows with ``histories[r]`` later steps each, then mixed calls."""
    worst = {}
    for right_context in modes:
        run = Lockstep(model, right_context, rows=len(histories) + 1)
        for row, n in enumerate(histories):
            run.start(row)
            if right_context == 0:  # the engine's 80 ms second step: real frames, drop 1
                run.step([row], run.first + run.later, drop=1)
            for _ in range(n):
                run.later_step([row])
        # Every row at its own position and cache fill, in one call, in shuffled order; the
        # spare last row is never touched.
        order = list(range(len(histories)))[::-1]
        order = order[1::2] + order[::2]
        untouched = {
            k: v[:, -1:].clone() if v.dim() > 1 else v[-1:].clone()
            for k, v in run.store_fast.items()
        }
        run.later_step(order)
        run.later_step(order[::-1], keep_all=True)
        run.later_step(order)
        for name, before in untouched.items():
            after = run.store_fast[name]
            after = after[:, -1:] if after.dim() > 1 else after[-1:]
            assert torch.equal(after, before), f"row outside the call changed in {name}"
        worst[right_context] = run.worst
    return worst


@pytest.mark.parametrize("conv_norm", ["layer_norm", "batch_norm"])
def test_fast_step_equals_nemo_on_tiny_models(conv_norm):
    model = build_model("tiny", seed=3, encoder_overrides={"conv_norm_type": conv_norm})
    draw_untrained_terms(model, seed=4)
    # 90 later steps: the 72..84-slot ring wraps in every chunk mode.
    worst = run_modes(model, histories=[0, 3, 90])
    print(f"tiny ({conv_norm}): max |fast - nemo| per chunk mode {worst}")
    assert max(worst.values()) < ATOL, worst


def test_fast_step_equals_nemo_at_the_nemotron_shape():
    """The real shape (618M parameters, random weights): 24 layers, 8 heads, batch norm."""
    torch.manual_seed(0)
    model = build_model("nemotron-0.6b", seed=0)
    draw_untrained_terms(model, seed=5)
    worst = run_modes(model, histories=[0, 2, 7])
    print(f"nemotron-0.6b shape: max |fast - nemo| per chunk mode {worst}")
    assert max(worst.values()) < ATOL, worst


def test_bf16_fast_step_stays_near_fp32_nemo():
    """bf16 K/V and matmuls (the GPU setting) against NeMo's fp32 step: a bounded drift."""
    model = build_model("tiny", seed=3)
    draw_untrained_terms(model, seed=4)
    enc = model.encoder
    enc.set_default_att_context_size([70, 1])
    cfg = enc.streaming_cfg
    fast = KVCachedStep(enc, device=CPU, max_new_frames=cfg.valid_out_len, dtype=torch.bfloat16)
    nemo = NemoStep(enc, device=CPU)
    sf, sn = fast.layout.zeros(2), nemo.layout.zeros(2)
    assert sf["k"].dtype == torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.inference_mode():
        for i in range(40):
            n, drop = (cfg.chunk_size[0], 0) if i == 0 else (cfg.chunk_size[1] + 9, 2)
            mel = torch.randn(2, 80, n, generator=gen)
            a, _ = fast.step(mel, sf, None, drop=drop, keep_all=False)
            b, _ = nemo.step(mel, sn, None, drop=drop, keep_all=False)
            worst = max(worst, (a - b).abs().max().item())
    print(f"bf16 fast vs fp32 nemo: max diff {worst:.4f}")
    assert worst < 0.1


def test_fast_encoder_refuses_what_it_does_not_implement():
    model = build_model("tiny", seed=0, encoder_overrides={"att_context_style": "regular"})
    model.encoder.set_default_att_context_size([70, 1])
    with pytest.raises(UnsupportedEncoderError, match="encoder='nemo'"):
        check_supported(model.encoder)


def test_engine_encoder_setting_selects_the_step(tiny_nemo):
    for name, cls in (("fast", KVCachedStep), ("nemo", NemoStep)):
        engine = ASREngine(EngineConfig(model=tiny_nemo, device="cpu", encoder=name))
        try:
            assert isinstance(engine._runner.encoder, cls)
        finally:
            engine.shutdown()
    assert EngineConfig().encoder == "fast"
    with pytest.raises(ValueError, match="encoder"):
        EngineConfig(encoder="onnx")
