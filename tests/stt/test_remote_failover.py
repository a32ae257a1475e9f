"""Lossless failover of RemoteNemotronSTTService between real ASR servers on 127.0.0.1.

Two servers on the tiny engine sit behind a real TCP proxy (tests/support/tcp_proxy.py, the
"load balancer"). Two sessions speak the same three utterances of real recorded speech: X goes
to server A, Y to server B. A is killed (or shut down, or unreachable) while X speaks; X fails
over to B. Y is the no-failure run of the same audio in the same test: X must end with exactly
the finals Y has (text and word times), its partials must never repeat or shrink, and Y must see
no error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from loguru import logger
from pipecat.frames.frames import (
    ErrorFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)

from services.asr.remote_stt import RemoteNemotronSTTService
from services.asr.server.protocol import BYTES_PER_SECOND, E_RATE_LIMITED
from tests.stt.harness import LivePipeline
from tests.support.speech import real_utterances_pcm
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(120)

SPEED = 2.0  # audio is sent at twice real time (the pacing allows 3x by default)
SILENCE = bytes(int(0.3 * BYTES_PER_SECOND))  # after each utterance, before the VAD stop
# Between turns 1 and 2 (the bot talking): past the service's idle reset (4 s), so a failover
# in utterance 2 replays ~1 s of this silence, not all of it.
GAP = bytes(int(4.5 * BYTES_PER_SECOND))


@pytest.fixture(scope="module")
def speech() -> list[bytes]:
    """Three real recorded utterances (Asterisk prompts, 1.8-2.6 s) as 16 kHz PCM16."""
    return real_utterances_pcm("asterisk/", 1.8, 2.6, 3)


def address(server) -> tuple[str, int]:
    return ("127.0.0.1", server.port)


def session(url: str, **overrides) -> RemoteNemotronSTTService:
    overrides.setdefault("reconnect_min_secs", 0.05)
    overrides.setdefault("reconnect_max_secs", 0.2)
    return RemoteNemotronSTTService(url=url, **overrides)


async def converse(
    live: LivePipeline,
    utterances: list[bytes],
    *,
    during: Callable[[int], Awaitable[None]] | None = None,
    stop: Callable[[int], Awaitable[bool]] | None = None,
) -> None:
    """Speak each utterance as one turn.

    ``during(i)`` runs halfway through utterance i; ``stop(i)`` runs instead of its VAD stop
    and returns whether it sent one itself.
    """
    for i, pcm in enumerate(utterances):
        if i == 1:
            await live.send_audio(GAP, speed=4)
        await live.send(VADUserStartedSpeakingFrame())
        half = len(pcm) // 2 & ~1
        await live.send_audio(pcm[:half], speed=SPEED)
        if during is not None:
            await during(i)
        await live.send_audio(pcm[half:], speed=SPEED)
        await live.send_audio(SILENCE, speed=SPEED)
        if stop is None or not await stop(i):
            await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
        assert await live.wait_for(lambda i=i: len(live.of(TranscriptionFrame)) == i + 1, 15)
        await live.send(UserStoppedSpeakingFrame())  # the turn ends: a new utterance follows


def finals(live: LivePipeline) -> list[tuple]:
    return [(f.text, f.result.text, f.result.words) for f in live.of(TranscriptionFrame)]


def interims_by_utterance(live: LivePipeline) -> list[list[str]]:
    """Interim texts from each VAD start to that utterance's final.

    The tiny model's random weights transcribe silence too, so the gap between turns shows
    text that the idle reset drops (a real model shows none there): it is left out.
    """
    groups: list[list[str]] = []
    speaking = False
    for frame in live.down.frames:
        if isinstance(frame, VADUserStartedSpeakingFrame):
            groups.append([])
            speaking = True
        elif isinstance(frame, TranscriptionFrame):
            speaking = False
        elif isinstance(frame, InterimTranscriptionFrame) and speaking:
            groups[-1].append(frame.text)
    return groups


def assert_partials_clean(failed: LivePipeline, reference: LivePipeline) -> None:
    """Each utterance's partials only grow, each one a beginning of its final, as without the
    failure: nothing repeated, nothing shrinking, nothing the final does not have."""
    groups, reference_groups = interims_by_utterance(failed), interims_by_utterance(reference)
    assert len(groups) == len(reference_groups) == len(live_finals(failed))
    for mine, theirs, final in zip(groups, reference_groups, live_finals(failed), strict=True):
        assert mine and theirs
        letters = ["".join(t.split()) for t in mine]
        assert all(len(a) < len(b) for a, b in zip(letters, letters[1:], strict=False)), mine
        whole = "".join(final.split())
        assert all(whole.startswith(t) for t in letters), (mine, final)


def live_finals(live: LivePipeline) -> list[str]:
    return [f.result.text for f in live.of(TranscriptionFrame)]


def errors(live: LivePipeline) -> list[str]:
    return [e.error for e in live.of(ErrorFrame, up=True)]


async def failover_run(start_server, speech, *, mode: str, survivor=None, **stt):
    """X on A and Y on B through the proxy; A fails during X's second utterance."""
    a = await start_server()
    b = await start_server(**(survivor or {}))
    proxy = TcpProxy([address(a), address(b)])
    await proxy.start()
    x, y = session(proxy.url(), **stt), session(proxy.url(), **stt)
    cut_at: list[float] = []

    async def kill(i: int) -> None:
        if i != 1:
            return
        cut_at.append(time.monotonic())
        if mode == "kill":
            # The node is gone: its sockets die without a close handshake (the client sees
            # 1006) and it accepts nothing any more (its 1001 goodbye reaches no one).
            proxy.cut(address(a))
            await a.stop()
        else:
            await a.stop()  # graceful: shutting_down, then 1001

    async def outage(i: int) -> bool:
        if i != 1:
            return False
        cut_at.append(time.monotonic())
        await proxy.pause()  # no replica reachable for a while: connects are refused
        proxy.cut(address(a))
        await a.stop()
        await live_x.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))  # finalize, disconnected
        await asyncio.sleep(0.6)
        assert not x.connected and not live_x.of(TranscriptionFrame)[1:]
        await proxy.start()
        return True

    try:
        async with LivePipeline([x]) as live_x, LivePipeline([y]) as live_y:
            assert await live_x.wait_for(lambda: x.connected and y.connected)
            assert proxy.routed == [address(a), address(b)]
            if mode == "outage":
                run_x = converse(live_x, speech, stop=outage)
            else:
                run_x = converse(live_x, speech, during=kill)
            await asyncio.gather(run_x, converse(live_y, speech))
    finally:
        await proxy.stop()
    return x, y, live_x, live_y, b, cut_at[0]


