"""The ASR server on 127.0.0.1 with real websockets clients and the tiny engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from services.asr.server import ASRClient, ASRRejectedError, ASRServerError
from services.asr.server import protocol as P
from tests.asr_server.tiny import chunks, speechlike_pcm

pytestmark = pytest.mark.timeout(120)


async def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(get)


async def send_paced(client: ASRClient, pcm: bytes, *, ms: int = 20, speed: float = 4.0) -> None:
    """Send ``pcm`` in ``ms`` messages at ``speed`` x real time."""
    start = time.monotonic()
    for i, piece in enumerate(chunks(pcm, ms)):
        await client.send_audio(piece)
        delay = start + (i + 1) * ms / 1000 / speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


async def test_health_ready_and_metrics(server):
    base = f"http://127.0.0.1:{server.port}"
    status, body = await http_get(f"{base}/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = await http_get(f"{base}/ready")
    assert status == 200 and json.loads(body)["ready"] is True

    client = ASRClient(server.url)
    await client.connect()
    await send_paced(client, speechlike_pcm(1.0), speed=8)
    await client.finalize()
    status, text = await http_get(f"{base}/metrics")
    assert status == 200
    lines = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert lines["asr_streams_live"] == "1"
    assert float(lines["asr_audio_seconds_total"]) == pytest.approx(1.0, abs=0.05)
    assert float(lines["process_resident_memory_bytes"]) > 0
    assert "asr_engine_step_latency_ms_p99" in lines
    assert "asr_engine_recent_batch_sizes_mean" in lines
    assert int(lines["asr_finalize_seconds_count"]) == 1
    await client.close()
    assert await wait_for(lambda: server.live_streams == 0)
    status, _ = await http_get(f"{base}/nope")
    assert status == 404


async def test_partials_final_and_reset_carry_audio_times(server, tiny_engine):
    events: list[dict] = []
    client = ASRClient(server.url, on_event=events.append)
    ready = await client.connect()
    assert ready["sample_rate"] == 16000 and ready["protocol"] == P.PROTOCOL_VERSION
    await send_paced(client, speechlike_pcm(1.5), speed=6)
    final = await client.finalize()
    partials = [e for e in events if e["type"] == "partial"]
    assert partials, "the tiny model emits text on every step"
    ends = [e["audio_end_s"] for e in partials]
    assert ends == sorted(ends) and ends[-1] <= 1.5
    assert all(e["latency_s"] >= 0 and e["received_s"] >= e["audio_end_s"] for e in partials)
    assert final["type"] == "final" and final["text"].startswith(partials[-1]["text"][:10])
    assert final["audio_end_s"] == pytest.approx(1.5, abs=0.01)
    assert final["utterance"] == 0 and final["finalize_s"] >= 0

    # Reset: a new utterance whose clock starts where the connection's audio had got to.
    await client.reset()
    assert await wait_for(lambda: any(e["type"] == "reset" for e in events))
    reset = next(e for e in events if e["type"] == "reset")
    assert reset["utterance"] == 1 and reset["audio_start_s"] == pytest.approx(1.5, abs=0.01)
    events.clear()
    await send_paced(client, speechlike_pcm(1.0, seed=1), speed=6)
    final2 = await client.finalize()
    assert final2["utterance"] == 1
    assert final2["audio_end_s"] == pytest.approx(2.5, abs=0.01)
    later = [e for e in events if e["type"] == "partial"]
    assert later and all(e["utterance"] == 1 and e["audio_end_s"] >= 1.5 for e in later)
    pong_events: list[dict] = []
    client._on_event = pong_events.append
    await client.send_text({"type": "ping", "id": 7})
    assert await wait_for(lambda: any(e["type"] == "pong" and e["id"] == 7 for e in pong_events))
    await client.close()


async def test_token_required_by_header_or_query(start_server):
    srv = await start_server(token="s3cret")
    base = f"http://127.0.0.1:{srv.port}"
    with pytest.raises(ASRRejectedError) as info:
        await ASRClient(srv.url).connect()
    assert info.value.status == 401 and info.value.permanent
    with pytest.raises(ASRRejectedError):
        await ASRClient(srv.url, token="wrong").connect()
    ok = ASRClient(srv.url, token="s3cret")
    await ok.connect()
    await ok.close()
    by_query = ASRClient(f"{srv.url}?token=s3cret")
    await by_query.connect()
    await by_query.close()
    assert (await http_get(f"{base}/metrics"))[0] == 401
    assert (await http_get(f"{base}/metrics", {"Authorization": "Bearer s3cret"}))[0] == 200
    assert (await http_get(f"{base}/health"))[0] == 200  # probes need no token


async def test_excess_streams_get_1013_and_a_message(start_server, tiny_engine):
    srv = await start_server(max_streams=2)
    first, second = ASRClient(srv.url), ASRClient(srv.url)
    await first.connect()
    await second.connect()
    status, body = await http_get(f"http://127.0.0.1:{srv.port}/ready")
    assert status == 503 and "in use" in json.loads(body)["reason"]
    async with connect(srv.url) as ws:
        event = json.loads(await ws.recv())
        assert event["type"] == "error" and event["code"] == P.E_SERVER_FULL and event["fatal"]
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == P.CLOSE_TRY_AGAIN_LATER
    with pytest.raises(ASRRejectedError) as info:
        await ASRClient(srv.url).connect()
    assert info.value.close_code == P.CLOSE_TRY_AGAIN_LATER and not info.value.permanent
    await first.close()
    assert await wait_for(lambda: srv.live_streams == 1)
    third = ASRClient(srv.url)
    await third.connect()  # the freed slot is usable at once
    await second.close()
    await third.close()


async def test_malformed_input_gets_errors_and_never_disturbs_other_streams(server):
    good_events: list[dict] = []
    good = ASRClient(server.url, on_event=good_events.append)
    await good.connect()
    good_task = asyncio.create_task(send_paced(good, speechlike_pcm(2.0), speed=2))

    bad_events: list[dict] = []
    bad = ASRClient(server.url, on_event=bad_events.append)
    await bad.connect()
    await bad.send_audio(b"\x01\x02\x03")  # odd byte count
    await bad.send_text("this is not json")
    await bad.send_text("[1, 2, 3]")
    await bad.send_text(json.dumps({"type": "launch_rockets"}))
    await bad.send_text(json.dumps({"type": "finalize", "id": {"nested": True}}))
    await bad.send_text(json.dumps({"type": "start"}))  # after audio? no audio yet: accepted
    await bad.send_audio(speechlike_pcm(0.5))
    final = await bad.finalize()  # the connection still works after every error
    assert final["audio_end_s"] == pytest.approx(0.5, abs=0.01)
    codes = [e["code"] for e in bad_events if e["type"] == "error"]
    assert codes == [P.E_BAD_AUDIO] + [P.E_BAD_MESSAGE] * 4
    assert all(not e["fatal"] for e in bad_events if e["type"] == "error")

    # A start declaring another rate: an error, then close 1003; other streams go on.
    wrong = ASRClient(server.url, start={"sample_rate": 8000})
    await wrong.connect()
    assert await wait_for(lambda: wrong.closed.is_set())
    assert wrong.close_code == P.CLOSE_UNSUPPORTED
    assert wrong.last_error and wrong.last_error["code"] == P.E_UNSUPPORTED_FORMAT

    await good_task
    good_final = await good.finalize()
    assert good_final["audio_end_s"] == pytest.approx(2.0, abs=0.01)
    assert not [e for e in good_events if e["type"] == "error"]
    await bad.close()
    await good.close()


async def test_audio_flood_is_rate_limited_and_connection_survives(start_server):
    srv = await start_server(max_audio_rate=2.0, audio_burst_s=1.0)
    events: list[dict] = []
    client = ASRClient(srv.url, on_event=events.append)
    await client.connect()
    for piece in chunks(speechlike_pcm(4.0), 100):  # 4 s of audio at once: 2 s over budget
        await client.send_audio(piece)
    final = await client.finalize()
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[0]["code"] == P.E_RATE_LIMITED
    assert final["audio_end_s"] < 2.0  # the excess was dropped, not queued
    assert client.connected
    await client.close()


async def test_text_flood_and_too_many_errors_close_1008(start_server):
    srv = await start_server(max_errors=20)
    client = ASRClient(srv.url)
    await client.connect()
    for _ in range(50):
        try:
            await client.send_text("garbage")
        except ConnectionError:
            break
    assert await wait_for(lambda: client.closed.is_set())
    assert client.close_code == P.CLOSE_POLICY


async def test_message_over_the_limit_closes_1009(start_server):
    srv = await start_server(max_message_bytes=4096)
    client = ASRClient(srv.url)
    await client.connect()
    await client.send_audio(bytes(8192))
    assert await wait_for(lambda: client.closed.is_set())
    assert client.close_code == P.CLOSE_TOO_BIG
    assert await wait_for(lambda: srv.live_streams == 0)


async def test_idle_connection_is_closed(start_server):
    srv = await start_server(idle_timeout=0.5)
    client = ASRClient(srv.url)
    await client.connect()
    assert await wait_for(lambda: client.closed.is_set(), timeout=3)
    assert client.close_code == P.CLOSE_IDLE
    assert client.last_error["code"] == P.E_IDLE_TIMEOUT
    assert srv.live_streams == 0


async def test_vanished_client_frees_its_slot_at_once(server, tiny_engine):
    base = tiny_engine.stats()["live_streams"]
    client = ASRClient(server.url)
    await client.connect()
    await send_paced(client, speechlike_pcm(0.5), speed=4)
    assert tiny_engine.stats()["live_streams"] == base + 1
    client.abort()  # TCP gone mid-utterance, no close handshake
    started = time.monotonic()
    assert await wait_for(lambda: tiny_engine.stats()["live_streams"] == base, timeout=2)
    assert time.monotonic() - started < 1.0
    assert server.live_streams == 0


async def test_finalize_on_a_closed_stream_reports_an_error(server):
    client = ASRClient(server.url)
    await client.connect()
    conn = next(iter(server._connections.values()))
    conn.stream.close()  # the engine lost the stream under the connection
    with pytest.raises(ASRServerError) as info:
        await client.finalize()
    assert info.value.code == P.E_ENGINE
    await client.close()


async def test_shutdown_tells_clients_and_closes_1001(start_server):
    srv = await start_server()
    client = ASRClient(srv.url)
    await client.connect()
    await srv.stop()
    assert await wait_for(lambda: client.closed.is_set())
    assert client.close_code == P.CLOSE_GOING_AWAY
    assert client.last_error["code"] == P.E_SHUTTING_DOWN


@contextlib.asynccontextmanager
async def stalled(engine):
    """Hold the real engine's scheduler between ticks, as an engine fallen far behind real
    time: audio is taken, but no step runs and no final comes back until the block ends."""
    lock = engine._tick_lock
    await asyncio.to_thread(lock.acquire)  # waits out a tick in flight, off the event loop
    try:
        yield
    finally:
        lock.release()


async def test_final_timeouts_shed_the_stream_and_refuse_new_ones(start_server, tiny_engine):
    # 1 s: the stalled finals time out all the same, and the final after the stall has the time
    # a loaded 2-core CI host needs (0.2 s timed out there once the engine ran again).
    srv = await start_server(finalize_timeout=1.0, overload_hold_s=1.0, shed_after_timeouts=2)
    events: list[dict] = []
    client = ASRClient(srv.url, on_event=events.append)
    await client.connect()
    async with stalled(tiny_engine):
        await client.send_audio(speechlike_pcm(0.2))
        with pytest.raises(ASRServerError):
            await client.finalize()
        assert srv.overloaded
        status, body = await http_get(f"http://127.0.0.1:{srv.port}/ready")
        assert status == 503 and "overloaded" in json.loads(body)["reason"]
        with pytest.raises(ASRRejectedError) as info:
            await ASRClient(srv.url).connect()  # no new streams while behind
        assert info.value.close_code == P.CLOSE_TRY_AGAIN_LATER
        with pytest.raises((ASRServerError, ConnectionError)):
            await client.finalize()  # the second timeout in a row sheds this stream
        assert await wait_for(lambda: client.closed.is_set())
        assert client.close_code == P.CLOSE_TRY_AGAIN_LATER
        assert any(e.get("code") == P.E_OVERLOADED for e in events)
    # The engine runs again: once the hold is over, streams are accepted and transcribed.
    assert await wait_for(lambda: not srv.overloaded, timeout=3)
    again = ASRClient(srv.url)
    await again.connect()
    try:
        await again.send_audio(speechlike_pcm(1.0))
        final = await again.finalize(timeout=10)
        assert final["text"]
    finally:
        await again.close()
