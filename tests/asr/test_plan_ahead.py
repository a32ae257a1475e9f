"""Planning a tick's live steps while the device runs the tick before (``plan_ahead``).

On CPU nothing overlaps (the step runs on the same cores), but the planning is the same: the
rows planned ahead keep their gathered windows only while their stream stays where it was.
These tests put a caller's action between the plan ahead and the tick that uses it.
"""

from __future__ import annotations

import torch

from services.asr.engine.runner import FIRST

from .conftest import babble
from .test_concurrency import padded


def record_call_parts(runner) -> list[list[int]]:
    """Wrap ``runner.encode``: the rows of each window part of every call, in call order."""
    sizes: list[list[int]] = []
    original = runner.encode

    def encode(kind, new_mel, caches, rows=None, keep_all=False):
        parts = new_mel if isinstance(new_mel, list) else [new_mel]
        sizes.append([part.shape[0] for part in parts])
        return original(kind, new_mel, caches, rows, keep_all)

    runner.encode = encode
    return sizes


def test_a_row_planned_ahead_is_planned_again_when_its_stream_resets_meanwhile(
    make_engine, offline
):
    engine = make_engine(chunk_ms=160, plan_ahead=True)
    runner = engine._runner
    first, second, other = babble(1.0, 71), babble(1.0, 72), babble(1.0, 73)
    a, b = engine.open_stream(), engine.open_stream()
    original, arrived = runner.encode, []

    def encode(*args, **kwargs):
        if not arrived:  # while the tick's steps run, a's first audio arrives
            arrived.append(True)
            a.push_audio(first)
        return original(*args, **kwargs)

    runner.encode = encode
    with engine._tick_lock, torch.inference_mode():
        b.push_audio(other[: runner.features.samples_needed(runner.chunk_first)])
        assert engine._tick_once() == 1  # b's first step; a's is planned ahead
        assert a._state.row in engine._ahead.parts[FIRST][0].group.rows
        # The caller drops a's utterance before that plan is used: same row, same position
        # (a first step), but a new utterance whose audio starts elsewhere in the ring.
        a.reset()
        a.push_audio(second)
        while engine._tick_once():
            pass
    final = a.finalize_sync(30)
    assert final.text == offline.transcript(padded(engine, second), 1)
    assert final.audio_end_s == len(second) / 16000


def test_rows_planned_ahead_are_used_and_late_rows_join_them(make_engine, offline):
    """A stream ready only after the plan ahead steps in the same call as the rows planned."""
    engine = make_engine(chunk_ms=160, plan_ahead=True, max_streams=3)
    runner = engine._runner
    audios = [babble(1.2, 80 + i) for i in range(3)]
    streams = [engine.open_stream() for _ in audios]
    step = runner.chunk * runner.features.hop
    first = runner.features.samples_needed(runner.chunk_first)
    sizes = record_call_parts(runner)
    with engine._tick_lock, torch.inference_mode():
        for s, audio in zip(streams, audios, strict=True):
            s.push_audio(audio[:first])
        assert engine._tick_once() == 3  # three first steps
        for s, audio in zip(streams[:2], audios[:2], strict=True):
            s.push_audio(audio[first : first + step])
        # Planned ahead now (after the tick, as the device would still run it): two streams.
        engine._ahead = engine._scheduler.plan_ahead(engine._table, engine._pool.acquire, 1)
        streams[2].push_audio(audios[2][first : first + step])  # ready after the plan ahead
        sizes.clear()
        assert engine._tick_once() == 3
        # One later step for all three: the two windows gathered ahead, then the late one.
        assert sizes == [[2, 1]]
        for s, audio in zip(streams, audios, strict=True):
            s.push_audio(audio[first + step :])
        while engine._tick_once():
            pass
    for s, audio in zip(streams, audios, strict=True):
        assert s.finalize_sync(30).text == offline.transcript(padded(engine, audio), 1)


def test_rows_ready_while_the_device_runs_are_gathered_as_more_parts(make_engine, offline):
    """The plan ahead keeps looking until the device is done; each look adds the new rows.

    The device's "done" check is a FAKE (CPU steps are done when they return): it reports the
    device busy twice, and a stream's next chunk arrives at each of those looks.
    """
    engine = make_engine(chunk_ms=160, plan_ahead=True, max_streams=3)
    runner = engine._runner
    audios = [babble(1.2, 90 + i) for i in range(3)]
    streams = [engine.open_stream() for _ in audios]
    step = runner.chunk * runner.features.hop
    first = runner.features.samples_needed(runner.chunk_first)
    arrivals = [1, 2]  # streams whose chunk arrives while the device is "busy"

    def device_done():
        def done() -> bool:
            if not arrivals:
                return True
            i = arrivals.pop(0)
            streams[i].push_audio(audios[i][first : first + step])
            return False

        return done

    sizes = record_call_parts(runner)
    with engine._tick_lock, torch.inference_mode():
        for s, audio in zip(streams, audios, strict=True):
            s.push_audio(audio[:first])
        assert engine._tick_once() == 3  # three first steps
        streams[0].push_audio(audios[0][first : first + step])
        runner.device_done = device_done
        assert engine._tick_once() == 1  # stream 0's step; 1 and 2 arrive while it runs
        assert not arrivals
        parts = engine._ahead.parts["later"]
        assert [p.group.rows.tolist() for p in parts] == [
            [streams[1]._state.row],
            [streams[2]._state.row],
        ]
        sizes.clear()
        assert engine._tick_once() == 2
        assert sizes == [[1, 1]]  # one call, both parts gathered ahead
        pushed = [first + step] * 3
        for s, audio, n in zip(streams, audios, pushed, strict=True):
            s.push_audio(audio[n:])
        while engine._tick_once():
            pass
    for s, audio in zip(streams, audios, strict=True):
        assert s.finalize_sync(30).text == offline.transcript(padded(engine, audio), 1)
