"""A tiny Magpie TTS with random weights, built from config (the recipe in DESIGN.md).

It goes through the same NeMo classes and the same ``save_to``/``restore_from`` path as the real
``nvidia/magpie_tts_multilingual_357m``; only the sizes differ. Audio is noise-like: never assert
anything about what it sounds like.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_RATE = 22050
SAMPLES_PER_FRAME = 1024
NUM_SPEAKERS = 5
D_MODEL = 32
CONTEXT_T = 4


def codec_config() -> dict:
    """A tiny HiFiGAN/FSQ codec: 22050 Hz, 1024 samples per frame, 2 codebooks of 96 codes."""
    levels = [4, 4, 6]
    return {
        "sample_rate": SAMPLE_RATE,
        "samples_per_frame": SAMPLES_PER_FRAME,
        "audio_encoder": {
            "_target_": "nemo.collections.tts.modules.audio_codec_modules.HiFiGANEncoder",
            "encoded_dim": 2 * len(levels),
            "down_sample_rates": [4, 4, 8, 8],
            "base_channels": 4,
            "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [1],
        },
        "vector_quantizer": {
            "_target_": "nemo.collections.tts.modules.audio_codec_modules."
            "GroupFiniteScalarQuantizer",
            "num_groups": 2,
            "num_levels_per_group": levels,
        },
        "audio_decoder": {
            "_target_": "nemo.collections.tts.modules.audio_codec_modules.HiFiGANDecoder",
            "input_dim": 2 * len(levels),
            "up_sample_rates": [8, 8, 4, 4],
            "base_channels": 32,
            "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [1],
        },
        "loss_resolutions": [[512, 128, 512]],
        "commit_loss_scale": 0.0,
        "mel_loss_dims": [32],
        "generator_loss": {
            "_target_": "nemo.collections.tts.losses.audio_codec_loss.GeneratorSquaredLoss"
        },
        "discriminator_loss": {
            "_target_": "nemo.collections.tts.losses.audio_codec_loss.DiscriminatorSquaredLoss"
        },
    }


def magpie_config(codec_path: str, *, max_decoder_steps: int = 24) -> dict:
    """A one-layer ``decoder_ce`` Magpie with an English character tokenizer."""
    layer = {"n_layers": 1, "d_model": D_MODEL, "d_ffn": 64, "sa_n_heads": 1, "kernel_size": 1}
    return {
        "model_type": "decoder_ce",
        "codecmodel_path": codec_path,
        "embedding_dim": D_MODEL,
        "text_tokenizers": {
            "english_phoneme": {
                "_target_": "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers."
                "EnglishCharsTokenizer",
            }
        },
        "encoder": {**layer, "is_causal": False, "max_length_causal_mask": 512},
        "decoder": {
            **layer,
            "is_causal": True,
            "has_xattn": True,
            "xa_d_memory": D_MODEL,
            "xa_n_heads": 1,
            "max_length_causal_mask": 512,
        },
        "context_encoder": {**layer, "is_causal": False, "max_length_causal_mask": 512},
        "local_transformer_type": "autoregressive",
        "local_transformer_hidden_dim": D_MODEL,
        "local_transformer_n_layers": 1,
        "prior_end_step": 0,
        "prior_scaledown_start_step": 0,
        "prior_scaling_factor": None,
        "context_duration_min": 5.0,
        "context_duration_max": 5.0,
        "load_cached_codes_if_available": False,
        "inference_parameters": {"max_decoder_steps": max_decoder_steps, "topk": 80},
        "optim": {"name": "adam", "lr": 1e-4},
    }


def build_tiny_magpie(directory: str | Path, *, max_decoder_steps: int = 24) -> Path:
    """Build, save and return the path of a tiny Magpie ``.nemo`` (its codec saved beside it)."""
    import torch
    from nemo.collections.tts.models import AudioCodecModel, MagpieTTSModel
    from omegaconf import OmegaConf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    codec = AudioCodecModel(cfg=OmegaConf.create(codec_config()))
    codec_path = directory / "tiny_codec.nemo"
    codec.save_to(str(codec_path))

    cfg = OmegaConf.create(
        magpie_config(str(codec_path.resolve()), max_decoder_steps=max_decoder_steps)
    )
    model = MagpieTTSModel(cfg=cfg)
    flat = torch.nn.Embedding(NUM_SPEAKERS, CONTEXT_T * D_MODEL)
    flat.weight.requires_grad_(False)
    model.baked_context_embedding = flat
    model._baked_embedding_T = torch.tensor(CONTEXT_T)
    model._baked_embedding_D = torch.tensor(D_MODEL)
    model.baked_context_embedding_len = torch.full((NUM_SPEAKERS,), CONTEXT_T, dtype=torch.long)
    path = directory / "tiny_magpie.nemo"
    model.save_to(str(path))
    return path
