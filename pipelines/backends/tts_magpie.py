"""``tts.backend = "magpie"``: NVIDIA Magpie TTS in-process through NeMo.

One model per (model, device) is loaded per process and shared by every session; synthesis runs
on its worker thread. ``tts.model`` is a Hugging Face id (default
``nvidia/magpie_tts_multilingual_357m``) or a local ``.nemo``; ``tts.voice`` a speaker (John,
Sofia, Aria, Jason, Leo); ``tts.language`` one of en, es, de, fr, vi, it, zh, hi, ja;
``tts.cfg_scale`` the classifier-free guidance scale (unset: the checkpoint's; 1.0: off, which
halves the compute, useful without a GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.checks import Check
    from pipelines.settings import AgentSettings


def build(settings: AgentSettings):
    """A Magpie TTS service for one session, on the process-wide model."""
    from services.tts.magpie import MagpieTTSService
    from services.tts.magpie_engine import speaker_index
    from services.tts.speakable import speakable_transforms

    tts = settings.tts
    speaker_index(tts.voice)  # an unknown speaker name is a config error, reported now
    return MagpieTTSService(
        model=tts.model,
        device=tts.device,
        first_clause_min_chars=settings.tts.first_clause_min_chars,
        settings=MagpieTTSService.Settings(
            voice=tts.voice or "Aria", language=tts.language, cfg_scale=tts.cfg_scale
        ),
        text_transforms=speakable_transforms(),
    )


def preflight(settings: AgentSettings) -> None:
    """Fail now, before a model loads, where start-up is sure to fail: no CUDA, no model file.

    Raises:
        StartupError: With the cause and the fix.
    """
    from pipelines.checks import check_device, check_model_source, require

    require(check_device("tts.device", settings.tts.device))
    require(check_model_source("tts.model", settings.tts.model))


async def prewarm(settings: AgentSettings) -> None:
    """Load the model and synthesize once, so the first reply does not pay for it.

    Raises:
        StartupError: The model could not be loaded.
    """
    from pipelines.checks import StartupError
    from services.tts.magpie_engine import get_magpie_engine, speaker_index

    tts = settings.tts
    engine = get_magpie_engine(tts.model, tts.device)
    try:
        await engine.load()
    except RuntimeError as exc:  # what load() raises for a model it cannot load, with why
        raise StartupError(
            str(exc),
            "set tts.model to an existing Magpie .nemo or a reachable Hugging Face id "
            "(voice-agent doctor checks it), or use tts.backend = hibari",
        ) from exc
    await engine.synthesize(
        "Hello.", language=tts.language, speaker=speaker_index(tts.voice), cfg_scale=tts.cfg_scale
    )


def checks(settings: AgentSettings) -> list[Check]:
    """Doctor checks: NeMo's TTS collection, the model, and a note on CPU speed."""
    from pipelines.checks import Check, check_model, check_package

    found = [check_package("nemo", "nemo_toolkit[asr]")]
    found.append(check_model("tts.model", settings.tts.model))
    if settings.tts.device == "cpu":
        found.append(
            Check(
                "tts.device",
                True,
                "Magpie on CPU is slower than real time; use a GPU or tts.backend = hibari",
                required=False,
            )
        )
    return found
