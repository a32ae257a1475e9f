"""Fixtures: the tiny ASR engine (shared with tests/asr_server) for the STT service tests."""

from __future__ import annotations

import pytest

from tests.asr_server.tiny import build_tiny_nemo, open_tiny_engine


@pytest.fixture(scope="session")
def tiny_nemo(tmp_path_factory):
    return build_tiny_nemo(tmp_path_factory.mktemp("tiny_asr") / "tiny.nemo")


@pytest.fixture(scope="session")
def tiny_engine(tiny_nemo):
    engine = open_tiny_engine(tiny_nemo)
    yield engine
    engine.shutdown()
