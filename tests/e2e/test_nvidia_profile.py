"""The nvidia profile end to end on this CPU: a WebRTC client speaks and hears the bot.

``voice-agent run --profile nvidia`` runs as a child process with its model settings pointed at
tiny Nemotron and Magpie ``.nemo`` files (real NeMo classes, random or briefly trained weights,
``tests/e2e/tiny_models.py``) on ``device=cpu``; everything else is the profile's: the
Nemotron engine in its own process, Magpie in-process, the ``vllm`` LLM preset (model
discovered from the server), Smart Turn and speculative answers. A second agent keeps the
profile but takes speech from a real ``voice-agent asr-server`` child on the tiny model
(``stt.backend=remote``) and speaks through a Magpie NIM (``tts.backend=magpie-nim``).

Fakes, named: the LLM endpoints (``FakeOpenAIServer``: the OpenAI protocol, scripted words; a
hosted or GPU LLM cannot run here) and the NIM (``ToneNim``: the real Riva gRPC protocol,
answering a 440 Hz tone instead of a voice).

What the client receives is the proof: the transcript over RTVI is the one the LLM endpoint was
asked about, the reply text is the endpoint's, the audio is non-silent, and it came from the
configured TTS: the Magpie agent's RTVI metrics name only ``MagpieTTSService`` and its log
shows the Magpie model synthesizing each sentence of the reply; the NIM agent's audio has the
NIM's pitch. Tiny Magpie audio is noise-like, so nothing is asserted about what it says.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipelines.latency import frame_rms
from tests.e2e.agent_process import REPO_ROOT, agent_command, free_port, start_agent
from tests.e2e.tiny_models import build_hearing_tiny_nemotron
from tests.e2e.voice_client import SAMPLE_RATE, VoiceClient
from tests.support.in_thread import InThread
from tests.support.magpie_nim import TONE_HZ, ToneNim, dominant_hz
from tests.support.openai_stub import FakeOpenAIServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

REPLY = ["Hello there.", " The tiny models are speaking."]
REPLY_TEXT = "".join(REPLY)
# The turn's breakdown as the agent logs it (pipelines/latency.py).
LATENCY_LINE = re.compile(r"Turn latency (\d+) ms voice-to-voice: (.+)")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[str, str]:
    """(tiny Nemotron, tiny Magpie) ``.nemo`` paths, built once for the module."""
    pytest.importorskip("nemo.collections.tts.models")
    from tests.tts.tiny_magpie import build_tiny_magpie

    folder = tmp_path_factory.mktemp("nvidia-models")
    asr = build_hearing_tiny_nemotron(folder / "tiny_nemotron.nemo")
    magpie = build_tiny_magpie(folder / "magpie")
    return str(asr), str(magpie)


def model_settings(asr: str, magpie: str) -> dict[str, str]:
    return {
        "stt.model": asr,
        "stt.device": "cpu",
        "tts.model": magpie,
        "tts.device": "cpu",
        "llm.max_tokens": "40",
    }


# RMS of a 20 ms int16 frame that counts as sound (about -56 dBFS): decoded Opus silence is
# near 0; the tiny Magpie's noise-like audio is quieter than speech (VOICED_RMS is 180).
AUDIBLE_RMS = 50.0


def audible(audio: np.ndarray) -> np.ndarray:
    """The 20 ms frames of ``audio`` above :data:`AUDIBLE_RMS`, joined."""
    step = SAMPLE_RATE // 50
    frames = [audio[i : i + step] for i in range(0, len(audio) - step + 1, step)]
    loud = [f for f in frames if frame_rms(f) >= AUDIBLE_RMS]
    return np.concatenate(loud) if loud else np.zeros(0, np.int16)


def tts_processors(messages: list[dict]) -> set[str]:
    """Class names of the processors that reported TTS metrics over RTVI this turn."""
    names = set()
    for message in messages:
        if message.get("type") != "metrics":
            continue
        for entries in (message.get("data") or {}).values():
            for entry in entries:
                name = str(entry.get("processor", "")).partition("#")[0]
                if name.endswith("TTSService"):
                    names.add(name)
    return names


async def speak_one_turn(url: str, question) -> object:
    client = VoiceClient(url)
    await client.connect()
    try:
        return await client.say(question.path, response_timeout=45.0, max_reply_secs=20.0)
    finally:
        await client.close()


def assert_turn_reached_the_llm(turn, llm: FakeOpenAIServer) -> dict:
    """The endpoint was asked about the transcript the client saw, and its reply came back."""
    assert turn.user_transcript, "no final user transcript over RTVI"
    streamed = [r for r in llm.requests if r.get("stream")]
    assert streamed, "the LLM endpoint got no chat completion"
    request = streamed[-1]
    user = [m for m in request["messages"] if m["role"] == "user"]
    assert user and user[-1]["content"].strip() == turn.user_transcript.strip(), request
    # The endpoint's words are what the bot said (RTVI bot-output).
    assert turn.bot_text.split() == REPLY_TEXT.split(), turn.bot_text
    return request


def assert_audible_reply(turn) -> np.ndarray:
    assert turn.first_audio_at is not None, "no bot audio reached the client"
    loud = audible(turn.bot_audio)
    audio = turn.bot_audio
    rms = [round(frame_rms(audio[i : i + 320])) for i in range(0, len(audio), 320)]  # for a failure
    assert len(loud) / SAMPLE_RATE >= 0.3, f"{len(loud) / SAMPLE_RATE:.2f} s audible: {rms}"
    return loud


def ms_by_name(text: str) -> dict[str, int]:
    """``"a 100 ms, b 20 ms"`` -> ``{"a": 100, "b": 20}``."""
    return {name: int(ms) for name, ms in re.findall(r"(\w+) (\d+) ms", text)}


def assert_latency_logged(log: str, turn) -> None:
    """The agent logged the turn's voice-to-voice time with its per-stage breakdown."""
    lines = list(LATENCY_LINE.finditer(log))
    assert lines, "no turn latency line in the agent log"
    total, breakdown = int(lines[-1].group(1)), lines[-1].group(2)
    timeline, _, hidden = breakdown.partition("; hidden behind turn detection: ")
    parts, hidden_parts = ms_by_name(timeline), ms_by_name(hidden)
    # The stages this pipeline has, each timed. The LLM is on the timeline, or, when the
    # speculative answer's first token came before Smart Turn confirmed the turn, listed as
    # hidden: either way its time is reported, and it is never counted twice.
    assert {"transcription", "speech_synthesis"} <= set(parts), breakdown
    assert ("llm_inference" in parts) != ("llm_inference" in hidden_parts), breakdown
    assert sum(parts.values()) == pytest.approx(total, abs=len(parts)), breakdown
    # The room page's copy of it (RTVI) is the same turn.
    assert turn.server_latency, "no turn-latency message over RTVI"
    assert abs(turn.server_latency["total_secs"] * 1000 - total) <= 1, lines[-1].group(0)


