"""Many streams at once: batching, joins/leaves, slot reuse, fairness, loop lag, cleanup."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import tracemalloc
import warnings
import weakref

import numpy as np
import pytest
import torch

from services.asr.engine import EngineFullError, StreamClosedError

from .conftest import babble, live_steps_for, wait_steps, wait_until
from .test_exactness import ATOL, Tap, expected_out_frames


def record_batch_sizes(engine) -> list[tuple[str, int]]:
    """Wrap the runner so every encoder call's (kind, batch size) is recorded."""
    calls: list[tuple[str, int]] = []
    original = engine._runner.encode

    def encode(kind, new_mel, caches, rows=None, keep_all=False):
        parts = new_mel if isinstance(new_mel, list) else [new_mel]  # live rows + finals' rows
        calls.append((kind, sum(part.shape[0] for part in parts)))
        return original(kind, new_mel, caches, rows, keep_all)

    engine._runner.encode = encode
    return calls


def padded(engine, audio: np.ndarray) -> np.ndarray:
    out = np.zeros(engine.padded_length(len(audio)), np.float32)
    out[: len(audio)] = audio
    return out


def test_batched_equals_single_with_staggered_joins_leaves_and_slot_reuse(make_engine, offline):
    engine = make_engine(chunk_ms=160)
    tap = Tap()
    engine._encoder_tap = tap
    calls = record_batch_sizes(engine)
    frame = 320  # 20 ms
    # name -> (audio, frame index at which it joins, frame index at which it leaves or None)
    plan = {
        "a": (babble(2.4, 1), 0, None),
        "b": (babble(2.4, 2), 0, 40),  # leaves early: its slot is freed
        "c": (babble(1.6, 3), 10, None),
        "d": (babble(2.0, 4), 45, None),  # joins after b left: reuses b's slot
        "e": (babble(1.2, 5), 50, 80),
    }
    streams, pushed, slots_seen = {}, {}, {}
    freed_slots = set()
    for i in range(200):
        for name, (audio, join, leave) in plan.items():
            if i == join:
                streams[name] = engine.open_stream()
                pushed[name] = 0
            if name not in streams or streams[name].closed:
                continue
            if leave is not None and i == leave:
                slots_seen[name] = streams[name]._state.slot
                freed_slots.add(slots_seen[name])
                streams[name].close()
                continue
            start = (i - join) * frame
            if start < len(audio):
                streams[name].push_audio(audio[start : start + frame])
                pushed[name] = min(start + frame, len(audio))
            if streams[name]._state.slot is not None:
                slots_seen.setdefault(name, streams[name]._state.slot)
        time.sleep(0.002)  # let ticks interleave with pushes

    survivors = [n for n, (_, _, leave) in plan.items() if leave is None]
    for name in survivors:
        audio = plan[name][0]
        mel_frames = live_steps_for(engine, len(audio))
        stream = streams[name]
        wait_steps(engine, stream, mel_frames, f"{name} steps")
        n_out = expected_out_frames(engine, mel_frames)
        reference = offline.encode(audio, 1)
        diff = (tap.joined(stream.id) - reference[:, :n_out]).abs().max().item()
        assert diff < ATOL, f"stream {name}: max diff {diff}"
        assert stream._state.text.text == offline.decode(reference[:, :n_out])
        assert stream.finalize_sync(30).text == offline.transcript(padded(engine, audio), 1)

    # b's slot goes to whichever of the streams starting after it left steps first (d and e
    # can start in the same tick).
    assert freed_slots & {slots_seen.get("d"), slots_seen.get("e")}, "a freed slot is reused"
    assert max(n for kind, n in calls if kind == "later") > 1, "streams should share steps"
    # The same stream alone in its own engine gives the same text as in the batch.
    single = make_engine(chunk_ms=160)
    alone = single.open_stream()
    alone.push_audio(plan["a"][0])
    assert alone.finalize_sync(30).text == offline.transcript(padded(engine, plan["a"][0]), 1)
    for s in streams.values():
        s.close()
    assert engine.stats()["slots_in_use"] == 0


