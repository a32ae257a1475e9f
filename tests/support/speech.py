"""Real recorded utterances as raw 16 kHz PCM16, for fixtures that stream them to a service."""

from __future__ import annotations

import wave

import pytest

from tests.e2e.speech import load_utterances


def cached_utterances() -> list:
    """Every cached real utterance, fetched first if needed; skips the test when it cannot be."""
    try:
        return load_utterances()
    except RuntimeError as exc:
        pytest.skip(f"real speech unavailable: {exc}")


def real_utterances_pcm(prefix: str, min_s: float, max_s: float, count: int) -> list[bytes]:
    """The first ``count`` cached utterances (by id) under ``prefix``, ``min_s``-``max_s`` long.

    Each is the WAV's frames (16 kHz mono PCM16, asserted). Skips the test when the speech
    cannot be fetched or fewer than ``count`` match.
    """
    found = cached_utterances()
    chosen = sorted(
        (u for u in found if u.id.startswith(prefix) and min_s <= u.duration_s <= max_s),
        key=lambda u: u.id,
    )[:count]
    if len(chosen) < count:
        pytest.skip("no real speech cached (scripts/fetch_speech.py)")
    pcm = []
    for utterance in chosen:
        with wave.open(str(utterance.path)) as w:
            assert w.getframerate() == 16000 and w.getnchannels() == 1
            pcm.append(w.readframes(w.getnframes()))
    return pcm
