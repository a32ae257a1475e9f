"""Magpie NIM backend against a local gRPC server that speaks the real Riva TTS protocol.

The server implements ``RivaSpeechSynthesis`` from nvidia-riva-client's generated stubs
(``riva.client.proto.riva_tts_pb2_grpc``), so Pipecat's ``NvidiaTTSService`` talks to it exactly
as it talks to a Magpie TTS NIM on ``localhost:50051``.
"""

from __future__ import annotations

import datetime
import select
import socket
import socketserver
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


def certificate_for(host: str) -> tuple[bytes, bytes, bytes]:
    """A throw-away CA and a certificate it signed for ``host``: (CA, cert, key), PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def signed(subject: str, public_key, issuer: str, signer, *extensions) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = signed(
        "test CA",
        ca_key.public_key(),
        "test CA",
        ca_key,
        (x509.BasicConstraints(ca=True, path_length=None), True),
    )
    cert = signed(
        host,
        key.public_key(),
        "test CA",
        ca_key,
        (x509.SubjectAlternativeName([x509.DNSName(host)]), False),
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


class ConnectProxy(socketserver.ThreadingTCPServer):
    """An HTTP CONNECT proxy on 127.0.0.1 that takes every tunnel to one local port.

    gRPC honours ``grpc_proxy``: the client names the real host in its CONNECT line and runs
    TLS through the tunnel, so a channel to NVIDIA's hosted endpoint reaches the local server.
    """

    daemon_threads = True

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.targets: list[str] = []
        super().__init__(("127.0.0.1", 0), _Tunnel)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Tunnel(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(4096)
            if not data:
                return
            head += data
        head, early = head.split(b"\r\n\r\n", 1)
        self.server.targets.append(head.split(b"\r\n")[0].decode())
        with socket.create_connection(("127.0.0.1", self.server.upstream_port)) as upstream:
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream.sendall(early)
            peers = {self.request: upstream, upstream: self.request}
            while True:
                ready, _, _ = select.select(list(peers), [], [], 10)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)


@pytest.fixture
def hosted_nim(monkeypatch):
    """NVIDIA's hosted endpoint, played locally: TLS as ``grpc.nvcf.nvidia.com``, reached
    through a CONNECT proxy. Nothing leaves 127.0.0.1."""
    from pipelines.backends.tts_magpie_nim import HOSTED_SERVER

    ca, cert, key = certificate_for(HOSTED_SERVER)
    servicer = FakeMagpieNim()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rtts_grpc.add_RivaSpeechSynthesisServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    proxy = ConnectProxy(port)
    monkeypatch.setenv("grpc_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
    for name in ("no_grpc_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # The test's CA is trusted as a system CA would be. gRPC reads its roots file
    # (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH) once per process, so the CA goes to the credentials.
    system_roots = grpc.ssl_channel_credentials

    def trusting_the_test_ca(root_certificates=None, **kwargs):
        return system_roots(root_certificates=root_certificates or ca, **kwargs)

    monkeypatch.setattr(grpc, "ssl_channel_credentials", trusting_the_test_ca)
    yield servicer, proxy
    proxy.shutdown()
    proxy.server_close()
    server.stop(grace=None)


async def test_hosted_api_sends_function_id_and_key(monkeypatch, hosted_nim):
    from pipelines.backends.tts_magpie_nim import HOSTED_FUNCTION_ID

    servicer, proxy = hosted_nim
    monkeypatch.setenv("NVIDIA_API_KEY", "nvapi-test")
    tts = build_nim("grpc.nvcf.nvidia.com:443", use_ssl="true")
    down, up = await run_test(tts, frames_to_send=reply("Hello there."))
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert proxy.targets == ["CONNECT grpc.nvcf.nvidia.com:443 HTTP/1.1"]  # over TLS, by name
    # What the hosted API authenticates a call by, as the server received it.
    assert servicer.metadata[0]["function-id"] == HOSTED_FUNCTION_ID
    assert servicer.metadata[0]["authorization"] == "Bearer nvapi-test"
    assert [r.text for r in servicer.requests] == ["Hello there."]
    assert [f for f in down if isinstance(f, TTSAudioRawFrame)]


async def test_dead_endpoint_is_a_clear_error_and_the_session_runs_on():
    tts = build_nim("127.0.0.1:1")
    down, up = await run_test(tts, frames_to_send=reply("Anyone there?"))
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert errors and "gRPC UNAVAILABLE" in errors[0].error
    # No audio, but the reply still reaches the context and the pipeline ended normally.
    assert not [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert any(isinstance(f, LLMFullResponseEndFrame) for f in down)