async def test_64_concurrent_streams(make_engine, offline):
    engine = make_engine(chunk_ms=160)
    calls = record_batch_sizes(engine)
    n = 64
    audios = [babble(1.0 + 0.1 * (i % 7), 200 + i) for i in range(n)]
    streams = [engine.open_stream() for _ in range(n)]
    piece = 640
    for start in range(0, max(len(a) for a in audios), piece):
        for s, a in zip(streams, audios, strict=True):
            if start < len(a):
                s.push_audio(a[start : start + piece])
        await asyncio.sleep(0)
    finals = await asyncio.gather(*(s.finalize() for s in streams))
    for i, (final, audio) in enumerate(zip(finals, audios, strict=True)):
        assert final.stream_id == streams[i].id
        assert final.text == offline.transcript(padded(engine, audio), 1), f"stream {i}"
    assert engine.stats()["live_streams"] == n
    assert max(size for _, size in calls) >= 16, "64 streams should be batched together"
    for s in streams:
        s.close()
    assert engine.stats()["slots_in_use"] == 0


async def measure_loop_lag(
    engine, n_streams: int, seed: int, seconds: float = 3.0
) -> tuple[list[float], int]:
    """Feed ``n_streams`` streams in real time while a ticker measures the loop's lag."""
    streams = [engine.open_stream() for _ in range(n_streams)]
    audios = [babble(seconds, seed + i) for i in range(n_streams)]
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    received = {s.id: 0 for s in streams}
    done = asyncio.Event()
    steps_before = engine.stats()["steps_run"]

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t0 - 0.005)

    async def consume(stream) -> None:
        async for event in stream.events():
            assert not event.is_final
            received[stream.id] += 1

    async def feed() -> None:
        # 20 ms frames paced in real time, as a transport delivers them.
        t0 = time.perf_counter()
        for k, start in enumerate(range(0, len(audios[0]), 320)):
            for s, a in zip(streams, audios, strict=True):
                s.push_audio(a[start : start + 320])
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.perf_counter()))

    tick_task = loop.create_task(ticker())
    consumers = [loop.create_task(consume(s)) for s in streams]
    await feed()
    finals = await asyncio.gather(*(s.finalize() for s in streams))
    done.set()
    await tick_task
    for s in streams:
        s.close()
    await asyncio.wait_for(asyncio.gather(*consumers), 5)  # events() ends on close
    assert all(f.is_final for f in finals)
    assert sum(received.values()) > 0
    return lags, engine.stats()["steps_run"] - steps_before


async def test_event_loop_lag_stays_low_while_engine_busy(make_engine):
    """The engine never blocks the loop: lag < 20 ms while it serves 20 real-time streams.

    Callers only append to a per-stream inbox; model work runs on the scheduler thread, and
    torch releases the GIL inside every op. Measured on an idle 2-core machine: max lag ~5 ms.
    The CI machines are 2 cores shared with other jobs; when they are oversubscribed (load
    above the core count) the OS alone holds a runnable thread off the CPU for 20-100 ms, so
    there the strict max is replaced by the 99th percentile, and a warning says so.
    """
    engine = make_engine(chunk_ms=160)
    results = []
    for attempt in range(3):
        lags, steps = await measure_loop_lag(engine, n_streams=20, seed=300 + 50 * attempt)
        assert steps > 10, "the engine should have been busy during the measurement"
        results.append((max(lags), float(np.percentile(lags, 99))))
        if results[-1][0] < 0.020:
            return
    best_max = min(m for m, _ in results)
    best_p99 = min(p for _, p in results)
    summary = ", ".join(f"max {m * 1000:.0f} ms / p99 {p * 1000:.0f} ms" for m, p in results)
    oversubscribed = os.getloadavg()[0] > (os.cpu_count() or 1)
    if not oversubscribed:
        assert best_max < 0.020, f"event loop lag over 20 ms in every attempt: {summary}"
    assert best_p99 < 0.020, f"event loop lag p99 over 20 ms: {summary}"
    warnings.warn(
        f"machine oversubscribed (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): "
        f"loop lag {summary}; only p99 < 20 ms was required",
        stacklevel=1,
    )


