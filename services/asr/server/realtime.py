"""OpenAI Realtime transcription (``/v1/realtime?intent=transcription``) on the ASR server.

Existing OpenAI-Realtime clients and SDKs (``AsyncOpenAI(...).realtime.connect``) stream to our
engine unchanged: same engine, auth (bearer token), limits and close codes as ``/v1/stream``,
another protocol on the socket. What is supported (docs/asr-protocol.md has the table):

- client events: ``session.update`` (GA, ``session.type = "transcription"``) and
  ``transcription_session.update`` (beta), ``input_audio_buffer.append`` (base64),
  ``input_audio_buffer.commit``, ``input_audio_buffer.clear``;
- input formats: PCM16 at 24 kHz (OpenAI's default) or 16 kHz, G.711 mu-law and A-law (8 kHz),
  resampled once to the engine's 16 kHz;
- turn detection: ``server_vad`` (Silero, OpenAI's default for transcription) or none (the
  client commits);
- server events: ``session.created/updated`` (or the ``transcription_session.*`` names for beta
  clients), ``input_audio_buffer.committed``, ``.cleared``, ``.speech_started``,
  ``.speech_stopped``, ``conversation.item.input_audio_transcription.delta`` (from our
  partials) and ``.completed`` (our finals, with a ``words`` extension: every word's times),
  and ``error`` in OpenAI's shape.

Every client event is applied in order by one task per connection: audio, commits, clears and
VAD decisions never overtake each other, so a committed item holds exactly the audio before it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import protocol as P
from .server import _Connection

logger = logging.getLogger(__name__)

REALTIME_PATH = P.REALTIME_PATH
_BETA_HEADER = "realtime=v1"
_MIN_COMMIT_S = 0.1  # OpenAI refuses to commit less than 100 ms of audio

# Defaults of OpenAI's server VAD (threshold, prefix padding, silence to end a turn).
_VAD_DEFAULTS = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
}


def _g711_tables() -> tuple[np.ndarray, np.ndarray]:
    """Decode tables of ITU-T G.711 (code byte -> int16 sample) for mu-law and A-law."""
    codes = np.arange(256, dtype=np.int32)
    # mu-law: bits are inverted; sign, 3-bit exponent, 4-bit mantissa; bias 0x84.
    u = ~codes & 0xFF
    mag = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    ulaw = np.where(u & 0x80, 0x84 - mag, mag - 0x84)
    # A-law: even bits inverted (xor 0x55); segment 0 is linear.
    a = codes ^ 0x55
    seg = (a & 0x70) >> 4
    base = ((a & 0x0F) << 4) + 8
    mag = np.where(seg == 0, base, (base + 0x100) << np.maximum(seg - 1, 0))
    alaw = np.where(a & 0x80, mag, -mag)
    return ulaw.astype(np.int16), alaw.astype(np.int16)


_ULAW, _ALAW = _g711_tables()


@dataclass(frozen=True)
class InputFormat:
    """An input audio format: its encoding and sample rate."""

    encoding: str  # "pcm16" | "g711_ulaw" | "g711_alaw"
    rate: int

    @property
    def bytes_per_second(self) -> int:
        return self.rate * (2 if self.encoding == "pcm16" else 1)

    def ga(self) -> dict[str, Any]:
        """OpenAI's GA description of the format."""
        if self.encoding == "pcm16":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": "audio/pcmu" if self.encoding == "g711_ulaw" else "audio/pcma"}


DEFAULT_FORMAT = InputFormat("pcm16", 24000)


