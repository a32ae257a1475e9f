"""LLM tests talk to a real local OpenAI-compatible server (tests/support/openai_stub.py)."""

from __future__ import annotations

import pytest

from tests.support.openai_stub import FakeOpenAIServer


@pytest.fixture
async def fake_llm():
    server = await FakeOpenAIServer().start()
    yield server
    await server.stop()