def test_slots_and_memory_freed_after_1000_open_close_cycles(make_engine):
    engine = make_engine(chunk_ms=160, max_streams=4)
    audio = babble(0.5, 7)
    refs: list[weakref.ref] = []
    failed_finals = []

    def cycle(i: int) -> None:
        stream = engine.open_stream(on_event=lambda e: None)
        n = len(audio) if i % 50 == 0 else 1000 + (i * 37) % (len(audio) - 1000)
        stream.push_audio(audio[:n])
        if i % 7 == 0:
            failed_finals.append(engine._request_final(stream))
        if i % 50 == 0:  # sometimes let the stream really step before it closes
            wait_until(lambda: stream._state.mel_pos > 0, what="a step")
        if i % 100 == 0:
            refs.append(weakref.ref(stream._state))
        stream.close()
        stream.close()  # idempotent

    for i in range(100):  # warm up allocator caches before measuring
        cycle(i)
    wait_until(lambda: engine.stats()["pending_finals"] == 0, what="idle")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(100, 1100):
        cycle(i)
    time.sleep(0.2)  # let the last in-flight tick commit
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))

    stats = engine.stats()
    assert stats["live_streams"] == 0
    assert stats["slots_in_use"] == 0
    assert stats["slot_capacity"] <= 4
    assert not engine._streams
    assert all(r() is None for r in refs), "closed streams must be garbage"
    for future in failed_finals:
        assert future.done()
        if future.exception() is not None:
            assert isinstance(future.exception(), StreamClosedError)
    assert growth < 512 * 1024, f"Python heap grew by {growth} bytes over 1000 cycles"


def test_engine_full_and_closed_stream_errors(make_engine):
    engine = make_engine(chunk_ms=160, max_streams=3)
    a, b, c = engine.open_stream(), engine.open_stream(), engine.open_stream()
    with pytest.raises(EngineFullError):
        engine.open_stream()
    a.close()
    d = engine.open_stream()
    assert a.closed and not d.closed
    with pytest.raises(StreamClosedError):
        a.push_audio(np.zeros(320, np.float32))
    with pytest.raises(StreamClosedError):
        a.finalize_sync(5)
    with pytest.raises(StreamClosedError):
        a.reset()

    # Hold the scheduler inside a tick so a final is still queued when its stream closes.
    gate, inside = threading.Event(), threading.Event()
    original = engine._runner.encode

    def blocked_encode(*args, **kwargs):
        inside.set()
        gate.wait(10)
        return original(*args, **kwargs)

    engine._runner.encode = blocked_encode
    c.push_audio(babble(0.5, 1))
    assert inside.wait(10)
    pending = engine._request_final(b)
    b.close()
    gate.set()
    with pytest.raises(StreamClosedError):
        pending.result(5)
    engine._runner.encode = original
    assert c.finalize_sync(30).is_final


def test_max_batch_caps_a_call_and_every_stream_progresses(make_engine, offline):
    engine = make_engine(chunk_ms=160, max_batch=2)
    calls = record_batch_sizes(engine)
    audios = [babble(1.0, 400 + i) for i in range(5)]
    streams = [engine.open_stream() for _ in audios]
    for s, a in zip(streams, audios, strict=True):
        s.push_audio(a)
    for s, a in zip(streams, audios, strict=True):
        mel_frames = live_steps_for(engine, len(a))
        wait_steps(engine, s, mel_frames, "progress")
        n_out = expected_out_frames(engine, mel_frames)
        assert s._state.text.text == offline.transcript(a, 1, frames=n_out)
    assert max(size for kind, size in calls if kind != "final") <= 2


def test_long_stream_stays_bounded(make_engine, offline):
    engine = make_engine(chunk_ms=160, max_utterance_chars=300)
    stream = engine.open_stream()
    audio = babble(20.0, 9)
    ring = engine._table.ring
    ring_bytes = ring.nbytes
    for start in range(0, len(audio), 8000):
        stream.push_audio(audio[start : start + 8000])
        caught_up = live_steps_for(engine, min(start + 8000, len(audio)))
        wait_steps(engine, stream, caught_up, "steps")
    # The audio lives in the stream's fixed ring, which 20 s of audio wrapped around.
    assert len(audio) > engine._table.ring_samples
    assert engine._table.ring is ring and ring.nbytes == ring_bytes
    mel_frames = live_steps_for(engine, len(audio))
    wait_steps(engine, stream, mel_frames, "all steps")
    state = stream._state
    n_out = expected_out_frames(engine, mel_frames)
    full = offline.transcript(audio, 1, frames=n_out)
    assert len(full) > 300, "the check needs a transcript longer than the cap"
    assert state.text.text == full[-300:]
    assert len(state.text.tail) <= 256


