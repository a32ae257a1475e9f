"""Fixtures: one tiny ASR engine per session; a real server on 127.0.0.1 per test."""

from __future__ import annotations

import pytest

from services.asr.server import ASRServer, ServerConfig

# The engine tests' tiny model (a real .nemo whose random weights emit text); importing their
# conftest also pins torch to one intra-op thread, as on these 2-core machines it must be.
from tests.asr.conftest import tiny_nemo  # noqa: F401, F811
from tests.asr_server.tiny import open_tiny_engine


@pytest.fixture(scope="session")
def tiny_engine(tiny_nemo):  # noqa: F811
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
