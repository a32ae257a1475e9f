"""Predictable start-up failures end in one short message with its fix: no traceback, exit != 0.

Every case runs the real CLI (``python -m agent.cli``) as a child process on this machine, with no
GPU needed: a cuda device here has no CUDA behind it (the nvidia-profile cases skip on a GPU
machine). ``HF_HUB_OFFLINE=1`` makes the hub cases certain, and the environment is cleared of
API keys and ``VOICE_AGENT_*`` settings so a developer's shell cannot change the outcome.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEY_VARIABLES = ("OPENAI_API_KEY", "NVIDIA_API_KEY", "DAILY_API_KEY")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``voice-agent ARGS`` to completion; stdout and stderr together in ``stdout``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in KEY_VARIABLES and not key.startswith("VOICE_AGENT_")
    }
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args, "--env-file", os.devnull],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def assert_clean_failure(
    result: subprocess.CompletedProcess, code: int, *phrases: str, only_message: bool = True
) -> str:
    """Exit ``code``, no traceback, exactly one ``voice-agent:`` message holding ``phrases``.

    With ``only_message``, nothing else was printed: the failure was found before any model,
    server or Pipecat itself (its banner) loaded.
    """
    out = result.stdout
    assert result.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = out.rstrip().splitlines()
    messages = [i for i, line in enumerate(lines) if line.startswith("voice-agent: ")]
    assert len(messages) == 1, out[-3000:]
    # The message comes last: cause, then its indented fix (or the keys of a config error).
    assert all(line.startswith("  ") for line in lines[messages[0] + 1 :]), out[-3000:]
    if only_message:
        assert messages == [0], out[-3000:]
    for phrase in phrases:
        assert phrase in out, f"{phrase!r} not in:\n{out[-3000:]}"
    return out


def run_args(*settings: str) -> list[str]:
    """``run --profile cpu`` on a free port with ``--set`` for each of ``settings``."""
    args = ["run", "--profile", "cpu", "--host", "127.0.0.1", "--port", str(free_port())]
    for setting in settings:
        args += ["--set", setting]
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def no_cuda() -> None:
    from agent.profiles import cuda_is_available

    if cuda_is_available():
        pytest.skip("this machine has CUDA: a cuda device is no error here")


# ---- no CUDA for a cuda device ----


def test_the_nvidia_profile_without_cuda(no_cuda):
    result = cli("run", "--profile", "nvidia", "--port", str(free_port()))
    assert_clean_failure(
        result, 1, "stt.device = 'cuda' but CUDA is not available", "fix:", "--profile cpu"
    )


def test_a_cuda_stt_device_without_cuda(no_cuda):
    result = cli(*run_args("stt.backend=nemotron", "stt.device=cuda"))
    assert_clean_failure(
        result, 1, "stt.device = 'cuda' but CUDA is not available", "--set stt.device=cpu"
    )


def test_the_asr_server_on_cuda_without_cuda(no_cuda, tmp_path):
    model = tmp_path / "model.nemo"
    model.write_bytes(b"")  # the device is checked first; the model never loads
    result = cli("asr-server", "--model", str(model), "--device", "cuda", "--port", "0")
    assert_clean_failure(result, 1, "--device 'cuda' but CUDA is not available", "--device cpu")


def test_the_asr_cluster_on_cuda_without_cuda(no_cuda, tmp_path):
    model = tmp_path / "model.nemo"
    model.write_bytes(b"")  # checked before Ray starts; nothing loads
    result = cli("asr-cluster", "--model", str(model), "--device", "cuda", "--port", "0")
    assert_clean_failure(result, 1, "--device 'cuda' but CUDA is not available", "--device cpu")


def test_the_asr_cluster_with_a_missing_model_file(tmp_path):
    missing = tmp_path / "missing.nemo"
    result = cli("asr-cluster", "--model", str(missing), "--device", "cpu", "--port", "0")
    assert_clean_failure(result, 1, f"{missing} does not exist")


# ---- a model that cannot be found or downloaded ----


def test_a_missing_nemotron_model_file(tmp_path):
    missing = tmp_path / "missing.nemo"
    result = cli(*run_args("stt.backend=nemotron", "stt.device=cpu", f"stt.model={missing}"))
    assert_clean_failure(
        result, 1, f"{missing} does not exist", "set stt.model to the path of an existing .nemo"
    )


def test_a_hub_model_that_cannot_be_downloaded():
    result = cli(*run_args("stt.backend=nemotron", "stt.device=cpu", "stt.model=nvidia/no-such"))
    assert_clean_failure(
        result,
        1,
        "'nvidia/no-such' is not in the Hugging Face cache and HF_HUB_OFFLINE forbids",
        "huggingface-cli download nvidia/no-such",
    )


@pytest.mark.timeout(120)
def test_a_model_file_that_is_no_nemo_checkpoint_fails_in_the_engine_process(tmp_path):
    # It exists, so only loading it in the engine process finds out: the child's reason comes
    # back to the CLI, and neither process prints a traceback.
    broken = tmp_path / "broken.nemo"
    broken.write_bytes(b"not a tar file")
    result = cli("asr-server", "--model", str(broken), "--device", "cpu", "--port", "0")
    out = assert_clean_failure(
        result, 1, "Could not restore ASR model", "fix:", "--model", only_message=False
    )
    assert "ASR engine process started" in out  # the failure did come from the child


def test_a_missing_magpie_model_file(tmp_path):
    missing = tmp_path / "magpie.nemo"
    result = cli(*run_args("tts.backend=magpie", "tts.device=cpu", f"tts.model={missing}"))
    assert_clean_failure(result, 1, "tts.model", f"{missing} does not exist")


def test_a_missing_whisper_model_folder(tmp_path):
    missing = tmp_path / "whisper-model"
    result = cli(*run_args(f"stt.model={missing}"))
    assert_clean_failure(result, 1, f"{missing} does not exist", "CTranslate2 Whisper model")


def test_a_missing_gguf_file(tmp_path):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (that is reported first)")
    missing = tmp_path / "model.gguf"
    result = cli(*run_args(f"llm.gguf_path={missing}"))
    assert_clean_failure(result, 1, f"GGUF file {missing} does not exist", "llm.gguf_path")


# ---- a port in use ----


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_run_on_a_port_in_use(taken_port):
    result = cli("run", "--profile", "cpu", "--host", "127.0.0.1", "--port", str(taken_port))
    assert_clean_failure(result, 1, f"port {taken_port} on 127.0.0.1 is already in use", "--port N")


def test_the_asr_server_on_a_port_in_use(taken_port, tmp_path):
    model = tmp_path / "model.nemo"
    model.write_bytes(b"")  # exists: the port is checked before anything loads
    result = cli("asr-server", "--model", str(model), "--device", "cpu", "--port", str(taken_port))
    assert_clean_failure(result, 1, f"port {taken_port} on 127.0.0.1 is already in use", "--port N")


# ---- a missing API key ----


@pytest.mark.parametrize("prewarm", [True, False], ids=["prewarm", "no-prewarm"])
def test_the_openai_preset_without_a_key(prewarm):
    # Without --no-prewarm nothing else would have noticed before the first call; with it, the
    # agent used to serve the room and fail every session.
    args = run_args("llm.preset=openai") + ([] if prewarm else ["--no-prewarm"])
    result = cli(*args)
    assert_clean_failure(
        result, 1, "llm.preset = 'openai' needs an API key", "export OPENAI_API_KEY="
    )


# ---- a bad config value ----


def test_a_setting_out_of_range():
    result = cli(*run_args("llm.temperature=5"))
    assert_clean_failure(result, 2, "llm.temperature = 5 (from cli --set)", "less than or equal")


def test_a_bad_asr_server_option():
    result = cli("asr-server", "--max-streams", "0", "--port", "0")
    assert_clean_failure(result, 2, "--max-streams 0: must be >= 1")


# ---- DEBUG shows the traceback ----


def test_debug_log_level_adds_the_traceback():
    result = cli(*run_args("llm.preset=openai"), "--log-level", "DEBUG")
    out = result.stdout
    assert result.returncode == 1
    assert "Traceback" in out and "PresetError" in out, out[-3000:]
    assert out.rstrip().splitlines()[-2].startswith("voice-agent: llm.preset = 'openai'"), out


def test_trace_log_level_is_accepted():
    # log_level allows TRACE (loguru's level below DEBUG); stdlib logging, which NeMo and the
    # engine log through, has no such level and used to crash the start with ValueError.
    result = cli(*run_args("llm.preset=openai"), "--log-level", "TRACE")
    out = result.stdout
    assert result.returncode == 1, out[-3000:]
    assert "Unknown level" not in out, out[-3000:]
    assert out.rstrip().splitlines()[-2].startswith("voice-agent: llm.preset = 'openai'"), out