@pytest.mark.parametrize("encoder", ["fast", "nemo"])
def test_bf16_stays_close_to_fp32(make_engine, offline, encoder):
    """bf16 (the GPU setting; CPU autocast here): bf16 caches, encoder output near fp32.

    Our fast step keeps the residual stream and the norms in fp32 and the fp32 transcripts
    too; NeMo's step under autocast drifts further (one character of this random model's
    garbage text differs), so only its encoder output is bounded.
    """
    engine = make_engine(chunk_ms=160, dtype="bf16", encoder=encoder)
    state = engine._pool.encoder_state
    cached = state["k"] if encoder == "fast" else state["last_channel"]
    assert cached.dtype == torch.bfloat16
    tap = Tap()
    engine._encoder_tap = tap
    worst = 0.0
    for seed in (11, 12, 13):
        audio = babble(1.6, seed)
        stream = engine.open_stream()
        stream.push_audio(audio)
        final = stream.finalize_sync(30)
        assert final.is_final
        reference = offline.encode(padded(engine, audio), 1)
        n_live = reference.shape[1] - tap.frames(stream.id, "final")
        live = tap.joined(stream.id)[:, :n_live]
        streamed = torch.cat([live, tap.joined(stream.id, "final")], dim=1)
        worst = max(worst, (streamed - reference).abs().max().item())
        if encoder == "fast":
            assert final.text == offline.decode(reference)
        stream.close()
    print(f"bf16 {encoder}: max |encoder - fp32 offline| = {worst:.4f}")
    assert worst < 0.15


def test_on_event_runs_on_scheduler_thread(make_engine):
    engine = make_engine(chunk_ms=160)
    threads = set()
    stream = engine.open_stream(on_event=lambda e: threads.add(threading.current_thread().name))
    stream.push_audio(babble(1.0, 12))
    stream.finalize_sync(30)
    wait_until(lambda: bool(threads), what="a partial")
    assert threads == {"asr-engine"}


def test_a_stream_behind_real_time_is_refused_not_queued_without_bound(make_engine):
    # An overloaded engine must not buffer audio forever (memory grows until the process is
    # killed); past max_backlog_s the push fails with a clear error and other work goes on.
    from services.asr.engine import EngineOverloadedError

    engine = make_engine(max_backlog_s=0.5)
    stream = engine.open_stream()
    second = babble(1.0, seed=7)[:16000]
    with engine._tick_lock:  # hold the scheduler: nothing is encoded meanwhile
        stream.push_audio(second[:4000])  # 0.25 s: within the bound
        with pytest.raises(EngineOverloadedError, match="behind real time"):
            stream.push_audio(second[4000:])  # would be 1 s behind
    assert engine.stats()["overloaded_pushes"] == 1
    # Once the engine catches up the same stream is served again.
    wait_until(lambda: stream._state.mel_pos > 0, what="the backlog to be encoded")
    stream.push_audio(second[4000:8000])
    final = stream.finalize_sync(timeout=30)
    assert final.is_final and final.audio_end_s > 0.4
    stream.close()


def test_a_slot_freed_while_a_tick_is_planned_is_not_reused_in_that_tick(make_engine, offline):
    """Stream A closes after its step was planned and before B takes a slot, in one tick.

    Handing A's slot to B at once would put two rows on one slot in that call (their caches
    written to the same row, B's state then A's or a mix). Slots are released between ticks.
    """
    engine = make_engine(chunk_ms=160)
    pool = engine._pool
    original = pool.acquire
    slots: list[int] = []
    audio_a, audio_b = babble(1.6, 61), babble(1.6, 62)

    def acquire() -> int:  # runs inside plan(): A's step is planned before B asks for a slot
        if len(slots) == 1:
            a.close()
        slots.append(original())
        return slots[-1]

    with engine._tick_lock, torch.inference_mode():
        a, b = engine.open_stream(), engine.open_stream()
        a.push_audio(audio_a)
        b.push_audio(audio_b)
        pool.acquire = acquire
        try:
            engine._tick_once()
        finally:
            pool.acquire = original
    assert len(slots) == 2 and slots[0] != slots[1]
    final = b.finalize_sync(timeout=30)
    assert final.text == offline.transcript(padded(engine, audio_b), 1)
