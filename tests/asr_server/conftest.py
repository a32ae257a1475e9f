"""Fixtures: one tiny ASR engine per session; a real server on 127.0.0.1 per test."""

from __future__ import annotations

import pytest

from services.asr.server import ASRServer, ServerConfig
from tests.asr_server.tiny import build_tiny_nemo, open_tiny_engine


@pytest.fixture(scope="session")
def tiny_nemo(tmp_path_factory):
    return build_tiny_nemo(tmp_path_factory.mktemp("tiny_asr") / "tiny.nemo")


@pytest.fixture(scope="session")
def tiny_engine(tiny_nemo):
    engine = open_tiny_engine(tiny_nemo)
    yield engine
    engine.shutdown()


@pytest.fixture
async def start_server(tiny_engine):
    """``await start_server(**ServerConfig fields)`` -> a started server, stopped after the test."""
    servers: list[ASRServer] = []

    async def start(**overrides) -> ASRServer:
        overrides.setdefault("port", 0)
        server = ASRServer(tiny_engine, ServerConfig(host="127.0.0.1", **overrides))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(start_server):
    return await start_server()