def assert_lossless(x, y, live_x, live_y) -> None:
    assert len(finals(live_y)) == 3 and all(f[0] for f in finals(live_y))
    assert finals(live_x) == finals(live_y)
    assert_partials_clean(live_x, live_y)
    assert not errors(live_y) and y.failovers == 0
    assert x.failovers == 1 and x.connections_made == 2


async def test_a_server_killed_mid_utterance_loses_no_word(start_server, speech):
    x, y, live_x, live_y, survivor, cut_at = await failover_run(start_server, speech, mode="kill")
    assert_lossless(x, y, live_x, live_y)
    record = x.failover_log[0]
    assert "1006" in record.cause, record.cause
    # The utterance since its last reset: the gap's last 0.5 s at the idle reset (4 s in), the
    # 0.5 s of gap after it, half the speech (< 1.3 s); not the whole 4.5 s gap.
    assert 1.0 < record.replayed_s < 1.0 + 1.3 and record.lost_audio_s == 0
    assert x.idle_resets == y.idle_resets == 1
    assert record.first_partial_at is not None and record.first_partial_at - cut_at < 5.0
    assert x.replayed_secs >= record.replayed_s
    assert survivor.counters.errors[E_RATE_LIMITED] == 0
    # A lossless failover is logged, not pushed as an error.
    assert not errors(live_x), errors(live_x)


async def test_a_graceful_shutdown_fails_over_within_the_survivors_rate_limit(start_server, speech):
    """The survivor allows 3x real time with a 1 s burst: the replay (over 1 s of audio plus
    what arrived meanwhile) must be paced, or the server would drop audio (rate_limited)."""
    x, y, live_x, live_y, survivor, _ = await failover_run(
        start_server,
        speech,
        mode="shutdown",
        survivor={"max_audio_rate": 3.0, "audio_burst_s": 1.0},
        replay_rate=2.5,
        replay_burst_secs=0.5,
    )
    assert_lossless(x, y, live_x, live_y)
    assert "shutting_down" in x.failover_log[0].cause
    assert survivor.counters.errors[E_RATE_LIMITED] == 0


async def test_a_final_asked_for_while_disconnected_waits_for_the_replay(start_server, speech):
    x, y, live_x, live_y, _, _ = await failover_run(
        start_server, speech, mode="outage", finalize_timeout=3.0
    )
    assert_lossless(x, y, live_x, live_y)
    assert x.failover_log[0].attempts >= 1  # refused while the proxy was down
    # Refused connects are reported (once), like any outage the failover cannot hide.
    assert all("reconnecting" in e for e in errors(live_x)), errors(live_x)


async def test_an_outage_longer_than_the_replay_bound_warns_and_keeps_the_tail(
    start_server, speech, tiny_engine
):
    a = await start_server()
    proxy = TcpProxy([address(a)])
    await proxy.start()
    x = session(proxy.url(), replay_secs=1.0)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    utterance = speech[0] + speech[1]  # ~4 s of speech in one utterance
    first = int(0.4 * BYTES_PER_SECOND)
    try:
        async with LivePipeline([x]) as live:
            assert await live.wait_for(lambda: x.connected)
            await live.send(VADUserStartedSpeakingFrame())
            await live.send_audio(utterance[:first], speed=SPEED)
            await proxy.pause()
            proxy.cut()
            await live.send_audio(utterance[first:], speed=SPEED)  # ~1.8 s of outage
            await proxy.start()
            assert await live.wait_for(lambda: x.connected, timeout=5)
            await live.send_audio(SILENCE, speed=SPEED)
            await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
            assert await live.wait_for(lambda: live.of(TranscriptionFrame), timeout=15)
    finally:
        logger.remove(sink)
        await proxy.stop()
    [final] = live.of(TranscriptionFrame)
    record = x.failover_log[0]
    assert any("longer than replay_secs" in w for w in warnings), warnings
    assert record.lost_audio_s > 1.0 and x.lost_audio_secs == record.lost_audio_s
    # The final is the one of the kept tail, its words on the utterance's clock.
    kept = (utterance + SILENCE)[round(record.lost_audio_s * BYTES_PER_SECOND) :]
    stream = tiny_engine.open_stream()
    try:
        stream.push_audio(np.frombuffer(kept, dtype="<i2"))
        reference = await stream.finalize()
    finally:
        stream.close()
    assert final.result.text == reference.text and final.text
    assert reference.words and len(final.result.words) == len(reference.words)
    for got, ref in zip(final.result.words, reference.words, strict=True):
        assert got.word == ref.word
        assert abs(got.start_s - (ref.start_s + record.lost_audio_s)) < 1e-3
    assert not [e for e in live.of(ErrorFrame, up=True) if e.fatal]
