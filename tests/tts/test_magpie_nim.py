"""Magpie NIM backend against a local gRPC server that speaks the real Riva TTS protocol.

The server implements ``RivaSpeechSynthesis`` from nvidia-riva-client's generated stubs
(``riva.client.proto.riva_tts_pb2_grpc``), so Pipecat's ``NvidiaTTSService`` talks to it exactly
as it talks to a Magpie TTS NIM on ``localhost:50051``.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
import riva.client.proto.riva_tts_pb2 as rtts
import riva.client.proto.riva_tts_pb2_grpc as rtts_grpc
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.services.nvidia.tts import NvidiaTTSService
from pipecat.tests.utils import SleepFrame, run_test

from pipelines.backends.tts_magpie_nim import nim_language, nim_voice
from pipelines.registry import resolve
from tests.support.settings import section_settings
from tests.tts.llm_frames import reply

pytestmark = pytest.mark.timeout(120)


class FakeMagpieNim(rtts_grpc.RivaSpeechSynthesisServicer):
    """Answers like a Magpie TTS NIM: 16-bit PCM at the requested rate, in chunks."""

    def __init__(self, *, chunk_delay_s: float = 0.0, chunks: int = 3):
        self.requests: list[rtts.SynthesizeSpeechRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.calls = 0
        self.cancelled = threading.Event()
        self.chunk_delay_s = chunk_delay_s
        self.chunks = chunks

    def GetRivaSynthesisConfig(self, request, context):
        return rtts.RivaSynthesisConfigResponse()

    def Synthesize(self, request, context):
        self.requests.append(request)
        samples = int(request.sample_rate_hz * 0.3)
        return rtts.SynthesizeSpeechResponse(audio=b"\x10\x00" * samples)

    def SynthesizeOnline(self, request_iterator, context):
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        context.add_callback(lambda: None if context.is_active() else self.cancelled.set())
        for request in request_iterator:
            self.requests.append(request)
            samples = int(request.sample_rate_hz * 0.1)  # 100 ms per chunk
            for _ in range(self.chunks):
                if not context.is_active():
                    self.cancelled.set()
                    return
                time.sleep(self.chunk_delay_s)
                yield rtts.SynthesizeSpeechResponse(audio=b"\x10\x00" * samples)


@pytest.fixture
def nim_server():
    servers = []

    def start(**kwargs) -> tuple[FakeMagpieNim, str]:
        servicer = FakeMagpieNim(**kwargs)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        rtts_grpc.add_RivaSpeechSynthesisServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(grace=None)


def build_nim(address: str, **env: str) -> NvidiaTTSService:
    settings = section_settings("tts", backend="magpie-nim", server=address, **env)
    return resolve("tts", "magpie-nim")(settings)


def test_voice_and_language_names():
    assert nim_voice(None, "en") == "Magpie-Multilingual.EN-US.Aria"
    assert nim_voice("jason", "es") == "Magpie-Multilingual.ES-US.Jason"
    assert nim_voice("Magpie-Multilingual.FR-FR.Louise", "en") == "Magpie-Multilingual.FR-FR.Louise"
    assert nim_language("en") == "en-US" and nim_language("de") == "de-DE"


async def test_per_sentence_mode_makes_one_call_per_sentence(nim_server):
    servicer, address = nim_server()
    tts = build_nim(address)
    down, up = await run_test(tts, frames_to_send=reply("Hello there. ", "It costs $5 today."))
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert [r.text for r in servicer.requests] == ["Hello there.", "It costs five dollars today."]
    assert servicer.calls == 2
    first = servicer.requests[0]
    assert first.voice_name == "Magpie-Multilingual.EN-US.Aria"
    assert first.language_code == "en-US"
    assert first.encoding == 1  # LINEAR_PCM
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert len(audio) == 6 and {f.sample_rate for f in audio} == {first.sample_rate_hz}
    # A local NIM gets no cloud function id and no key.
    assert "function-id" not in servicer.metadata[0]
    assert "authorization" not in servicer.metadata[0]
    spoken = " ".join(f.text for f in down if isinstance(f, TTSTextFrame))
    assert "$5" in spoken  # the context keeps what the LLM wrote


async def test_stitched_mode_streams_a_reply_in_one_call(nim_server):
    servicer, address = nim_server()
    tts = build_nim(address, nim_mode="stitched", voice="Jason")
    down, _ = await run_test(tts, frames_to_send=reply("One sentence. ", "Two sentences."))
    assert servicer.calls == 1
    assert [r.text for r in servicer.requests] == ["One sentence.", "Two sentences."]
    assert servicer.requests[0].voice_name == "Magpie-Multilingual.EN-US.Jason"
    assert len([f for f in down if isinstance(f, TTSAudioRawFrame)]) == 6


async def test_interruption_cancels_the_stream(nim_server):
    servicer, address = nim_server(chunk_delay_s=0.2, chunks=50)
    tts = build_nim(address)
    down, _ = await run_test(
        tts,
        frames_to_send=[
            LLMFullResponseStartFrame(),
            LLMTextFrame("A very long answer that goes on. And"),
            SleepFrame(sleep=1.0),
            InterruptionFrame(),
            SleepFrame(sleep=0.5),
        ],
    )
    assert servicer.cancelled.wait(5), "the gRPC call was not cancelled"
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert 0 < len(audio) < 50


async def test_hosted_api_sends_function_id_and_key(monkeypatch):
    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-test")
    tts = build_nim("grpc.nvcf.nvidia.com:443", use_ssl="true")
    assert tts._function_id and tts._api_key == "nvapi-test" and tts._use_ssl


async def test_dead_endpoint_is_a_clear_error_and_the_session_runs_on():
    tts = build_nim("127.0.0.1:1")
    down, up = await run_test(tts, frames_to_send=reply("Anyone there?"))
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert errors and "gRPC UNAVAILABLE" in errors[0].error
    # No audio, but the reply still reaches the context and the pipeline ended normally.
    assert not [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert any(isinstance(f, LLMFullResponseEndFrame) for f in down)
