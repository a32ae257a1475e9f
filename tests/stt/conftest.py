"""Fixtures: the tiny ASR engine and a real ASR server, shared with tests/asr_server."""

from __future__ import annotations

from tests.asr_server.conftest import server, start_server, tiny_engine, tiny_nemo  # noqa: F401
