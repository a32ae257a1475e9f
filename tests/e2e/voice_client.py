"""A WebRTC voice client for the agent: speaks recordings, hears the bot, times each turn.

It is what a browser does, in Python (aiortc): POST an SDP offer to the agent's SmallWebRTC
``/api/offer``, send a microphone track, play nothing but record the bot's audio track, and read
RTVI messages (transcripts, bot output, per-turn latency) from the data channel.

The microphone track streams silence in real time and, when asked, a recording; the client
notes when the recording's speech really ended (its last voiced 20 ms frame, not the file's end)
and when the bot's first audible frame came back. The difference is voice-to-voice latency,
transport included, up to the client's playout buffer: received packets are decoded on arrival
(the agent's low-latency receive buffer, ``agent/webrtc_tuning.py``), because aiortc's own
fixed 80 ms prefetch says nothing about the agent, and each player (a browser's adaptive
jitter buffer, a phone gateway) adds its own. Used by the end-to-end tests and
``scripts/bench_v2v.py``.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

# The agent's rule for a voiced frame: both ends mark the end of speech the same way.
from pipelines.latency import VOICED_RMS, frame_rms

SAMPLE_RATE = 16000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
# time.time() - time.monotonic(), fixed at import: turns monotonic stamps into wall-clock ones to
# compare with an agent's on the same host.
WALL_OFFSET = time.time() - time.monotonic()
RTVI_LABEL = "rtvi-ai"
RTVI_VERSION = "2.2.0"


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any audio file PyAV reads into mono int16 at ``sample_rate``."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)


def voiced_bounds(audio: np.ndarray, frame: int = FRAME_SAMPLES) -> tuple[int, int] | None:
    """Sample range [start, end) from the first to the last voiced frame, or None if silent."""
    voiced = [
        i for i in range(0, len(audio), frame) if frame_rms(audio[i : i + frame]) >= VOICED_RMS
    ]
    if not voiced:
        return None
    return voiced[0], min(len(audio), voiced[-1] + frame)


class MicrophoneTrack(MediaStreamTrack):
    """An aiortc audio track: real-time silence, interrupted by queued recordings.

    Mirrors a microphone: each 20 ms frame is handed to the encoder once its audio "happened".
    """

    kind = "audio"

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        """Initialize the track.

        Args:
            sample_rate: Rate of the frames handed to the Opus encoder (it resamples to 48 kHz).
        """
        super().__init__()
        self._rate = sample_rate
        self._frame = sample_rate * FRAME_MS // 1000
        self._pending = np.zeros(0, np.int16)
        self._marks: list[tuple[int, asyncio.Future]] = []
        self._sent = 0  # samples handed out since the track started
        self._start: float | None = None

    def play(self, audio: np.ndarray, mark_at: int | None = None) -> asyncio.Future:
        """Queue ``audio`` (int16 at the track rate) after what is already queued.

        Args:
            audio: Samples to send.
            mark_at: Sample index in ``audio`` whose send time the returned future resolves
                with (``time.monotonic()``); the end of ``audio`` when None.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        offset = self._sent + len(self._pending)
        self._marks.append((offset + (len(audio) if mark_at is None else mark_at), future))
        self._pending = np.concatenate([self._pending, audio.astype(np.int16)])
        return future

    async def recv(self):
        """The next 20 ms frame, paced to real time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + (self._sent + self._frame) / self._rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        chunk = self._pending[: self._frame]
        self._pending = self._pending[self._frame :]
        if len(chunk) < self._frame:
            chunk = np.concatenate([chunk, np.zeros(self._frame - len(chunk), np.int16)])
        now = time.monotonic()
        # Like a microphone, this frame's audio was spoken over the last 20 ms: a sample at
        # index i of the frame happened at now - (frame - i) / rate.
        frame_start = self._sent
        self._sent += self._frame
        for mark in [m for m in self._marks if m[0] <= self._sent]:
            position, future = mark
            self._marks.remove(mark)
            if not future.done():
                future.set_result(now - (self._sent - max(position, frame_start)) / self._rate)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = frame_start
        frame.time_base = fractions.Fraction(1, self._rate)
        return frame


@dataclass
class BotAudio:
    """The bot's audio as received: mono int16 at 16 kHz with the arrival time of each frame."""

    chunks: list[tuple[float, np.ndarray]] = field(default_factory=list)

    def since(self, t0: float) -> np.ndarray:
        """Samples of the frames that arrived at or after ``t0``."""
        parts = [c for t, c in self.chunks if t >= t0]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def first_voiced_after(self, t0: float) -> float | None:
        """Arrival time of the first voiced frame at or after ``t0``."""
        for t, chunk in self.chunks:
            if t >= t0 and frame_rms(chunk) >= VOICED_RMS:
                return t
        return None

    def voiced_between(self, t0: float, t1: float) -> bool:
        """Whether any frame that arrived in [t0, t1] is voiced."""
        return any(t0 <= t <= t1 and frame_rms(c) >= VOICED_RMS for t, c in self.chunks)

    def last_voiced(self) -> float | None:
        for t, chunk in reversed(self.chunks):
            if frame_rms(chunk) >= VOICED_RMS:
                return t
        return None


