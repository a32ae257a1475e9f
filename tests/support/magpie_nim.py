"""A FAKE Magpie TTS NIM: a local gRPC server speaking the real Riva TTS protocol, answering a tone.

It implements ``RivaSpeechSynthesis`` from nvidia-riva-client's generated stubs, as
``tests/tts/test_magpie_nim.py``'s server does, so Pipecat's ``NvidiaTTSService`` talks to it as
to a NIM on ``localhost:50051``; only the audio is made up. Every reply is a sine at
:data:`TONE_HZ`, so a client that receives it can tell by its pitch that this server (and no
other TTS) produced what it hears.
"""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field

import numpy as np

TONE_HZ = 440.0
TONE_AMPLITUDE = 0.3
SECONDS_PER_SENTENCE = 0.6
CHUNK_SECONDS = 0.1


def tone_pcm(sample_rate: int, seconds: float, start: int = 0) -> bytes:
    """PCM16 mono sine at :data:`TONE_HZ`, continuing from sample ``start``."""
    n = np.arange(start, start + int(sample_rate * seconds))
    wave = TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * n / sample_rate)
    return (wave * 32767).astype("<i2").tobytes()


@dataclass
class ToneNim:
    """What the fake NIM received: the text of each request and the call metadata."""

    address: str = ""
    texts: list[str] = field(default_factory=list)
    voices: list[str] = field(default_factory=list)
    sample_rates: list[int] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    _server: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ToneNim:
        """Serve on a free 127.0.0.1 port (threads) and set :attr:`address`."""
        import grpc
        import riva.client.proto.riva_tts_pb2 as rtts
        import riva.client.proto.riva_tts_pb2_grpc as rtts_grpc

        nim = self

        class Servicer(rtts_grpc.RivaSpeechSynthesisServicer):
            def GetRivaSynthesisConfig(self, request, context):
                return rtts.RivaSynthesisConfigResponse()

            def Synthesize(self, request, context):
                nim._record(request, context)
                rate = request.sample_rate_hz
                return rtts.SynthesizeSpeechResponse(audio=tone_pcm(rate, SECONDS_PER_SENTENCE))

            def SynthesizeOnline(self, request_iterator, context):
                for request in request_iterator:
                    nim._record(request, context)
                    rate = request.sample_rate_hz
                    step = int(rate * CHUNK_SECONDS)
                    for start in range(0, int(rate * SECONDS_PER_SENTENCE), step):
                        if not context.is_active():
                            return
                        yield rtts.SynthesizeSpeechResponse(
                            audio=tone_pcm(rate, CHUNK_SECONDS, start)
                        )

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        rtts_grpc.add_RivaSpeechSynthesisServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None

    def _record(self, request, context) -> None:
        with self._lock:
            self.texts.append(request.text)
            self.voices.append(request.voice_name)
            self.sample_rates.append(request.sample_rate_hz)
            self.metadata.append(dict(context.invocation_metadata()))


def dominant_hz(samples: np.ndarray, sample_rate: int) -> float:
    """The strongest frequency in ``samples`` (int16 or float), by FFT with a Hann window."""
    audio = np.asarray(samples, dtype=np.float64)
    if audio.size < 2:
        return 0.0
    spectrum = np.abs(np.fft.rfft((audio - audio.mean()) * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / sample_rate)[int(np.argmax(spectrum))])
