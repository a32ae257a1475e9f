"""A FAKE phone provider: plays a call into the agent's ``/ws`` the way Twilio or Telnyx does.

Twilio's and Telnyx's own media servers cannot run here, so this client speaks their media-stream
protocols over a real WebSocket: ``connected``, ``start`` (ids and the 8 kHz mu-law media format),
then one ``media`` message of base64 mu-law every 20 ms for the whole call, paced at real time
(silence between recordings, as a phone line carries), and ``stop``. Everything the agent sends
back is kept with its arrival time: ``media`` decoded to 16-bit PCM, ``clear`` and any other event.
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from pipelines.latency import VOICED_RMS, frame_rms
from tests.e2e.voice_client import load_audio, voiced_bounds

LINE_RATE = 8000
FRAME_SAMPLES = LINE_RATE * 20 // 1000  # 20 ms, as both providers send
SILENT_FRAME = audioop.lin2ulaw(b"\x00\x00" * FRAME_SAMPLES, 2)


def line_audio(path: str | Path) -> np.ndarray:
    """A recording as the phone line carries it: mono 16-bit at 8 kHz (mu-law comes later)."""
    return load_audio(path, LINE_RATE)


@dataclass
class Received:
    """One message from the agent, with its arrival time (``time.monotonic()``)."""

    at: float
    event: str
    message: dict[str, Any]
    pcm: np.ndarray | None = None  # media: the decoded 8 kHz samples

    @property
    def voiced(self) -> bool:
        """Whether a media message carries sound (the agent's own voiced-frame rule)."""
        return self.pcm is not None and len(self.pcm) > 0 and frame_rms(self.pcm) >= VOICED_RMS


class Provider:
    """One provider's message shapes (Twilio's)."""

    name = "twilio"

    def __init__(self) -> None:
        self.stream_id = "MZ" + uuid.uuid4().hex
        self.call_id = "CA" + uuid.uuid4().hex
        self.account_id = "AC" + uuid.uuid4().hex

    def handshake(self) -> list[dict]:
        return [
            {"event": "connected", "protocol": "Call", "version": "1.0.0"},
            {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": self.account_id,
                    "streamSid": self.stream_id,
                    "callSid": self.call_id,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": {},
                },
                "streamSid": self.stream_id,
            },
        ]

    def media(self, sequence: int, chunk: int, payload: bytes) -> dict:
        return {
            "event": "media",
            "sequenceNumber": str(sequence),
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str((chunk - 1) * 20),
                "payload": base64.b64encode(payload).decode(),
            },
            "streamSid": self.stream_id,
        }

    def stop(self, sequence: int) -> dict:
        return {
            "event": "stop",
            "sequenceNumber": str(sequence),
            "stop": {"accountSid": self.account_id, "callSid": self.call_id},
            "streamSid": self.stream_id,
        }


class TelnyxProvider(Provider):
    """Telnyx's message shapes: snake_case, the stream id beside the event, PCMU by name."""

    name = "telnyx"

    def __init__(self) -> None:
        super().__init__()
        self.stream_id = str(uuid.uuid4())
        self.call_id = "v3:" + uuid.uuid4().hex

    def handshake(self) -> list[dict]:
        return [
            {"event": "connected", "version": "1.0.0"},
            {
                "event": "start",
                "sequence_number": "1",
                "start": {
                    "user_id": str(uuid.uuid4()),
                    "call_control_id": self.call_id,
                    "client_state": "",
                    "from": "+15550001111",
                    "to": "+15550002222",
                    "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
                },
                "stream_id": self.stream_id,
            },
        ]

    def media(self, sequence: int, chunk: int, payload: bytes) -> dict:
        return {
            "event": "media",
            "sequence_number": str(sequence),
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str((chunk - 1) * 20),
                "payload": base64.b64encode(payload).decode(),
            },
            "stream_id": self.stream_id,
        }

    def stop(self, sequence: int) -> dict:
        return {
            "event": "stop",
            "sequence_number": str(sequence),
            "stop": {"user_id": "", "call_control_id": self.call_id},
            "stream_id": self.stream_id,
        }


PROVIDERS = {"twilio": Provider, "telnyx": TelnyxProvider}


@dataclass
class Spoken:
    """When a queued recording went out: its first frame and its last voiced frame."""

    started_at: float
    speech_start_at: float
    speech_end_at: float


