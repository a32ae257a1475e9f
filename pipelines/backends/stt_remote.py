"""``stt.backend = "remote"``: Nemotron on a shared ASR server (``voice-agent asr-server``).

The bot streams each session to ``stt.server_url`` with ``stt.server_token``; one server (one GPU)
serves many bot processes. Frames and metrics are those of the in-process backend. A session that
loses its server fails over to whatever the URL reaches next, replaying up to
``stt.replay_secs`` of the current utterance.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

if TYPE_CHECKING:
    from pipelines.checks import Check
    from pipelines.settings import AgentSettings
    from services.asr.remote_stt import RemoteNemotronSTTService


def _token(settings: AgentSettings) -> str | None:
    secret = settings.stt.server_token
    return secret.get_secret_value() if secret else None


def http_base(server_url: str) -> str:
    """``ws://host:port/...`` -> ``http://host:port`` (``wss`` -> ``https``)."""
    parts = urlsplit(server_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme or "http")
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def build(settings: AgentSettings) -> RemoteNemotronSTTService:
    """A remote Nemotron STT service for one session."""
    from services.asr.remote_stt import RemoteNemotronSTTService

    return RemoteNemotronSTTService(
        url=settings.stt.server_url,
        token=_token(settings),
        replay_secs=settings.stt.replay_secs,
        # Each speculative final at the VAD stop is an eager end of turn the LLM answers.
        enable_eager_end_of_turn=settings.turn.speculative,
    )


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    from services.asr.server.client import http_get

    return http_get(url, token)


def prewarm(settings: AgentSettings) -> None:
    """Say whether the ASR server answers (sessions reconnect on their own if it does not)."""
    base = http_base(settings.stt.server_url)
    try:
        status, body = _get(f"{base}/ready")
    except OSError as exc:
        logger.warning(
            f"ASR server {base} is not reachable ({exc}); sessions will keep trying to connect. "
            "Start it with: voice-agent asr-server"
        )
        return
    logger.info(f"ASR server {base}: HTTP {status} {body.strip()}")


def checks(settings: AgentSettings) -> list[Check]:
    """Doctor checks: the server is ready and accepts our token."""
    from pipelines.checks import Check

    base = http_base(settings.stt.server_url)
    try:
        status, body = _get(f"{base}/ready")
    except OSError as exc:
        return [
            Check(
                "ASR server",
                False,
                f"{base}/ready unreachable: {exc}",
                "start one with `voice-agent asr-server` (same stt.model/device settings) or "
                "point stt.server_url at a running server",
            )
        ]
    try:
        detail = json.loads(body)
    except json.JSONDecodeError:
        detail = {}
    found = [
        Check(
            "ASR server",
            status == 200,
            f"{base} ready, {detail.get('live_streams', '?')} live streams"
            if status == 200
            else f"{base}/ready answered HTTP {status}: {detail.get('reason', body.strip())}",
            ""
            if status == 200
            else "the server is full or starting: retry, or raise --max-streams",
        )
    ]
    try:
        status, _ = _get(f"{base}/metrics", _token(settings))
    except OSError:
        return found
    found.append(
        Check(
            "ASR server token",
            status != 401,
            "accepted" if status != 401 else "the server refused stt.server_token (HTTP 401)",
            ""
            if status != 401
            else "set stt.server_token (or VOICE_AGENT_STT__SERVER_TOKEN) to the server's --token",
        )
    )
    return found