async def test_the_nvidia_profile_hears_and_answers_with_magpie(tiny_models, question, e2e_dir):
    asr, magpie = tiny_models
    with InThread(FakeOpenAIServer(chunks=REPLY, served_model="served/nemotron-nano")) as llm:
        agent = start_agent(
            profile="nvidia",
            overrides={**model_settings(asr, magpie), "llm.base_url": llm.base_url},
            log_path=e2e_dir / "agent-nvidia.log",
        )
        try:
            turn = await speak_one_turn(agent.url, question)
        finally:
            agent.stop()
        log = agent.log_path.read_text(errors="replace")

    request = assert_turn_reached_the_llm(turn, llm)
    # The vllm preset asked the server which model it serves and used that one.
    assert llm.model_lists >= 1 and request["model"] == "served/nemotron-nano", request
    assert_audible_reply(turn)
    # The audio came from Magpie: the only TTS that reported metrics to the client ...
    assert tts_processors(turn.messages) == {"MagpieTTSService"}, turn.messages
    # ... and the tiny Magpie model synthesized every sentence of the reply.
    for sentence in ("Hello there.", "The tiny models are speaking."):
        assert re.search(
            rf"MagpieTTSService#\d+: \d+\.\d+ s of audio in .* \[{re.escape(sentence)}\]", log
        ), f"Magpie did not synthesize {sentence!r}"
    assert f"Magpie TTS {magpie} loaded on cpu" in log
    # The Nemotron engine served the session from its own process (the profile's default).
    assert "Nemotron ASR engine process ready" in log
    assert_latency_logged(log, turn)


class ASRServerProcess:
    """``voice-agent asr-server`` on the tiny model, as a child process on a free port."""

    def __init__(self, model: str, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *agent_command(),
                    "asr-server",
                    "--model",
                    model,
                    "--device",
                    "cpu",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--env-file",
                    "/dev/null",
                ],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"asr-server exited:\n{log_path.read_text()[-3000:]}")
            try:
                if self.get("/ready").startswith("{"):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"asr-server not ready:\n{log_path.read_text()[-3000:]}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=5) as response:
            return response.read().decode()

    def finals(self) -> float:
        """Finals the server has sent (its Prometheus counter)."""
        match = re.search(r'^asr_events_total\{type="final"\} (\S+)$', self.get("/metrics"), re.M)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


async def test_remote_asr_and_magpie_nim_in_one_pipeline(tiny_models, question, e2e_dir):
    asr, _magpie = tiny_models
    server = ASRServerProcess(asr, e2e_dir / "asr-server.log")
    nim = ToneNim().start()
    try:
        with InThread(FakeOpenAIServer(chunks=REPLY, served_model="served/nim-llm")) as llm:
            agent = start_agent(
                profile="nvidia",
                overrides={
                    "stt.backend": "remote",
                    "stt.server_url": f"ws://127.0.0.1:{server.port}/v1/stream",
                    "tts.backend": "magpie-nim",
                    "tts.server": nim.address,
                    "llm.preset": "nim",
                    "llm.base_url": llm.base_url,
                    "llm.max_tokens": "40",
                },
                log_path=e2e_dir / "agent-remote-nim.log",
            )
            try:
                finals_before = server.finals()
                turn = await speak_one_turn(agent.url, question)
                finals_after = server.finals()
            finally:
                agent.stop()
            log = agent.log_path.read_text(errors="replace")
    finally:
        nim.stop()
        server.stop()

    request = assert_turn_reached_the_llm(turn, llm)
    assert request["model"] == "served/nim-llm", request
    # The ASR server transcribed the turn: it sent the final the client saw.
    assert finals_after > finals_before, (finals_before, finals_after)
    # The NIM was asked to speak each sentence of the reply, in the default Magpie voice.
    assert [t.strip() for t in nim.texts] == ["Hello there.", "The tiny models are speaking."]
    assert set(nim.voices) == {"Magpie-Multilingual.EN-US.Aria"}
    # What the client heard is the NIM's audio: its pitch.
    loud = assert_audible_reply(turn)
    heard = dominant_hz(loud, SAMPLE_RATE)
    assert abs(heard - TONE_HZ) < 15, f"the bot's audio peaks at {heard:.0f} Hz, not the NIM's"
    assert tts_processors(turn.messages) == {"NvidiaTTSService"}, turn.messages
    assert_latency_logged(log, turn)