class RealtimeError(ValueError):
    """A client event the session cannot apply; becomes an ``error`` event."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def parse_format(value: Any, *, beta: bool) -> InputFormat:
    """The input format a session update names (GA object or beta string).

    Raises:
        RealtimeError: a format this server does not take.
    """
    if beta:
        table = {
            "pcm16": InputFormat("pcm16", 24000),
            "g711_ulaw": InputFormat("g711_ulaw", 8000),
            "g711_alaw": InputFormat("g711_alaw", 8000),
        }
        if value in table:
            return table[value]
        raise RealtimeError(
            f"input_audio_format {value!r} is not supported; use one of {sorted(table)}",
            param="session.input_audio_format",
        )
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "audio/pcm":
        rate = value.get("rate", 24000)
        if rate in (24000, 16000) and not isinstance(rate, bool):
            return InputFormat("pcm16", int(rate))
        raise RealtimeError(
            f"audio/pcm at {rate!r} Hz is not supported; use 24000 or 16000",
            param="session.audio.input.format.rate",
        )
    if kind in ("audio/pcmu", "audio/pcma"):
        return InputFormat("g711_ulaw" if kind == "audio/pcmu" else "g711_alaw", 8000)
    raise RealtimeError(
        f"audio format {value!r} is not supported; use audio/pcm (24000 or 16000 Hz), "
        "audio/pcmu or audio/pcma",
        param="session.audio.input.format",
    )


def parse_turn_detection(value: Any) -> dict[str, Any] | None:
    """Turn detection from a session update: None, or server VAD with its settings.

    Raises:
        RealtimeError: another kind (``semantic_vad``) or settings out of range.
    """
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type", "server_vad") != "server_vad":
        kind = value.get("type") if isinstance(value, dict) else value
        raise RealtimeError(
            f"turn_detection {kind!r} is not supported; use server_vad or null",
            param="session.audio.input.turn_detection",
        )
    out = {**_VAD_DEFAULTS}
    for key in ("threshold", "prefix_padding_ms", "silence_duration_ms"):
        if value.get(key) is not None:
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
                raise RealtimeError(f"{key} must be a number >= 0", param=f"turn_detection.{key}")
            out[key] = number
    if out["threshold"] > 1:
        raise RealtimeError("threshold must be between 0 and 1", param="turn_detection.threshold")
    return out


class _Decoder:
    """Client audio (any supported format) -> 16 kHz PCM16 bytes, resampled as a stream."""

    def __init__(self, fmt: InputFormat) -> None:
        self.format = fmt
        self._resampler = None
        if fmt.rate != P.SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(fmt.rate, P.SAMPLE_RATE, 1, dtype="float32")
        self._odd = b""

    def feed(self, raw: bytes) -> bytes:
        if self.format.encoding == "pcm16":
            raw = self._odd + raw
            cut = len(raw) - len(raw) % 2
            self._odd, raw = raw[cut:], raw[:cut]
            pcm = np.frombuffer(raw, dtype="<i2")
        else:
            table = _ULAW if self.format.encoding == "g711_ulaw" else _ALAW
            pcm = table[np.frombuffer(raw, dtype=np.uint8)]
        if self._resampler is None:
            return pcm.astype("<i2").tobytes()
        out = self._resampler.resample_chunk(pcm.astype(np.float32) / 32768.0)
        return (np.clip(out, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


class RealtimeConnection(_Connection):
    """One OpenAI-Realtime transcription session on an engine stream."""

    def __init__(self, server, ws, stream, conn_id: int) -> None:
        super().__init__(server, ws, stream, conn_id)
        self.beta = _BETA_HEADER in str(ws.headers.get("OpenAI-Beta", ""))
        self.session_id = f"sess_{uuid.uuid4().hex[:20]}"
        self.format = DEFAULT_FORMAT
        self.decoder = _Decoder(self.format)
        self.turn_detection: dict[str, Any] | None = dict(_VAD_DEFAULTS)
        model = getattr(getattr(server.engine, "config", None), "model", None) or "nemotron"
        self.transcription = {"model": str(model)}
        self.transcription.update(language="en", prompt="")
        self.ops: asyncio.Queue = asyncio.Queue()
        self.item_id: str | None = None
        self.previous_item: str | None = None
        self.item_samples = 0  # 16 kHz samples of the current (uncommitted) item
        self.sent_text = ""  # what the deltas of the current item have said so far
        self.vad = None
        self.vad_samples = 0  # 16 kHz samples the VAD has seen
        self.speaking = False

    # -- protocol plumbing --

    def _name(self, ga: str) -> str:
        return ga.replace("session.", "transcription_session.", 1) if self.beta else ga

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": f"event_{uuid.uuid4().hex[:20]}", **fields}

    def error_event(self, code: str, message: str, *, fatal: bool = False, **extra: Any) -> dict:
        """OpenAI's error shape; our code names the problem, fatal ones close the socket."""
        server_side = code in (P.E_ENGINE, P.E_SHUTTING_DOWN)
        kind = "server_error" if server_side else "invalid_request_error"
        error = {
            "type": kind,
            "code": code,
            "message": message,
            "param": extra.pop("param", None),
            "event_id": extra.pop("client_event_id", None),
        }
        return self.event("error", error=error, **extra)

    def _session(self) -> dict[str, Any]:
        if self.beta:
            return {
                "id": self.session_id,
                "object": "realtime.transcription_session",
                "input_audio_format": self.format.encoding,
                "input_audio_transcription": dict(self.transcription),
                "turn_detection": self.turn_detection,
                "input_audio_noise_reduction": None,
                "include": [],
            }
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": self.session_id,
            "audio": {
                "input": {
                    "format": self.format.ga(),
                    "transcription": dict(self.transcription),
                    "turn_detection": self.turn_detection,
                    "noise_reduction": None,
                }
            },
            "include": [],
        }

    def greeting(self) -> dict[str, Any]:
        return self.event(self._name("session.created"), session=self._session())

    async def run(self) -> None:
        self._spawn(self._apply_ops())
        await super().run()

    def _invalid(self, exc: RealtimeError, client_event_id: Any = None) -> None:
        self.errors += 1
        self.server.counters.errors[exc.code] += 1
        if self.error_bucket.take(1):
            self.send(
                self.error_event(
                    exc.code, exc.message, param=exc.param, client_event_id=client_event_id
                )
            )

    # -- receive side: validate, then queue in order --

    def _on_audio(self, data: bytes) -> None:
        self._invalid(
            RealtimeError(
                "binary frames are not part of the Realtime protocol: send "
                "input_audio_buffer.append events with base64 audio",
                param="audio",
            )
        )

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            problem = RealtimeError("events must be JSON objects with a type", code="invalid_json")
            self._invalid(problem)
            return
        kind, ident = message["type"], message.get("event_id")
        if kind != "input_audio_buffer.append" and not self.text_bucket.take(1):
            self._invalid(RealtimeError("too many events", code=P.E_RATE_LIMITED), ident)
            return
        try:
            if kind == "input_audio_buffer.append":
                self._queue_audio(message.get("audio"))
            elif kind in ("session.update", "transcription_session.update"):
                self._queue_session(message.get("session"), beta=kind.startswith("transcription"))
            elif kind == "input_audio_buffer.commit":
                self.ops.put_nowait(("commit", ident))
            elif kind == "input_audio_buffer.clear":
                self.ops.put_nowait(("clear", ident))
            else:
                raise RealtimeError(
                    f"event type {kind[:60]!r} is not supported here; supported: session.update, "
                    "transcription_session.update, input_audio_buffer.append, "
                    "input_audio_buffer.commit, input_audio_buffer.clear",
                    param="type",
                )
        except RealtimeError as exc:
            self._invalid(exc, ident)

    def _queue_audio(self, audio: Any) -> None:
        if not isinstance(audio, str):
            raise RealtimeError("audio must be a base64 string", param="audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("audio is not valid base64", param="audio") from None
        if raw:
            self.ops.put_nowait(("audio", raw))

    def _queue_session(self, session: Any, *, beta: bool) -> None:
        if not isinstance(session, dict):
            raise RealtimeError("session must be an object", param="session")
        if session.get("type", "transcription") != "transcription":
            raise RealtimeError(
                "this server only transcribes: use session.type 'transcription'",
                param="session.type",
            )
        audio = session.get("audio", {}).get("input", {}) if not beta else {}
        fmt = turn = transcription = None
        has_turn = False
        if beta:
            if "input_audio_format" in session:
                fmt = parse_format(session["input_audio_format"], beta=True)
            transcription = session.get("input_audio_transcription")
            has_turn = "turn_detection" in session
            turn = parse_turn_detection(session.get("turn_detection"))
        else:
            if "format" in audio:
                fmt = parse_format(audio["format"], beta=False)
            transcription = audio.get("transcription")
            has_turn = "turn_detection" in audio
            turn = parse_turn_detection(audio.get("turn_detection"))
        if transcription is not None and not isinstance(transcription, dict):
            raise RealtimeError("transcription must be an object", param="transcription")
        self.beta = beta
        self.ops.put_nowait(("session", fmt, has_turn, turn, transcription))

    # -- the ordered worker --

    async def _apply_ops(self) -> None:
        while True:
            op = await self.ops.get()
            try:
                if op[0] == "audio":
                    await self._audio(op[1])
                elif op[0] == "commit":
                    await self._commit(op[1], manual=True)
                elif op[0] == "clear":
                    self._clear()
                elif op[0] == "session":
                    self._apply_session(*op[1:])
            except RealtimeError as exc:
                self._invalid(exc, op[1] if op[0] in ("commit", "clear") else None)
            except Exception as exc:  # the engine failed: say so, keep the session
                logger.exception("realtime connection %d: %s failed", self.id, op[0])
                self.error(P.E_ENGINE, f"{op[0]} failed: {exc}")

    def _apply_session(self, fmt, has_turn: bool, turn, transcription) -> None:
        if fmt is not None and fmt != self.format:
            self.format, self.decoder = fmt, _Decoder(fmt)
        if has_turn:
            self.turn_detection = turn
            self.vad = None  # rebuilt with the new settings on the next audio
            self.speaking = False
        if transcription:
            for key in ("model", "language", "prompt"):
                if transcription.get(key) is not None:
                    self.transcription[key] = str(transcription[key])
        self.send(self.event(self._name("session.updated"), session=self._session()))

    async def _audio(self, raw: bytes) -> None:
        pcm = self.decoder.feed(raw)
        if not pcm:
            return
        if self.turn_detection is None:
            self._push(pcm)
            return
        # Server VAD: the audio is pushed in order with the VAD's decisions about it.
        vad = self.vad or self._make_vad()
        state = await vad.analyze_audio(pcm)
        self._push(pcm)
        self.vad_samples += len(pcm) // 2
        from pipecat.audio.vad.vad_analyzer import VADState

        settings = self.turn_detection
        now_ms = self.vad_samples * 1000 // P.SAMPLE_RATE
        if state == VADState.SPEAKING and not self.speaking:
            self.speaking = True
            lead = vad.params.start_secs * 1000 + settings["prefix_padding_ms"]
            self.send(
                self.event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=int(max(now_ms - lead, 0)),
                    item_id=self._item(),
                )
            )
        elif state == VADState.QUIET and self.speaking:
            self.speaking = False
            stopped = self.event(
                "input_audio_buffer.speech_stopped", audio_end_ms=int(now_ms), item_id=self._item()
            )
            self.send(stopped)
            await self._commit(None, manual=False)

    def _make_vad(self):
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.audio.vad.vad_analyzer import VADParams

        settings = self.turn_detection or _VAD_DEFAULTS
        params = VADParams(
            confidence=float(settings["threshold"]),
            start_secs=0.2,
            stop_secs=settings["silence_duration_ms"] / 1000,
            min_volume=0.0,
        )
        self.vad = SileroVADAnalyzer(sample_rate=P.SAMPLE_RATE, params=params)
        self.vad.set_sample_rate(P.SAMPLE_RATE)  # sizes its windows (Pipecat does it on start)
        return self.vad

    def _item(self) -> str:
        if self.item_id is None:
            self.item_id = f"item_{uuid.uuid4().hex[:20]}"
        return self.item_id

    def _push(self, pcm: bytes) -> None:
        self._item()
        before = self.received_samples
        super()._on_audio(pcm)  # rate limit, overload shedding, counters: as on /v1/stream
        self.item_samples += self.received_samples - before

    async def _commit(self, client_event_id: Any, *, manual: bool) -> None:
        seconds = self.item_samples / P.SAMPLE_RATE
        if manual and seconds < _MIN_COMMIT_S:
            raise RealtimeError(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{_MIN_COMMIT_S * 1000:.0f}ms of audio, but buffer only has "
                f"{seconds * 1000:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item, previous = self._item(), self.previous_item
        self.send(
            self.event("input_audio_buffer.committed", previous_item_id=previous, item_id=item)
        )
        # The final is requested before the reset, so it covers exactly this item's audio.
        final = asyncio.ensure_future(self.stream.finalize())
        await asyncio.sleep(0)
        self._reset_item()
        self._spawn(self._complete(final, item, seconds))

    def _reset_item(self) -> None:
        self.previous_item, self.item_id = self.item_id, None
        self.item_samples = 0
        self.sent_text = ""
        self._reset()

    def _clear(self) -> None:
        self.item_id = None
        self.item_samples = 0
        self.sent_text = ""
        self._reset()
        self.send(self.event("input_audio_buffer.cleared"))

    def _reset(self) -> None:
        """``reset`` of /v1/stream without its event: the next item starts a new utterance."""
        try:
            self.stream.reset()
        except Exception as exc:
            self.error(P.E_ENGINE, f"reset failed: {exc}")
            return
        self.utterance += 1
        self.utterance_offset[self.utterance] = self.received_s
        for old in [u for u in self.utterance_offset if u < self.utterance - 1]:
            del self.utterance_offset[old]

    async def _complete(self, final: asyncio.Future, item: str, seconds: float) -> None:
        self.inflight_finals += 1
        try:
            ev = await asyncio.wait_for(final, self.cfg.finalize_timeout)
        except Exception as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            reason = "timed out" if timed_out else str(exc)
            self.send(
                self.event(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=item,
                    content_index=0,
                    error={"type": "server_error", "code": P.E_ENGINE, "message": reason},
                )
            )
            if timed_out:
                self._on_final_timeout()
            return
        finally:
            self.inflight_finals -= 1
        self.final_timeouts = 0
        self.server.counters.final_latency.append(float(ev.latency_s or 0.0))
        event = self.event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item,
            content_index=0,
            transcript=ev.text,
            usage={"type": "duration", "seconds": round(seconds, 3)},
        )
        words = P.word_times(getattr(ev, "words", None), self.offset_of(ev))
        if words is not None:
            event["words"] = words  # our extension: when each word was said
        self.send(event)

    def on_partial(self, ev: Any) -> None:
        """A partial of the current item as a delta: only appended text is sent (a revision of
        earlier words is left to the ``completed`` transcript)."""
        if ev.utterance != self.utterance:
            return
        if ev.text.startswith(self.sent_text) and len(ev.text) > len(self.sent_text):
            delta, self.sent_text = ev.text[len(self.sent_text) :], ev.text
            self.send(
                self.event(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=self._item(),
                    content_index=0,
                    delta=delta,
                )
            )
