"""``voice-agent doctor``: passes when the set-up works, and fails exactly the checks that do not.

The doctor runs in-process (``agent.cli.main``) against real servers on loopback: an
OpenAI-compatible endpoint (``FakeOpenAIServer``, a FAKE LLM: scripted words, real protocol)
and a Magpie NIM (``ToneNim``, a FAKE NIM: the real Riva gRPC service). One configuration
passes every check; each failing run changes one setting of it, and exactly that check's row
fails, with its fix, while every other row still passes.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

from agent.cli import main as cli_main
from tests.e2e.agent_process import free_port
from tests.support.doctor import doctor_rows
from tests.support.in_thread import InThread
from tests.support.magpie_nim import ToneNim
from tests.support.openai_stub import FakeOpenAIServer

pytestmark = pytest.mark.timeout(60)

CORE_ROWS = {
    "package pipecat-ai",
    "package pipecat-ai[webrtc]",
    "package daily-python",
    "package torch",
    "GPU (CUDA)",
}
CPU_PROFILE_ROWS = CORE_ROWS | {
    "package faster-whisper==1.2.1",
    "model whisper tiny.en",
    "package llama-cpp-python[server]",
    "llm GGUF",
    "package hibari-tts==0.2.1",
    "hibari voice heart",
}
# nemotron + magpie-nim + vllm: the nvidia profile with its servers elsewhere.
SERVED_ROWS = CORE_ROWS | {
    "package nemo_toolkit[asr]",
    "model stt.model",
    "stt device",
    "llm endpoint (vllm)",
    "package nvidia-riva-client",
    "tts.server (Magpie NIM)",
}


@pytest.fixture
def doctor(tmp_path, monkeypatch, capsys):
    """``doctor(*args)`` -> (exit code, rows, output), with no .env and no VOICE_AGENT_* set."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("VOICE_AGENT_"):
            monkeypatch.delenv(name)

    def run(*args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
        code = cli_main(["doctor", *args, "--env-file", os.devnull])
        out = capsys.readouterr().out
        return code, doctor_rows(out), out

    return run


def test_every_check_passes_on_the_cpu_profile(doctor):
    for module in ("faster_whisper", "llama_cpp", "hibari"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the cpu profile needs {module} (the cpu extra)")
    code, rows, out = doctor("--profile", "cpu")
    assert code == 0, out
    assert set(rows) == CPU_PROFILE_ROWS, out
    assert {status for status, _ in rows.values()} == {"ok"}, out
    assert out.rstrip().endswith("all checks passed")


@pytest.fixture(scope="module")
def servers():
    """A running LLM endpoint and Magpie NIM for the whole module."""
    nim = ToneNim().start()
    try:
        with InThread(FakeOpenAIServer()) as llm:
            yield llm, nim
    finally:
        nim.stop()


def served_args(llm, nim, model: str, **changed: str) -> list[str]:
    settings = {
        "stt.model": model,
        "stt.device": "cpu",
        "tts.device": "cpu",
        "tts.backend": "magpie-nim",
        "tts.server": nim.address,
        "llm.base_url": llm.base_url,
        **changed,
    }
    args = ["--profile", "nvidia"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


def test_every_check_passes_with_the_servers_up(doctor, servers, tmp_path):
    llm, nim = servers
    model = tmp_path / "nemotron.nemo"
    model.write_bytes(b"")  # the doctor checks that the file is there; it loads nothing
    code, rows, out = doctor(*served_args(llm, nim, str(model)))
    assert code == 0, out
    assert set(rows) == SERVED_ROWS, out
    assert {status for status, _ in rows.values()} <= {"ok", "warn"}, out
    # The three that the failing runs below break, passing here.
    for name in ("llm endpoint (vllm)", "model stt.model", "tts.server (Magpie NIM)"):
        assert rows[name][0] == "ok", out


@pytest.mark.parametrize("broken", ["llm url", "model file", "tts server"])
def test_exactly_the_broken_check_fails_with_its_fix(broken, doctor, servers, tmp_path):
    llm, nim = servers
    model = tmp_path / "nemotron.nemo"
    model.write_bytes(b"")
    closed = free_port()  # nothing listens there
    if broken == "llm url":
        changed = {"llm.base_url": f"http://127.0.0.1:{closed}/v1"}
        row, fix = (
            "llm endpoint (vllm)",
            ("start the LLM server, or point llm.base_url / llm.preset at a running one"),
        )
    elif broken == "model file":
        changed = {"stt.model": str(tmp_path / "missing.nemo")}
        row, fix = (
            "model stt.model",
            ("set stt.model to the path of an existing .nemo file, or to a Hugging Face model id"),
        )
    else:
        changed = {"tts.server": f"127.0.0.1:{closed}"}
        row, fix = (
            "tts.server (Magpie NIM)",
            (f"start the server on 127.0.0.1:{closed} or change the address in the config"),
        )
    code, rows, out = doctor(*served_args(llm, nim, str(model), **changed))
    assert code == 1, out
    assert set(rows) == SERVED_ROWS, out  # every check still ran
    failed = {name: fix_text for name, (status, fix_text) in rows.items() if status == "FAIL"}
    assert failed == {row: fix}, out
    assert "1 check(s) failed" in out
