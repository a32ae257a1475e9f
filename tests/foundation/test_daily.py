"""``-t daily`` without Daily's service: the transport, the key check, the room-creation request.

Daily's cloud cannot be reached here, so ``FakeDailyAPI`` (named as a fake) stands in for its
REST API: Pipecat's runner finds it through ``DAILY_API_URL``, the variable its room helper
(``pipecat.runner.daily.configure``) reads, and it answers ``POST /rooms`` and ``POST
/meeting-tokens`` as Daily documents them. Everything else is real: the agent runs as a child
process (``voice-agent run -t daily``), its bot session builds a ``DailyTransport`` and starts
joining the room the fake handed out. The join cannot finish (the room's host name never
resolves), which is why the check stops at the attempt.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from agent.cli import main as cli_main
from pipelines.voice import INPUT_SAMPLE_RATE
from tests.e2e.agent_process import start_agent
from tests.lifecycle.test_startup_errors import assert_clean_failure, cli, free_port
from tests.support.doctor import doctor_rows
from tests.support.in_thread import InThread
from tests.support.loopback_http import LoopbackHTTPServer

pytest.importorskip("daily", reason="needs daily-python (pipecat-ai[daily])")

pytestmark = pytest.mark.timeout(120)

# Pipecat's runner asks for rooms that expire after 4 hours, with a bot token for 2.
ROOM_HOURS, TOKEN_HOURS = 4.0, 2.0


async def test_a_daily_session_gets_a_daily_transport_with_our_audio_settings():
    from pipecat.runner.types import DailyRunnerArguments
    from pipecat.runner.utils import create_transport
    from pipecat.transports.daily.transport import DailyTransport

    from agent import bot

    # What the runner hands the bot for a /daily session, and what the bot builds from it.
    runner_args = DailyRunnerArguments(room_url="https://example.daily.co/room", token="tok")
    transport = await create_transport(runner_args, bot._transport_params())
    assert type(transport) is DailyTransport
    params = transport._params
    assert params.audio_in_enabled and params.audio_out_enabled
    assert params.audio_in_sample_rate == INPUT_SAMPLE_RATE  # what the VAD and the STTs expect
    assert (transport._client._room_url, transport._client._token) == (runner_args.room_url, "tok")


def test_run_without_the_api_key_stops_and_says_what_to_set():
    # The environment is cleared of DAILY_API_KEY by cli(); nothing has loaded yet.
    result = cli("run", "-t", "daily", "--host", "127.0.0.1", "--port", str(free_port()))
    assert_clean_failure(
        result,
        1,
        "transport.type = 'daily' needs DAILY_API_KEY, which is not set",
        "fix: export DAILY_API_KEY=",
        "https://dashboard.daily.co/developers",
    )


@pytest.mark.parametrize("key_in", ["nowhere", "environment", ".env"])
def test_doctor_reports_the_daily_api_key(key_in, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # Set then delete: monkeypatch restores the variable to its state before the test, also
    # after the doctor has loaded it from the .env file.
    monkeypatch.setenv("DAILY_API_KEY", "")
    monkeypatch.delenv("DAILY_API_KEY")
    env_file = tmp_path / "test.env"
    env_file.write_text("DAILY_API_KEY=from-dotenv\n" if key_in == ".env" else "")
    if key_in == "environment":
        monkeypatch.setenv("DAILY_API_KEY", "from-env")
    cli_main(
        ["doctor", "--profile", "cpu", "--set", "transport.type=daily", "--env-file", str(env_file)]
    )
    rows = doctor_rows(capsys.readouterr().out)
    status, fix = rows["DAILY_API_KEY"]
    if key_in == "nowhere":
        assert status == "FAIL" and fix.startswith("export DAILY_API_KEY=")
    else:
        assert (status, fix) == ("ok", "")
    # daily-python is required with -t daily (it is installed here).
    assert rows["package daily-python"][0] == "ok"


@dataclass
class FakeDailyAPI(LoopbackHTTPServer):
    """FAKE Daily REST API (``/v1/rooms``, ``/v1/meeting-tokens``), recording every request."""

    base_url: str = ""
    requests: list[tuple[str, str, str, dict]] = field(default_factory=list)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/rooms", self._rooms)
        router.add_post("/v1/meeting-tokens", self._tokens)

    async def start(self) -> FakeDailyAPI:
        self.base_url = await self.serve() + "/v1"
        return self

    async def _record(self, request: web.Request) -> dict:
        body = await request.json()
        auth = request.headers.get("Authorization", "")
        self.requests.append((request.method, request.path, auth, body))
        return body

    def room_url(self, name: str) -> str:
        # Shaped like a Daily room URL, on a reserved name (.invalid) that never resolves, so
        # the bot's join cannot reach anyone's servers, in a network namespace or not.
        return f"https://voice-agent-test.invalid/{name}"

    async def _rooms(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        return web.json_response(
            {
                "id": "5e3cf703-5547-47d6-a371-37b1f0b4427f",
                "name": body["name"],
                "api_created": True,
                "privacy": body.get("privacy", "public"),
                "url": self.room_url(body["name"]),
                "created_at": "2026-12-01T00:00:00.000Z",
                "config": body.get("properties", {}),
            }
        )

    async def _tokens(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"token": "fake-meeting-token"})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_daily_room_is_created_through_the_rest_api_and_the_bot_joins_it(tmp_path):
    with InThread(FakeDailyAPI()) as api:
        agent = start_agent(
            profile="cpu",
            # Cheap backends: nothing here is about them (the LLM is never asked).
            overrides={
                "llm.preset": "vllm",
                "llm.base_url": "http://127.0.0.1:9/v1",
                "llm.model": "unused",
            },
            extra_args=["-t", "daily", "--no-prewarm"],
            log_path=tmp_path / "agent.log",
            env={"DAILY_API_KEY": "test-daily-key", "DAILY_API_URL": api.base_url},
            ready_timeout=120,
        )
        try:
            opener = urllib.request.build_opener(_NoRedirect)
            before = time.time()
            with pytest.raises(urllib.error.HTTPError) as answer:
                opener.open(agent.url + "/daily", timeout=30)
            # The bot joins the room in the background: wait for the attempt.
            deadline = time.monotonic() + 30
            while "Joining https://" not in agent.log_tail(400) and time.monotonic() < deadline:
                time.sleep(0.2)
            log = agent.log_path.read_text(errors="replace")
            # The join never completes here, which holds up a clean exit: SIGTERM must still
            # end the agent within 5 s (its stop deadline).
            asked = time.monotonic()
            agent.process.send_signal(signal.SIGTERM)
            agent.process.wait(10)
            stop_took = time.monotonic() - asked
        finally:
            agent.stop(timeout=3)
        assert stop_took <= 5.0, stop_took

    # The runner asked Daily's API for a room, then for the bot's token to it, with our key.
    assert [(m, p, a) for m, p, a, _ in api.requests] == [
        ("POST", "/v1/rooms", "Bearer test-daily-key"),
        ("POST", "/v1/meeting-tokens", "Bearer test-daily-key"),
    ], api.requests
    room, token = api.requests[0][3], api.requests[1][3]
    assert re.fullmatch(r"pipecat-[0-9a-f]{8}", room["name"]), room
    properties = room["properties"]
    assert properties["eject_at_room_exp"] is True
    assert abs(properties["exp"] - (before + ROOM_HOURS * 3600)) < 120, properties
    token_properties = token["properties"]
    assert token_properties["room_name"] == room["name"]
    assert token_properties["is_owner"] is True
    assert abs(token_properties["exp"] - (before + TOKEN_HOURS * 3600)) < 120, token
    # The browser is sent to the room the API created ...
    room_url = api.room_url(room["name"])
    assert answer.value.code in (302, 307) and answer.value.headers["Location"] == room_url
    # ... and the session's pipeline runs on a Daily transport joining that room.
    assert "Linking DailyInputTransport#0 -> " in log, log[-3000:]
    assert f"Joining {room_url}" in log, log[-3000:]
    # Start-up told the user where to go.
    assert f"Open {agent.url}/daily: it creates a Daily room" in log
