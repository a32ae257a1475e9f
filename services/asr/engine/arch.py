"""Random-weight cache-aware RNNT models of known shapes, for tests and benchmarks.

``tiny``: a few-hundred-thousand-parameter char model that builds in under a second on CPU.
``nemotron-0.6b``: the shape of nvidia/nemotron-speech-streaming-en-0.6b (128 mels, 24 layers,
d_model 1024, 8 heads, FF 4096, conv kernel 9, dw_striding x8 with 256 channels, LSTM 2x640,
joint 640, 1024 tokens + blank), 618M parameters: same compute as the real model, no download.
Both use a char vocabulary so no tokenizer files are needed; ``save_to``/``restore_from`` give a
``.nemo`` loaded through the same path as the real checkpoint.
"""

from __future__ import annotations

import string

import numpy as np

SAMPLE_RATE = 16000

ARCHS = ("tiny", "nemotron-0.6b")

_TINY_LABELS = list(" " + string.ascii_lowercase + "'")


def _labels(n: int) -> list[str]:
    if n <= len(_TINY_LABELS):
        return _TINY_LABELS[:n]
    # Distinct one-character labels (the vocabulary size is what matters for compute).
    return _TINY_LABELS + [chr(0x4E00 + i) for i in range(n - len(_TINY_LABELS))]


def model_config(arch: str = "tiny") -> dict:
    """Config dict of an ``EncDecRNNTModel`` with a cache-aware FastConformer encoder."""
    if arch == "tiny":
        n_mels, layers, d_model, heads, ff, sub_ch, pred, joint, vocab = (
            80,
            2,
            32,
            2,
            2,
            16,
            32,
            32,
            28,
        )
        conv_norm = "layer_norm"
    elif arch == "nemotron-0.6b":
        n_mels, layers, d_model, heads, ff, sub_ch, pred, joint, vocab = (
            128,
            24,
            1024,
            8,
            4,
            256,
            640,
            640,
            1024,
        )
        conv_norm = "batch_norm"
    else:
        raise ValueError(f"arch={arch!r} is unknown; allowed: {ARCHS}")
    pred_layers = 1 if arch == "tiny" else 2
    return {
        "sample_rate": 16000,
        "labels": _labels(vocab),
        "model_defaults": {"enc_hidden": d_model, "pred_hidden": pred, "joint_hidden": joint},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000,
            "normalize": "NA",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": n_mels,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 0.0,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": n_mels,
            "feat_out": -1,
            "n_layers": layers,
            "d_model": d_model,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": sub_ch,
            "causal_downsampling": True,
            "ff_expansion_factor": ff,
            "self_attention_model": "rel_pos",
            "n_heads": heads,
            "att_context_size": [[70, 13], [70, 6], [70, 1], [70, 0]],
            "att_context_style": "chunked_limited",
            "xscaling": True,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 9,
            "conv_norm_type": conv_norm,
            "conv_context_size": "causal",
            "dropout": 0.0,
            "dropout_pre_encoder": 0.0,
            "dropout_emb": 0.0,
            "dropout_att": 0.0,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {
                "pred_hidden": pred,
                "pred_rnn_layers": pred_layers,
                "t_max": None,
                "dropout": 0.0,
            },
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "fused_batch_size": 16,
            "jointnet": {"joint_hidden": joint, "activation": "relu", "dropout": 0.0},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        "loss": {"loss_name": "default"},
    }


def build_model(
    arch: str = "tiny",
    seed: int = 0,
    blank_bias: float | None = None,
    encoder_overrides: dict | None = None,
):
    """Build a random-weight model.

    Args:
        arch: ``tiny`` or ``nemotron-0.6b``.
        seed: torch seed for the weights (the same seed gives the same model).
        blank_bias: if set, the joint's output bias of the blank token. Random weights almost
            always pick blank; a negative value makes them emit (garbage but deterministic) text.
        encoder_overrides: encoder config keys to change (e.g. ``conv_norm_type``), for tests
            of architectures the two named shapes do not cover.
    """
    import torch
    from nemo.collections.asr.models import EncDecRNNTModel
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    cfg = model_config(arch)
    cfg["encoder"].update(encoder_overrides or {})
    model = EncDecRNNTModel(cfg=OmegaConf.create(cfg))
    if blank_bias is not None:
        with torch.no_grad():
            model.joint.joint_net[-1].bias[model.decoder.blank_idx] = blank_bias
    return model.eval()


def babble(seconds: float, seed: int) -> np.ndarray:
    """Deterministic speech-like audio for tests and benchmarks (float32, 16 kHz).

    Voiced 100 ms bursts (random pitch, 11 harmonics, noise) and pauses; ``round(seconds * 10)``
    bursts in all. Random-weight models give garbage text for real speech anyway, so this only
    has to exercise the features and the encoder like speech does.
    """
    rng = np.random.default_rng(seed)
    parts = []
    n = SAMPLE_RATE // 10
    t = np.arange(n) / SAMPLE_RATE
    for _ in range(int(round(seconds * 10))):
        if rng.random() < 0.2:
            parts.append(np.zeros(n))
            continue
        f0 = rng.uniform(80, 300)
        sig = sum(
            rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6))
            for k in range(1, 12)
        )
        sig = sig + rng.normal(0, rng.uniform(0, 0.5), n)
        parts.append(sig * np.hanning(n) * rng.uniform(0.05, 0.5))
    return np.concatenate(parts).astype(np.float32)
