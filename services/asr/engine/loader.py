"""Load a cache-aware RNNT model and put it in streaming inference mode."""

from __future__ import annotations

import logging
import os
import time

import torch

from .config import EngineConfig

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what the user can do about it."""


def is_local_model(model: str) -> bool:
    """True when ``model`` names a file rather than a Hugging Face id."""
    expanded = os.path.expanduser(model)
    return (
        model.endswith(".nemo")
        or os.path.exists(expanded)
        or model.startswith(("/", "./", "../", "~"))
    )


def load_asr_model(config: EngineConfig, device: str | None = None):
    """Load the model named by ``config`` and configure it for exact cache-aware streaming.

    Args:
        config: engine configuration (model id or path, chunk mode).
        device: torch device string; defaults to ``config.resolved_device()``.

    Returns:
        The NeMo ``EncDecRNNTModel`` in eval mode on ``device``.

    Raises:
        ModelLoadError: the file is missing, the hub is unreachable, or the model cannot stream.
    """
    device = device or config.resolved_device()
    started = time.perf_counter()
    try:
        from nemo.collections.asr.models import ASRModel
    except ImportError as exc:  # pragma: no cover - the venv always has NeMo
        raise ModelLoadError(
            "NeMo ASR is not installed: install nemo_toolkit[asr] to use the ASR engine"
        ) from exc

    map_location = torch.device(device)
    if is_local_model(config.model):
        path = os.path.abspath(os.path.expanduser(config.model))
        if not os.path.isfile(path):
            raise ModelLoadError(
                f"ASR model file not found: {path}. Pass the path of an existing .nemo file, "
                f"or a Hugging Face id such as 'nvidia/nemotron-speech-streaming-en-0.6b'."
            )
        logger.info("Loading ASR model from %s onto %s", path, device)
        try:
            model = ASRModel.restore_from(path, map_location=map_location)
        except Exception as exc:
            raise ModelLoadError(
                f"Could not restore ASR model from {path}: {exc}. Is it a NeMo .nemo checkpoint?"
            ) from exc
    else:
        logger.info(
            "Loading ASR model %s from the Hugging Face hub (or its local cache) onto %s",
            config.model,
            device,
        )
        try:
            model = ASRModel.from_pretrained(config.model, map_location=map_location)
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load ASR model '{config.model}' from the Hugging Face hub: {exc}. "
                "If this machine is offline, download the .nemo file where the hub is reachable "
                f"(e.g. `huggingface-cli download {config.model}`), copy it here and pass its "
                "path as the model, or point HF_HOME at a cache that already holds it."
            ) from exc

    configure_for_streaming(model, config)
    model = model.to(map_location)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "ASR model ready: %s, %.1fM parameters, chunk %d ms (att_context_size %s), %s, %.1f s",
        type(model).__name__,
        n_params / 1e6,
        config.chunk_ms,
        config.att_context_size,
        config.dtype,
        time.perf_counter() - started,
    )
    return model


def configure_for_streaming(model, config: EngineConfig) -> None:
    """Set the chunk mode and the preprocessor settings exact streaming needs; eval mode.

    Raises:
        ModelLoadError: the model is not a cache-aware transducer.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "cache_aware_stream_step"):
        raise ModelLoadError(
            f"{type(model).__name__} has no cache-aware streaming encoder; use a cache-aware "
            "FastConformer transducer such as nvidia/nemotron-speech-streaming-en-0.6b"
        )
    if not hasattr(model, "joint") or not hasattr(model, "decoder"):
        raise ModelLoadError(f"{type(model).__name__} is not an RNNT (transducer) model")
    if getattr(encoder, "att_context_style", None) not in ("chunked_limited", "regular"):
        raise ModelLoadError(
            f"encoder att_context_style={encoder.att_context_style!r}: chunked_limited needed"
        )
    supported = [list(x) for x in getattr(encoder, "att_context_size_all", [])]
    wanted = config.att_context_size
    if supported and wanted not in supported:
        raise ModelLoadError(
            f"chunk_ms={config.chunk_ms} needs att_context_size {wanted}, but this model was "
            f"trained with {supported} only; pick a chunk_ms matching one of them"
        )
    encoder.set_default_att_context_size(wanted)

    featurizer = model.preprocessor.featurizer
    # Per-utterance normalization cannot be computed incrementally; cache-aware models use none.
    if featurizer.normalize not in (None, "NA", "None", ""):
        logger.warning(
            "Preprocessor normalize=%r replaced by none for streaming", featurizer.normalize
        )
    featurizer.normalize = None
    featurizer.dither = 0.0
    featurizer.pad_to = 0
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
