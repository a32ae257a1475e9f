"""Phone calls: Twilio, Telnyx, Plivo and Exotel media streams on Pipecat's runner.

The runner serves the provider's WebSocket at ``/ws`` (and, with ``-x``, the TwiML/XML answer at
``POST /``); Pipecat's serializers turn the provider's JSON messages into frames. The line is
8 kHz (mu-law; Exotel: 16-bit PCM); the pipeline is not: the serializer decodes and resamples
each caller packet once to the pipeline's 16 kHz, so VAD, Smart Turn and the STT hear what they
were trained on, and the output transport resamples the TTS once to 8 kHz, which the serializer
then only encodes.

Why not the runner's own ``create_transport`` for calls: it builds every serializer with
``auto_hang_up`` on, and then refuses to start a call unless the provider's REST credentials are
set. Hang-up (ending the provider's call when the bot ends the session) is optional here: on
when the provider's variables are set, off otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from loguru import logger

from agent.config import ConfigError, TransportSettings

if TYPE_CHECKING:
    from pipecat.runner.types import RunnerArguments
    from pipecat.serializers.base_serializer import FrameSerializer
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketTransport

TELEPHONY_TRANSPORTS = ("twilio", "telnyx", "plivo", "exotel")
# The providers whose call webhook the runner answers with XML naming wss://<proxy>/ws.
XML_ANSWER_TRANSPORTS = ("twilio", "telnyx", "plivo")
LINE_SAMPLE_RATE = 8000

# The provider variables that turn on hang-up through its REST API, as Pipecat's runner names
# them: serializer argument -> environment variable.
HANG_UP_VARIABLES: dict[str, dict[str, str]] = {
    "twilio": {
        "account_sid": "TWILIO_ACCOUNT_SID",
        "auth_token": "TWILIO_AUTH_TOKEN",
        "api_key_sid": "TWILIO_API_KEY",
        "api_key_secret": "TWILIO_API_SECRET",
        "region": "TWILIO_REGION",
        "edge": "TWILIO_EDGE",
    },
    "telnyx": {"api_key": "TELNYX_API_KEY"},
    "plivo": {"auth_id": "PLIVO_AUTH_ID", "auth_token": "PLIVO_AUTH_TOKEN"},
    "exotel": {},
}
# The variables to name when hang-up is off: the smallest set that turns it on.
HANG_UP_HINT = {
    "twilio": "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
    "telnyx": "TELNYX_API_KEY",
    "plivo": "PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN",
}


def is_telephony(transport_type: str) -> bool:
    """Whether ``transport.type`` takes phone calls."""
    return transport_type in TELEPHONY_TRANSPORTS


def runner_arguments(transport: TransportSettings) -> list[str]:
    """The runner's transport arguments: ``-t TYPE``; for phone calls ``-x PROXY`` and no auth.

    Raises:
        ConfigError: A phone transport whose provider needs the public host name has none.
    """
    if not is_telephony(transport.type):
        return ["-t", transport.type]
    if transport.type in XML_ANSWER_TRANSPORTS and not transport.proxy:
        raise ConfigError(
            f"transport.proxy is unset, and transport.type = {transport.type!r} needs it: the "
            "public host name the provider reaches this agent on (an ngrok host, say), which "
            "the call webhook's answer at POST / names as wss://<proxy>/ws; "
            "pass -x HOST (or --set transport.proxy=HOST)"
        )
    # The runner's token auth (PIPECAT_WEBSOCKET_AUTH=token) wants a POST /start before each
    # connection, which no provider makes: it would refuse every call.
    args = ["-t", transport.type, "--ws-auth", "none"]
    if transport.proxy:
        args += ["-x", transport.proxy]
    return args


def hang_up_credentials(provider: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The provider's hang-up credentials found in ``env``, as serializer arguments.

    Empty when none of the provider's variables is set: hang-up stays off.
    """
    env = os.environ if env is None else env
    return {
        argument: env[variable]
        for argument, variable in HANG_UP_VARIABLES.get(provider, {}).items()
        if env.get(variable)
    }


def check_hang_up_credentials(provider: str, env: Mapping[str, str] | None = None) -> bool:
    """Validate the provider's hang-up credentials now, by Pipecat's own rules.

    Returns:
        Whether hang-up is on (some of the provider's variables are set and they are complete).

    Raises:
        ConfigError: Some variables are set but they do not make a usable set (a SID without
            its token, a token and an API key at once, a region without an edge).
    """
    credentials = hang_up_credentials(provider, env)
    if not credentials:
        return False
    try:
        # A serializer built with made-up ids checks the credentials the way every call will.
        build_serializer(provider, {"stream_id": "check", "call_id": "check"}, credentials)
    except ValueError as exc:
        names = ", ".join(HANG_UP_VARIABLES[provider].values())
        raise ConfigError(
            f"{provider} hang-up credentials are not usable: {exc}; set them fully or unset "
            f"them all ({names})"
        ) from None
    return True