@dataclass
class PhoneCall:
    """One call: connect, stream the line in real time, speak recordings, record the replies."""

    url: str
    provider: Provider
    received: list[Received] = field(default_factory=list)
    closed_code: int | None = None
    _ws: ClientConnection | None = None
    _queue: deque = field(default_factory=deque)
    _pending: list = field(default_factory=list)  # every say(), for failing them on a close
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _sequence: int = 1

    async def start(self) -> None:
        """Connect and send the handshake; the line then carries silence until told otherwise."""
        self._ws = await connect(self.url, open_timeout=10)
        for message in self.provider.handshake():
            await self._ws.send(json.dumps(message))
        self._sequence = len(self.provider.handshake())
        self._tasks = [
            asyncio.create_task(self._send_line()),
            asyncio.create_task(self._receive()),
        ]

    def say(self, samples: np.ndarray) -> asyncio.Future[Spoken]:
        """Queue 8 kHz samples to go out next; the future says when their speech was sent."""
        bounds = voiced_bounds(samples, FRAME_SAMPLES) or (0, len(samples))
        done: asyncio.Future[Spoken] = asyncio.get_running_loop().create_future()
        if self._tasks and self._tasks[0].done():
            done.set_exception(ConnectionError("the call has ended"))
        self._queue.append((samples, bounds, done))
        self._pending.append((samples, bounds, done))
        return done

    async def hang_up(self) -> None:
        """Send ``stop`` and close, as the provider does when the caller hangs up."""
        for task in self._tasks[:1]:
            task.cancel()
        if self._ws is not None:
            try:
                self._sequence += 1
                await self._ws.send(json.dumps(self.provider.stop(self._sequence)))
                await self._ws.close()
            except Exception:
                pass
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _send_line(self) -> None:
        try:
            await self._stream_line()
        except Exception as exc:
            # The agent closed the call: whoever waits for a recording to go out hears why.
            code = self._ws.close_code if self._ws is not None else None
            error = ConnectionError(f"the call ended (close code {code}): {exc!r}")
            for *_, done in self._pending:
                if not done.done():
                    done.set_exception(error)
            raise

    async def _stream_line(self) -> None:
        """One 20 ms frame per 20 ms, on an absolute schedule so the pace does not drift."""
        assert self._ws is not None
        chunk = 0
        started = time.monotonic()
        current: tuple[np.ndarray, tuple[int, int], asyncio.Future, int, dict] | None = None
        while True:
            if current is None and self._queue:
                samples, bounds, done = self._queue.popleft()
                current = (samples, bounds, done, 0, {})
            if current is not None:
                samples, (start, end), done, offset, marks = current
                frame = samples[offset : offset + FRAME_SAMPLES]
                now = time.monotonic()
                if offset == 0:
                    marks["started_at"] = now
                if offset <= start < offset + FRAME_SAMPLES:
                    marks["speech_start_at"] = now
                if offset < end <= offset + FRAME_SAMPLES:
                    # The frame holding the last voiced sample has gone out by its own end.
                    marks["speech_end_at"] = now + 0.02
                padded = np.zeros(FRAME_SAMPLES, np.int16)
                padded[: len(frame)] = frame
                payload = audioop.lin2ulaw(padded.tobytes(), 2)
                offset += FRAME_SAMPLES
                if offset >= len(samples):
                    if not done.done():
                        done.set_result(Spoken(**marks))
                    current = None
                else:
                    current = (samples, (start, end), done, offset, marks)
            else:
                payload = SILENT_FRAME
            chunk += 1
            self._sequence += 1
            await self._ws.send(json.dumps(self.provider.media(self._sequence, chunk, payload)))
            await asyncio.sleep(max(0.0, started + chunk * 0.02 - time.monotonic()))

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                event = message.get("event", "")
                pcm = None
                if event == "media":
                    ulaw = base64.b64decode(message["media"]["payload"])
                    pcm = np.frombuffer(audioop.ulaw2lin(ulaw, 2), dtype=np.int16)
                self.received.append(Received(time.monotonic(), event, message, pcm))
        except Exception:
            pass
        finally:
            self.closed_code = self._ws.close_code

    # What came back, for assertions.

    def events(self, event: str, after: float = 0.0) -> list[Received]:
        """Messages of one event type that arrived after ``after``."""
        return [r for r in self.received if r.event == event and r.at > after]

    def voiced_media(self, after: float = 0.0, before: float = float("inf")) -> list[Received]:
        """Media messages with sound that arrived in (after, before)."""
        return [r for r in self.events("media", after) if r.at < before and r.voiced]

    def audio(self, after: float = 0.0, before: float = float("inf")) -> np.ndarray:
        """The bot's 8 kHz audio received in (after, before), concatenated."""
        parts = [r.pcm for r in self.events("media", after) if r.at < before]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    async def wait_for(self, predicate, timeout: float) -> bool:
        """Poll until ``predicate()`` holds (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.05)
        return bool(predicate())

    async def wait_quiet(self, quiet_secs: float, timeout: float) -> bool:
        """Wait until no voiced media has arrived for ``quiet_secs`` (the bot stopped talking)."""

        def quiet() -> bool:
            voiced = [r.at for r in self.received if r.voiced]
            last = voiced[-1] if voiced else 0.0
            return time.monotonic() - last >= quiet_secs

        return await self.wait_for(quiet, timeout)