@dataclass
class TurnResult:
    """One spoken question and what came back."""

    utterance: str
    speech_end_at: float
    first_audio_at: float | None = None
    bot_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    user_transcript: str = ""
    bot_text: str = ""
    server_latency: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    # The bot was already talking when the user finished (it answered part of the utterance):
    # the first audio after the end of speech is then no measure of this turn's latency.
    overlapped: bool = False
    # When the user's speech started (its first voiced 20 ms, as sent), and, when the bot was
    # speaking then (a barge-in), how long its audio went on after that, as received.
    speech_start_at: float | None = None
    barge_in_stop_secs: float | None = None

    @property
    def voice_to_voice_secs(self) -> float | None:
        """From the user's end of speech to the bot's first audible frame, at the client."""
        if self.first_audio_at is None:
            return None
        return self.first_audio_at - self.speech_end_at

    @property
    def bot_audio_secs(self) -> float:
        return len(self.bot_audio) / SAMPLE_RATE


class BotOutputText:
    """Assembles the bot's words from RTVI ``bot-output`` messages (protocol 2.x and 1.x)."""

    def __init__(self):
        self._segments: dict[Any, str] = {}

    def add(self, data: dict[str, Any]) -> None:
        if data.get("output_type", data.get("aggregated_by")) in ("word", "token"):
            return
        status = data.get("spoken_status")
        progress = data.get("spoken_progress") or {}
        key = data.get("segment_id", len(self._segments))
        if status == "in-progress":
            return
        if status == "completed" and progress.get("accumulated_text"):
            # Word-timestamp TTS: the completed message carries one word, the progress all.
            self._segments[key] = progress["accumulated_text"]
        elif data.get("text") and (status != "completed" or key not in self._segments):
            self._segments[key] = data["text"]

    @property
    def text(self) -> str:
        return " ".join(t.strip() for t in self._segments.values() if t.strip())