def ready_message(transport: TransportSettings, hang_up: bool) -> str:
    """What the log says when a phone agent starts: where the provider should point."""
    provider = transport.type.capitalize()
    where = f"wss://{transport.proxy}/ws" if transport.proxy else "wss://<public host>/ws"
    lines = [f"{provider} calls: media streams to {where}"]
    if transport.type in XML_ANSWER_TRANSPORTS:
        lines.append(f"call webhook (POST, returns the XML answer): https://{transport.proxy}/")
    hint = HANG_UP_HINT.get(transport.type)
    if hint:
        state = "on" if hang_up else f"off (set {hint} to turn it on)"
        lines.append(f"hang-up through the {provider} API: {state}")
    return "; ".join(lines)


def is_call(runner_args: RunnerArguments) -> bool:
    """Whether the runner started this session for a connection to its ``/ws`` route."""
    from pipecat.runner.types import WebSocketRunnerArguments

    return isinstance(runner_args, WebSocketRunnerArguments) and (
        runner_args.transport_type != "websocket"
    )


def call_params():
    """Transport params for a call: caller audio at the pipeline's 16 kHz, bot audio at 8 kHz.

    ``audio_out_sample_rate`` at the line's rate makes the output transport the one place the
    TTS audio is resampled; the serializer's own resampler then sees 8 kHz in and out.
    """
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams

    from pipelines.voice import INPUT_SAMPLE_RATE

    return FastAPIWebsocketParams(
        audio_in_enabled=True,
        audio_out_enabled=True,
        audio_in_sample_rate=INPUT_SAMPLE_RATE,
        audio_out_sample_rate=LINE_SAMPLE_RATE,
        add_wav_header=False,
    )


def build_serializer(
    provider: str, call: Mapping[str, Any], credentials: Mapping[str, str]
) -> FrameSerializer:
    """Pipecat's serializer for ``provider``, hang-up on only with ``credentials``.

    Args:
        provider: ``twilio``, ``telnyx``, ``plivo`` or ``exotel``.
        call: The runner's parsed handshake (``CallData``: ``stream_id``, ``call_id``, and
            Telnyx's ``outbound_encoding``).
        credentials: Serializer arguments from :func:`hang_up_credentials`.

    Raises:
        ValueError: Incomplete credentials (Pipecat's message), or an unknown provider.
    """
    hang_up = bool(credentials)
    if provider == "twilio":
        from pipecat.serializers.twilio import TwilioFrameSerializer

        return TwilioFrameSerializer(
            stream_sid=call["stream_id"],
            call_sid=call["call_id"],
            params=TwilioFrameSerializer.InputParams(auto_hang_up=hang_up),
            **credentials,
        )
    if provider == "telnyx":
        from pipecat.serializers.telnyx import TelnyxFrameSerializer

        return TelnyxFrameSerializer(
            stream_id=call["stream_id"],
            call_control_id=call["call_id"],
            # What Telnyx sends us (the start message's media_format); we send PCMU, as the
            # runner does.
            outbound_encoding=call.get("outbound_encoding") or "PCMU",
            inbound_encoding="PCMU",
            params=TelnyxFrameSerializer.InputParams(auto_hang_up=hang_up),
            **credentials,
        )
    if provider == "plivo":
        from pipecat.serializers.plivo import PlivoFrameSerializer

        return PlivoFrameSerializer(
            stream_id=call["stream_id"],
            call_id=call["call_id"],
            params=PlivoFrameSerializer.InputParams(auto_hang_up=hang_up),
            **credentials,
        )
    if provider == "exotel":
        from pipecat.serializers.exotel import ExotelFrameSerializer

        return ExotelFrameSerializer(stream_sid=call["stream_id"], call_sid=call["call_id"])
    raise ValueError(f"not a phone provider: {provider!r}")


async def create_call_transport(
    runner_args: RunnerArguments, expected: str
) -> FastAPIWebsocketTransport | None:
    """The transport for one call on the runner's ``/ws``, or None if the call is refused.

    Reads the provider's handshake with the runner's own parser (which detects the provider
    from it), refuses a stream from another provider than ``transport.type`` (close 1008), and
    builds Pipecat's WebSocket transport with that provider's serializer and a pausable output.

    Args:
        runner_args: The runner's ``WebSocketRunnerArguments`` for the connection.
        expected: ``transport.type``.
    """
    from pipecat.runner.utils import parse_telephony_websocket

    from agent.call_output import PausableCallTransport

    websocket = runner_args.websocket  # type: ignore[attr-defined]
    try:
        provider, call = await parse_telephony_websocket(websocket)
    except ValueError as exc:  # closed before its handshake
        logger.warning(f"Phone stream ended before its start message: {exc}")
        return None
    runner_args.transport_type = provider  # type: ignore[attr-defined]
    runner_args.call_data = call
    if provider != expected:
        logger.error(
            f"Refused a {provider} stream on /ws: this agent takes {expected} "
            f"(transport.type); start it with -t {provider} for those"
            if is_telephony(provider)
            else f"Refused a {provider} stream on /ws: this agent takes {expected} calls"
        )
        await websocket.close(code=1008)
        return None
    params = call_params()
    params.serializer = build_serializer(provider, call, hang_up_credentials(provider))
    logger.info(f"{provider} call {call.call_id} (stream {call.stream_id}) connected")
    # Its output pauses while barge-in decides (agent/call_output.py), as the WebRTC track does.
    return PausableCallTransport(websocket=websocket, params=params)
