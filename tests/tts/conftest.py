"""Fixtures for TTS tests: one tiny Magpie (random weights) built per test session."""

from __future__ import annotations

import pytest

from tests.tts.tiny_magpie import build_tiny_magpie


@pytest.fixture(scope="session")
def tiny_magpie_path(tmp_path_factory) -> str:
    """A tiny Magpie ``.nemo`` (and its codec) saved once per session; load it with restore_from."""
    pytest.importorskip("nemo.collections.tts.models")
    return str(build_tiny_magpie(tmp_path_factory.mktemp("magpie")))


@pytest.fixture(scope="session")
def tiny_magpie_engine(tiny_magpie_path):
    """The process-wide engine for the tiny Magpie on CPU (what every service here shares)."""
    from services.tts.magpie_engine import get_magpie_engine

    return get_magpie_engine(tiny_magpie_path, "cpu")
