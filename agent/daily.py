"""``-t daily``: Daily rooms through Pipecat's runner.

The runner serves ``GET /daily``: it creates a room through Daily's REST API (``POST
{DAILY_API_URL}/rooms``, then a meeting token; ``DAILY_API_URL`` defaults to
``https://api.daily.co/v1``, ``DAILY_ROOM_URL`` names an existing room instead), starts a bot
session joined to it over a Daily transport, and redirects the browser there. Every request
needs ``DAILY_API_KEY``; without it each visit to ``/daily`` would fail, so start-up refuses
(``voice-agent doctor`` reports the same check).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipelines.checks import Check, check_package
from pipelines.settings import TransportSettings

API_KEY_VARIABLE = "DAILY_API_KEY"
KEY_FIX = (
    "export DAILY_API_KEY=... (or put it in .env): the API key from "
    "https://dashboard.daily.co/developers; or use -t webrtc, which needs none"
)


def check_api_key(environ: Mapping[str, str] | None = None) -> Check:
    """``DAILY_API_KEY`` is set (Pipecat's runner reads it when it creates a room)."""
    environ = os.environ if environ is None else environ
    if environ.get(API_KEY_VARIABLE):
        return Check(API_KEY_VARIABLE, True, "set")
    return Check(
        API_KEY_VARIABLE,
        False,
        "transport.type = 'daily' needs DAILY_API_KEY, which is not set",
        KEY_FIX,
    )


def startup_checks() -> list[Check]:
    """What ``voice-agent run -t daily`` needs before it starts: daily-python and the key."""
    package = check_package("daily", "daily-python")
    if not package.ok:
        package.detail = "transport.type = 'daily' needs daily-python, which is not installed"
        package.fix = "pip install 'pipecat-ai[daily]' (or re-run the README set-up), or -t webrtc"
    return [package, check_api_key()]


def ready_message(transport: TransportSettings) -> str:
    """Where a user starts a Daily session."""
    return (
        f"Open http://{transport.host}:{transport.port}/daily: it creates a Daily room, "
        "starts a bot in it and takes the browser there"
    )
