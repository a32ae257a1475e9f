"""Wire protocol of the ASR server: message types, error codes, close codes, validation.

Shared by the server, the client and the load test, so both ends agree on every name. See
``docs/asr-protocol.md`` for the prose version.

Client -> server:
    binary frames: 16-bit little-endian mono PCM at 16 kHz (an even number of bytes);
    text frames: JSON objects with a ``type`` of ``start``, ``finalize``, ``reset`` or ``ping``.

Server -> client (text frames, JSON): ``ready``, ``partial``, ``final``, ``reset``, ``pong``,
``error``. Times are seconds of audio on the connection's clock (0 = first sample received).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
SAMPLE_RATE = 16000
ENCODING = "pcm_s16le"
CHANNELS = 1
BYTES_PER_SECOND = SAMPLE_RATE * 2
STREAM_PATHS = ("/", "/v1/stream")
REALTIME_PATH = "/v1/realtime"  # OpenAI Realtime transcription (services/asr/server/realtime.py)
TOKEN_ENV = "VOICE_AGENT_ASR_TOKEN"
# Decimals of every connection-clock time on the wire. A client subtracts two of them (a word's
# time minus its utterance's start) to get utterance times: at 4 decimals a sample-aligned offset
# such as 3.00025 s rounds differently from 5.08025 s and a word ends at 2.0799 s instead of 2.08.
# Microseconds keep that error under 1e-6 s, below the 0.1 ms the client reports.
CLOCK_DECIMALS = 6

# Close codes (RFC 6455 and the registered 1013).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_UNSUPPORTED = 1003  # a start message declared a format the server cannot take
CLOSE_POLICY = 1008  # too many protocol violations in a row
CLOSE_TOO_BIG = 1009  # a message over --max-message-bytes (sent by the websockets library)
CLOSE_INTERNAL = 1011  # the engine failed for this stream
CLOSE_TRY_AGAIN_LATER = 1013  # every stream slot is taken
CLOSE_IDLE = 4000  # nothing received for --idle-timeout seconds

# Error codes carried by ``{"type": "error", "code": ...}``.
E_BAD_AUDIO = "bad_audio"  # odd byte count: not whole 16-bit samples
E_BAD_MESSAGE = "bad_message"  # text that is not a JSON object of a known type
E_UNSUPPORTED_FORMAT = "unsupported_format"  # start declared another rate/encoding/channels
E_RATE_LIMITED = "rate_limited"  # audio faster than allowed, or too many text messages
E_SERVER_FULL = "server_full"
E_OVERLOADED = "overloaded"  # the engine is behind real time (finals time out)
E_IDLE_TIMEOUT = "idle_timeout"
E_ENGINE = "engine_error"
E_SHUTTING_DOWN = "shutting_down"
E_TOO_MANY_ERRORS = "too_many_errors"

CLIENT_TYPES = ("start", "finalize", "reset", "ping")


class ProtocolError(ValueError):
    """A client message that breaks the protocol; ``code`` is one of the ``E_*`` names."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StartOptions:
    """What a ``start`` message asked for (all optional on the wire)."""

    sample_rate: int = SAMPLE_RATE
    encoding: str = ENCODING
    channels: int = CHANNELS


def parse_client_message(text: str, *, max_id_chars: int = 128) -> dict[str, Any]:
    """Parse and validate one client text message.

    Args:
        text: The text frame as received.
        max_id_chars: Longest ``id`` accepted (ids are echoed back).

    Returns:
        The message as a dict with a valid ``type``.

    Raises:
        ProtocolError: With ``E_BAD_MESSAGE`` or ``E_UNSUPPORTED_FORMAT``.
    """
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError(E_BAD_MESSAGE, "text messages must be JSON objects") from None
    if not isinstance(message, dict):
        raise ProtocolError(E_BAD_MESSAGE, "text messages must be JSON objects")
    kind = message.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            E_BAD_MESSAGE, f"unknown message type {str(kind)[:40]!r}; allowed: {CLIENT_TYPES}"
        )
    if "id" in message:
        ident = message["id"]
        if (
            not isinstance(ident, str | int)
            or isinstance(ident, bool)
            or len(str(ident)) > max_id_chars
        ):
            raise ProtocolError(
                E_BAD_MESSAGE, f"id must be a string or integer of <= {max_id_chars} chars"
            )
    if kind == "start":
        check_start(message)
    return message


def check_start(message: dict[str, Any]) -> StartOptions:
    """Validate the format a ``start`` message declares.

    Raises:
        ProtocolError: ``E_UNSUPPORTED_FORMAT`` for anything but 16 kHz mono pcm_s16le.
    """
    rate = message.get("sample_rate", SAMPLE_RATE)
    encoding = message.get("encoding", ENCODING)
    channels = message.get("channels", CHANNELS)
    if rate != SAMPLE_RATE or isinstance(rate, bool):
        raise ProtocolError(
            E_UNSUPPORTED_FORMAT, f"sample_rate {rate!r} is not supported; send {SAMPLE_RATE} Hz"
        )
    if encoding != ENCODING:
        raise ProtocolError(
            E_UNSUPPORTED_FORMAT, f"encoding {encoding!r} is not supported; send {ENCODING!r}"
        )
    if channels != CHANNELS or isinstance(channels, bool):
        raise ProtocolError(E_UNSUPPORTED_FORMAT, f"channels {channels!r} is not supported; send 1")
    return StartOptions(rate, encoding, channels)


def error_event(code: str, message: str, *, fatal: bool = False, **extra: Any) -> dict[str, Any]:
    """An ``error`` event; ``fatal`` means the server closes the connection right after."""
    return {"type": "error", "code": code, "message": message, "fatal": fatal, **extra}


def word_times(words: Any, offset_s: float = 0.0) -> list[dict[str, Any]] | None:
    """A final's word timings for the wire, moved onto the connection clock (None: none)."""
    if words is None:
        return None
    return [
        {
            "word": w.word,
            "start_s": round(offset_s + w.start_s, CLOCK_DECIMALS),
            "end_s": round(offset_s + w.end_s, CLOCK_DECIMALS),
        }
        for w in words
    ]


def dumps(event: dict[str, Any]) -> str:
    """Compact JSON for the wire."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