class VoiceClient:
    """One WebRTC session with the agent."""

    def __init__(self, base_url: str, *, on_message: Callable[[dict], None] | None = None):
        """Initialize the client.

        Args:
            base_url: The agent's HTTP root, e.g. ``http://127.0.0.1:7860``.
            on_message: Called with every RTVI message (for logging).
        """
        self.base_url = base_url.rstrip("/")
        self._on_message = on_message
        self.mic = MicrophoneTrack()
        self.bot_audio = BotAudio()
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self._pc = None
        self._dc = None
        self._tasks: list[asyncio.Task] = []
        self._message_event = asyncio.Event()
        self.connected_at: float | None = None

    async def connect(self, timeout: float = 30.0) -> None:
        """Offer, answer, wait for ICE and for RTVI ``bot-ready``."""
        import aiohttp
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from agent.webrtc_tuning import audio_receive_latency_reduced

        pc = self._pc = RTCPeerConnection()
        dc = self._dc = pc.createDataChannel("chat", ordered=True)
        dc_open = asyncio.Event()

        @dc.on("open")
        def _on_open():
            dc_open.set()

        @dc.on("message")
        def _on_message(raw):
            if not isinstance(raw, str) or raw.startswith("ping"):
                return
            try:
                message = json.loads(raw)
            except ValueError:
                return
            if message.get("label") != RTVI_LABEL:
                return
            self.messages.append((time.monotonic(), message))
            self._message_event.set()
            if self._on_message:
                self._on_message(message)

        @pc.on("track")
        def _on_track(track):
            if track.kind == "audio":
                self._tasks.append(asyncio.create_task(self._record(track)))

        # The receiver is built here and keeps the agent's low-latency buffer; nothing else in
        # this process (another test's peer) is changed.
        with audio_receive_latency_reduced():
            pc.addTransceiver(self.mic, direction="sendrecv")
        # aiortc gathers every candidate inside setLocalDescription: no trickle needed.
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.base_url}/api/offer",
                json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                response.raise_for_status()
                answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await asyncio.wait_for(dc_open.wait(), timeout)
        dc.send(
            json.dumps(
                {
                    "label": RTVI_LABEL,
                    "type": "client-ready",
                    "id": str(uuid.uuid4()),
                    "data": {"version": RTVI_VERSION, "about": {"library": "voice-agent-e2e"}},
                }
            )
        )
        await self.wait_for_message(lambda m: m["type"] == "bot-ready", timeout=timeout)
        self.connected_at = time.monotonic()

    async def _record(self, track) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            for out in resampler.resample(frame):
                self.bot_audio.chunks.append((now, out.to_ndarray().reshape(-1).copy()))

    async def wait_for_message(
        self, predicate: Callable[[dict], bool], *, timeout: float, since: float = 0.0
    ) -> dict:
        """The first RTVI message received after ``since`` that matches ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for t, message in self.messages:
                if t >= since and predicate(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no matching RTVI message")
            self._message_event.clear()
            try:
                await asyncio.wait_for(self._message_event.wait(), min(remaining, 0.1))
            except TimeoutError:
                pass

    async def say(
        self,
        audio: np.ndarray | str | Path,
        *,
        response_timeout: float = 30.0,
        max_reply_secs: float = 60.0,
        settle_secs: float = 1.0,
        return_after_secs: float | None = None,
    ) -> TurnResult:
        """Speak one utterance and collect the bot's spoken reply.

        Args:
            audio: int16 samples at 16 kHz, or a path to any audio file.
            response_timeout: Seconds to wait after the end of speech for the bot's first audio.
            max_reply_secs: Cap on how long a reply is recorded.
            settle_secs: Quiet time after ``bot-stopped-speaking`` (or, without RTVI, after
                the last voiced frame) that ends the reply; the bot may start a new sentence.
            return_after_secs: Return once this much of the reply has played instead of at
                its end, so the next utterance talks over it (a barge-in).
        """
        name = str(audio) if not isinstance(audio, np.ndarray) else "<samples>"
        if not isinstance(audio, np.ndarray):
            audio = load_audio(audio)
        bounds = voiced_bounds(audio)
        if bounds is None:
            raise ValueError(f"{name}: no speech found")
        sent_at = time.monotonic()
        started = self.mic.play(audio[: bounds[0]])
        ended = self.mic.play(audio[bounds[0] :], mark_at=bounds[1] - bounds[0])
        speech_start_at = await started
        bot_was_speaking = self.bot_audio.voiced_between(speech_start_at - 0.1, speech_start_at)
        speech_end_at = await ended
        turn = TurnResult(
            utterance=name, speech_end_at=speech_end_at, speech_start_at=speech_start_at
        )
        if bot_was_speaking:
            over = [
                t
                for t, chunk in self.bot_audio.chunks
                if speech_start_at <= t <= speech_end_at and frame_rms(chunk) >= VOICED_RMS
            ]
            turn.barge_in_stop_secs = (over[-1] - speech_start_at) if over else 0.0

        turn.overlapped = self.bot_audio.voiced_between(speech_end_at - 0.3, speech_end_at)
        deadline = speech_end_at + response_timeout
        while turn.first_audio_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            turn.first_audio_at = self.bot_audio.first_voiced_after(speech_end_at)
        if turn.first_audio_at is not None:
            if return_after_secs is not None:
                played = time.monotonic() - turn.first_audio_at
                await asyncio.sleep(max(0.0, return_after_secs - played))
            else:
                await self._wait_reply_end(turn.first_audio_at, max_reply_secs, settle_secs)
            # The latency breakdown is sent when the bot starts speaking; allow for ordering.
            try:
                await self.wait_for_message(_is_turn_latency, timeout=1.0, since=sent_at)
            except TimeoutError:
                pass
            turn.bot_audio = self.bot_audio.since(turn.first_audio_at - 0.1)

        bot_text = BotOutputText()
        user_parts: list[str] = []
        for t, message in self.messages:
            if t < sent_at:
                continue
            turn.messages.append(message)
            data = message.get("data") or {}
            if message["type"] == "user-transcription" and data.get("final"):
                user_parts.append(data.get("text", "").strip())
            elif message["type"] == "bot-output":
                bot_text.add(data)
            elif _is_turn_latency(message) and turn.first_audio_at is not None:
                # The agent sends it as it starts speaking, a downlink (plus any leading silence
                # of the speech) before we hear it: it belongs to the reply we heard, not to one
                # the agent began mid-utterance (a pause split the user's speech).
                earliest = max(speech_end_at - 0.5, turn.first_audio_at - 1.5)
                if earliest <= t <= turn.first_audio_at + 1.0:
                    turn.server_latency = data
        turn.user_transcript = " ".join(p for p in user_parts if p)
        turn.bot_text = bot_text.text
        return turn

    async def _wait_reply_end(self, started: float, max_secs: float, settle_secs: float) -> None:
        deadline = started + max_secs
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            last_voiced = self.bot_audio.last_voiced() or started
            speaking = [
                (t, m["type"])
                for t, m in self.messages
                if t >= started and m["type"] in ("bot-started-speaking", "bot-stopped-speaking")
            ]
            if speaking:
                t_last, kind = speaking[-1]
                if kind == "bot-stopped-speaking" and now - max(t_last, last_voiced) >= settle_secs:
                    return
            elif now - last_voiced >= settle_secs + 0.5:
                return  # no RTVI speaking events: go by the audio alone

    async def close(self) -> None:
        """Hang up."""
        if self._pc is not None:
            await self._pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.mic.stop()


def _is_turn_latency(message: dict) -> bool:
    if message.get("type") != "server-message":
        return False
    data = message.get("data") or {}
    return data.get("type") == "turn-latency"
