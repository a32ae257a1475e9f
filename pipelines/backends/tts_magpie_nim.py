"""``tts.backend = "magpie-nim"``: a Magpie TTS NIM over gRPC through Pipecat's NvidiaTTSService.

A local NIM: ``tts.server = "localhost:50051"`` and ``tts.use_ssl = false`` (the defaults). NVIDIA's
hosted API: ``tts.server = "grpc.nvcf.nvidia.com:443"``, ``tts.use_ssl = true`` and
``tts.api_key`` (or ``NVIDIA_API_KEY``). ``tts.voice`` is a NIM voice such as
``Magpie-Multilingual.EN-US.Aria``, or just a speaker name (``Aria``) completed from
``tts.language``. ``tts.nim_mode`` is ``per_sentence`` (one call per sentence) or ``stitched``
(one stream per reply, for Magpie's cross-sentence stitching).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.checks import Check
    from pipelines.settings import AgentSettings

HOSTED_SERVER = "grpc.nvcf.nvidia.com"
# NVIDIA's hosted Magpie TTS Multilingual deployment (from Pipecat's NvidiaTTSService default).
HOSTED_FUNCTION_ID = "877104f7-e885-42b9-8de8-f6e4c6303969"
NIM_MODEL_NAME = "magpie-tts-multilingual"
_NIM_LOCALES = {
    "en": "EN-US",
    "es": "ES-US",
    "fr": "FR-FR",
    "de": "DE-DE",
    "zh": "ZH-CN",
    "vi": "VI-VN",
    "it": "IT-IT",
    "hi": "HI-IN",
    "ja": "JA-JP",
}


def nim_locale(language: str) -> str:
    """``en`` -> ``EN-US``; a full locale (``en-GB``) is upper-cased as is."""
    if "-" in language:
        base, region = language.split("-", 1)
        return f"{base.upper()}-{region.upper()}"
    return _NIM_LOCALES.get(language.lower(), f"{language.upper()}-{language.upper()}")


def nim_language(language: str) -> str:
    """The request's language code: ``en`` -> ``en-US``."""
    base, region = nim_locale(language).split("-", 1)
    return f"{base.lower()}-{region}"


def nim_voice(voice: str | None, language: str) -> str:
    """A full NIM voice name from a name or a bare speaker (``Aria``)."""
    if voice and "." in voice:
        return voice
    speaker = (voice or "Aria").strip().capitalize()
    return f"Magpie-Multilingual.{nim_locale(language)}.{speaker}"


def is_hosted(server: str) -> bool:
    """Whether the server is NVIDIA's cloud endpoint."""
    return server.split(":")[0].lower() == HOSTED_SERVER


def build(settings: AgentSettings):
    """A NIM-backed Magpie TTS service for one session."""
    from pipecat.services.nvidia.tts import NvidiaTTSService, NvidiaTTSSynthesisMode

    from services.tts.speakable import speakable_transforms

    tts = settings.tts
    hosted = is_hosted(tts.server)
    api_key = tts.api_key.get_secret_value() if tts.api_key else None
    if hosted and not api_key:
        api_key = os.environ.get("NVIDIA_API_KEY")
    model = tts.model
    if model.startswith("nvidia/") or model.endswith(".nemo"):
        model = NIM_MODEL_NAME  # the in-process model id is not a NIM model name
    return NvidiaTTSService(
        api_key=api_key,
        server=tts.server,
        use_ssl=tts.use_ssl,
        model_function_map={
            "function_id": HOSTED_FUNCTION_ID if hosted else None,
            "model_name": model,
        },
        settings=NvidiaTTSService.Settings(
            voice=nim_voice(tts.voice, tts.language),
            language=nim_language(tts.language),
            synthesis_mode=NvidiaTTSSynthesisMode(tts.nim_mode),
        ),
        text_transforms=speakable_transforms(),
    )


def checks(settings: AgentSettings) -> list[Check]:
    """Doctor checks: the Riva client, the server, and a key for the hosted API."""
    from pipelines.checks import Check, check_package, check_tcp

    tts = settings.tts
    found = [
        check_package("riva.client", "nvidia-riva-client"),
        check_tcp("tts.server (Magpie NIM)", tts.server),
    ]
    if is_hosted(tts.server):
        has_key = bool(tts.api_key) or bool(os.environ.get("NVIDIA_API_KEY"))
        found.append(
            Check(
                "NVIDIA_API_KEY",
                has_key,
                "set" if has_key else "not set",
                "" if has_key else "set tts.api_key or NVIDIA_API_KEY for the hosted API",
            )
        )
    return found
