"""Phone transports in config and at start-up: ``-t twilio`` needs ``-x``; hang-up is optional.

The calls themselves are in ``tests/e2e/test_phone_call.py``; these check, without models, what
stops a phone agent before it starts and how Pipecat's serializers are built for a call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.telephony import (
    build_serializer,
    check_hang_up_credentials,
    hang_up_credentials,
    runner_arguments,
)

ROOT = Path(__file__).resolve().parents[2]
CALL = {"stream_id": "MZ1", "call_id": "CA1", "outbound_encoding": "PCMU"}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``voice-agent run ...`` in a child, with no .env and no provider variables inherited."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "TELNYX_"))}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--env-file", os.devnull, *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("provider", ["twilio", "telnyx", "plivo", "exotel"])
def test_phone_transport_types_are_config_values(provider):
    resolved = load_config(
        overrides={"transport.type": provider, "transport.proxy": "abc.ngrok.app"},
        env={},
        dotenv_path=None,
        cuda_available=False,
    )
    assert resolved.settings.transport.type == provider
    assert runner_arguments(resolved.settings.transport) == [
        "-t",
        provider,
        "--ws-auth",
        "none",
        "-x",
        "abc.ngrok.app",
    ]


def test_proxy_given_as_a_url_is_its_host():
    settings = load_config(
        overrides={"transport.type": "twilio", "transport.proxy": "https://abc.ngrok.app/"},
        env={},
        dotenv_path=None,
    ).settings
    assert settings.transport.proxy == "abc.ngrok.app"


def test_exotel_needs_no_proxy_but_the_xml_providers_do():
    settings = load_config(overrides={"transport.type": "exotel"}, env={}, dotenv_path=None)
    assert runner_arguments(settings.settings.transport) == ["-t", "exotel", "--ws-auth", "none"]
    settings = load_config(overrides={"transport.type": "plivo"}, env={}, dotenv_path=None)
    with pytest.raises(ConfigError, match=r"transport\.proxy"):
        runner_arguments(settings.settings.transport)


def test_run_without_proxy_stops_before_loading_anything():
    result = run_cli("-t", "twilio", "--profile", "cpu")
    assert result.returncode == 2, result.stderr
    assert "transport.proxy" in result.stderr and "-x HOST" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_half_the_twilio_credentials_stops_with_what_is_missing():
    result = run_cli("-t", "twilio", "-x", "abc.ngrok.app", env={"TWILIO_ACCOUNT_SID": "AC0123"})
    assert result.returncode == 2, result.stderr
    assert "twilio hang-up credentials are not usable" in result.stderr
    assert "auth_token" in result.stderr and "TWILIO_AUTH_TOKEN" in result.stderr


def test_hang_up_is_off_without_credentials_and_the_serializer_still_builds():
    # Pipecat's runner builds its serializers with auto_hang_up on, which refuses a call
    # without credentials; ours build, hang-up off.
    for provider in ("twilio", "telnyx", "plivo"):
        assert check_hang_up_credentials(provider, {}) is False
        serializer = build_serializer(provider, CALL, hang_up_credentials(provider, {}))
        assert serializer._params.auto_hang_up is False


@pytest.mark.parametrize(
    ("provider", "env"),
    [
        ("twilio", {"TWILIO_ACCOUNT_SID": "AC0123", "TWILIO_AUTH_TOKEN": "secret"}),
        (
            "twilio",
            {"TWILIO_ACCOUNT_SID": "AC0123", "TWILIO_API_KEY": "SK1", "TWILIO_API_SECRET": "s"},
        ),
        ("telnyx", {"TELNYX_API_KEY": "KEY0123"}),
        ("plivo", {"PLIVO_AUTH_ID": "MA0123", "PLIVO_AUTH_TOKEN": "secret"}),
    ],
)
def test_hang_up_is_on_with_complete_credentials(provider, env):
    assert check_hang_up_credentials(provider, env) is True
    serializer = build_serializer(provider, CALL, hang_up_credentials(provider, env))
    assert serializer._params.auto_hang_up is True


@pytest.mark.parametrize(
    ("provider", "env", "missing"),
    [
        ("twilio", {"TWILIO_AUTH_TOKEN": "secret"}, "account_sid"),
        (
            "twilio",
            {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t", "TWILIO_API_KEY": "SK1"},
            "not both",
        ),
        ("plivo", {"PLIVO_AUTH_ID": "MA0123"}, "auth_token"),
    ],
)
def test_incomplete_credentials_are_a_config_error(provider, env, missing):
    with pytest.raises(ConfigError, match=missing):
        check_hang_up_credentials(provider, env)


def test_telnyx_serializer_takes_the_calls_encoding():
    serializer = build_serializer("telnyx", {**CALL, "outbound_encoding": "PCMA"}, {})
    assert serializer._params.outbound_encoding == "PCMA"  # what Telnyx sends us
    assert serializer._params.inbound_encoding == "PCMU"  # what we send Telnyx
