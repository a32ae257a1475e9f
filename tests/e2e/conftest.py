"""Fixtures for end-to-end tests: real speech, a running agent (``cpu`` profile), a transcriber.

The agent runs as a subprocess, once per test session, and serves every test's WebRTC sessions.
Its log goes to ``$E2E_OUTPUT_DIR`` (default: pytest's temp folder); a failing test prints
its tail.

Set-up these tests need (``scripts/setup_test_host.sh`` does it): Debian ``chromium`` for the
browser test, the ``cpu`` extra plus ``llama-cpp-python[server]``, and an IPv4 address other
than 127.x, since aiortc drops loopback ICE candidates. ``E2E_AGENT_URL`` points the tests
at an agent that is already running instead (any profile).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.agent_process import AgentProcess, start_agent, webrtc_host_address
from tests.e2e.speech import Utterance, load_utterances, questions

# Answers short enough to keep the suite at a few minutes; temperature 0 for repeatable text.
E2E_OVERRIDES = {"llm.temperature": "0", "llm.max_tokens": "40"}


def pytest_collection_modifyitems(config, items):
    # Every test in this folder is end-to-end, whether or not it says so.
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory) -> Path:
    """Where agent logs and recordings go."""
    configured = os.environ.get("E2E_OUTPUT_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def utterances() -> list[Utterance]:
    """The real-speech cache (fetched on first use)."""
    try:
        found = load_utterances()
    except RuntimeError as exc:
        pytest.fail(f"could not fetch real speech: {exc}")
    if not found:
        pytest.fail("no real speech available: run scripts/fetch_speech.py")
    return found


@pytest.fixture(scope="session")
def question(utterances) -> Utterance:
    """A recorded spoken question of a few seconds."""
    asked = [u for u in questions(utterances) if 1.5 <= u.duration_s <= 5.0]
    if not asked:
        pytest.fail("no recorded question of 1.5-5 s in the speech cache")
    # The one with the most words: more for the ASR and the LLM to go on.
    return max(asked, key=lambda u: len(u.text.split()))


@pytest.fixture(scope="session")
def agent(e2e_dir) -> AgentProcess | str:
    """A running agent on the ``cpu`` profile (or ``$E2E_AGENT_URL``)."""
    external = os.environ.get("E2E_AGENT_URL")
    if external:
        yield external.rstrip("/")
        return
    if webrtc_host_address() is None:
        pytest.fail(
            "no IPv4 address other than 127.x: aiortc drops loopback ICE candidates. "
            "Add one (root): ip addr add 10.203.0.1/32 dev lo  (scripts/setup_test_host.sh)"
        )
    try:
        process = start_agent(
            profile="cpu", overrides=E2E_OVERRIDES, log_path=e2e_dir / "agent.log"
        )
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield process
    process.stop()


@pytest.fixture(scope="session")
def agent_url(agent) -> str:
    return agent if isinstance(agent, str) else agent.url


@pytest.fixture
def agent_log(agent, request):
    """Prints the agent's log tail when the test fails."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and not isinstance(agent, str):
        print(f"\n--- agent log tail ({agent.log_path}) ---\n{agent.log_tail(80)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def transcriber():
    """Whisper tiny.en (the packaged model), as the client's ears."""
    pytest.importorskip("faster_whisper")
    from faster_whisper import WhisperModel

    from pipelines.backends.stt_whisper import packaged_model_path

    model = WhisperModel(packaged_model_path(), device="cpu", compute_type="int8")

    def transcribe(samples) -> str:
        import numpy as np

        audio = np.asarray(samples, dtype=np.float32) / 32768.0
        segments, _ = model.transcribe(audio, language="en", beam_size=1)
        return " ".join(s.text.strip() for s in segments).strip()

    return transcribe
