"""The CUDA-graph path of the live step, with the graph replaced by a FAKE (eager replay).

CUDA graphs cannot run here. What can be checked on CPU is everything around them: one set of
static inputs shared by every bucket, rows read from the slot pool by an index tensor and written
back in place, padded rows absorbed by the scratch slot, outputs sliced, calls above the top
bucket split, and no capture after warm-up. ``EagerReplayFake`` stands in for ``_CudaGraph``: it
runs the captured callable again on ``replay`` and copies the results into the tensors it
returned at capture, as a replayed graph rewrites its outputs. The real capture runs in
``scripts/gpu_check.sh``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from services.asr.engine.runner import FIRST, LATER, SECOND, ModelRunner
from services.asr.engine.slots import SlotPool

from .conftest import babble, live_steps_for, wait_steps


class EagerReplayFake:
    """FAKE of ``_CudaGraph`` for CPU: replay reruns ``run`` and rewrites the same outputs."""

    captures = 0

    @staticmethod
    def new_pool(device):
        return None  # eager replays allocate as they go

    def __init__(self, run, device, pool) -> None:
        self._run = run
        self.out = run()
        EagerReplayFake.captures += 1

    def replay(self) -> None:
        for static, new in zip(self.out, self._run(), strict=True):
            static.copy_(new)


def graphed_runner(engine, max_batch: int, max_streams: int):
    config = dataclasses.replace(engine.config, max_batch=max_batch)
    runner = ModelRunner(engine.model, config, torch.device("cpu"))
    # What a CUDA engine with cuda_graphs does, on CPU with the FAKE graph.
    runner.use_graphs = True
    runner.buckets = tuple(b for b in (1, 2, 4, 8) if b < max_batch) + (max_batch,)
    runner.graph_factory = EagerReplayFake
    pool = SlotPool(runner.cache_layout, runner.decoder_layout, max_slots=max_streams, scratch=True)
    return runner, pool


@pytest.fixture(autouse=True)
def _inference_mode():
    with torch.inference_mode():  # as on the engine's scheduler thread
        yield


def clone_store(store):
    return {name: t.clone() for name, t in store.items()}


@pytest.mark.parametrize("chunk_ms", [80, 160])
def test_graphed_steps_update_pool_rows_in_place_like_eager_steps(make_engine, chunk_ms):
    engine = make_engine(chunk_ms=chunk_ms, warmup=False)
    runner, pool = graphed_runner(engine, max_batch=4, max_streams=7)
    assert pool.scratch == 7 and pool.capacity == 7
    store = pool.encoder_state
    g = torch.Generator().manual_seed(0)
    for t in store.values():  # every row holds something, so a wrong row would show
        if t.dtype.is_floating_point:
            t.copy_(torch.randn(t.shape, generator=g))
    runner.bind_store(store, pool.scratch)
    EagerReplayFake.captures = 0
    runner.capture_graphs()
    kinds = [FIRST, SECOND, LATER] if runner.has_second else [FIRST, LATER]
    assert EagerReplayFake.captures == len(kinds) * len(runner.buckets)
    # Every bucket's mel input is a slice of one static buffer.
    first = runner._graphs[(FIRST, 4)].mel
    assert runner._graphs[(FIRST, 1)].mel.data_ptr() == first.data_ptr()

    reference = clone_store(store)
    n_first, n = runner.chunk_first, runner.chunk
    calls = [
        (FIRST, [0, 3, 5], n_first),  # bucket 4: one padded row
        *([(SECOND, [3, 5, 0], n)] if runner.has_second else []),
        (LATER, [5, 0], n),  # bucket 2
        (LATER, [3], n),  # bucket 1
        (LATER, [6, 5, 4, 3, 2, 1], n),  # above the top bucket: split into 4 + 2
    ]
    for kind, rows, frames in calls:
        mel = torch.randn(len(rows), runner.n_mels, frames, generator=g)
        idx = torch.tensor(rows)
        before = clone_store(store)
        got = runner.encode(kind, mel, store, idx)
        want_enc, want_len = runner._step(kind, mel, reference, idx, False)
        # The graphs keep every output (for finals); live calls get them cut to valid_out_len.
        assert got.encoded.shape == want_enc.shape
        torch.testing.assert_close(got.encoded, want_enc, atol=2e-5, rtol=1e-4)
        assert torch.equal(got.lengths, want_len)
        for name, dim in runner.cache_layout.batch_dims.items():
            for row in range(pool.capacity):
                now, ref = store[name].select(dim, row), reference[name].select(dim, row)
                torch.testing.assert_close(now, ref, atol=2e-5, rtol=1e-4, msg=f"{name} {row}")
                if row not in rows:  # rows outside the call are untouched
                    assert torch.equal(now, before[name].select(dim, row)), (name, row)
    # The padded rows stepped the scratch slot, nothing else.
    pos = store["pos"] if "pos" in store else None
    if pos is not None:
        assert int(pos[pool.scratch]) > 0


def test_no_graph_is_captured_after_warm_up(make_engine, caplog):
    engine = make_engine(chunk_ms=160, warmup=False)
    runner, pool = graphed_runner(engine, max_batch=4, max_streams=4)
    runner.bind_store(pool.encoder_state, pool.scratch)
    runner.capture_graphs()
    del runner._graphs[(LATER, 2)]
    EagerReplayFake.captures = 0
    mel = torch.zeros(2, runner.n_mels, runner.chunk)
    with caplog.at_level(logging.WARNING):
        out = runner.encode(LATER, mel, pool.encoder_state, torch.tensor([0, 1]))
        runner.encode(LATER, mel, pool.encoder_state, torch.tensor([2, 3]))
    assert EagerReplayFake.captures == 0 and out.encoded.shape[0] == 2
    assert sum("running it eagerly" in r.message for r in caplog.records) == 1
    # Finals (a private copy of the caches) never use the pool's graphs.
    private = pool.gather_encoder(torch.tensor([0, 1]))
    runner._graphs.clear()  # would fail loudly if consulted: the eager path is taken
    runner.encode(LATER, mel, private, None, keep_all=True)


def test_graph_pool_allocates_every_slot_and_never_grows(make_engine):
    engine = make_engine(chunk_ms=160, warmup=False)
    pool = SlotPool(
        engine._runner.cache_layout, engine._runner.decoder_layout, max_slots=3, scratch=True
    )
    store = pool.encoder_state
    slots = {pool.acquire() for _ in range(3)}
    assert slots == {0, 1, 2} and pool.scratch == 3
    with pytest.raises(RuntimeError):
        pool.acquire()
    assert pool.encoder_state is store  # the graphs' addresses stay valid


def padded(engine, audio: np.ndarray) -> np.ndarray:
    out = np.zeros(engine.padded_length(len(audio)), np.float32)
    out[: len(audio)] = audio
    return out


@pytest.mark.parametrize(("chunk_ms", "final_rows"), [(160, 4), (80, 4), (160, 1), (160, 0)])
def test_finals_inside_the_graphed_live_calls_equal_offline(
    make_engine, offline, monkeypatch, chunk_ms, final_rows
):
    """Finals join the live calls (graphed, FAKE replay) on pool rows of their own.

    Three streams keep speaking while two of them and a fresh one (no step yet) ask for finals
    in one tick; with ``final_rows=1`` one final shares the live calls and the others run in
    calls of their own; with 0 every final does (the reference path). Every final equals the
    offline transcript of its padded audio, and the live streams go on exactly.
    """
    monkeypatch.setattr(ModelRunner, "graph_factory", EagerReplayFake)
    engine = make_engine(
        chunk_ms=chunk_ms, cuda_graphs=True, max_streams=6, max_batch=8, final_rows=final_rows
    )
    runner, right = engine._runner, engine.config.right_context
    assert runner.use_graphs and runner._graphs and len(engine._final_rows) == final_rows
    final_rows_set = set(engine._final_rows.tolist())
    in_store = []  # calls on finals' pool rows: (kind, live rows joined, keep_all)
    original = runner.encode

    def encode(kind, new_mel, caches, rows=None, keep_all=False):
        if caches is engine._pool.encoder_state and rows is not None:
            taken = set(rows.tolist())
            if taken & final_rows_set:
                in_store.append((kind, bool(taken - final_rows_set), keep_all))
        return original(kind, new_mel, caches, rows, keep_all)

    runner.encode = encode
    audios = [babble(1.6, 21), babble(1.2, 22), babble(0.4, 23)]
    streams = [engine.open_stream() for _ in audios]
    hop = runner.features.hop
    # Two streams step live first; the third has no step when its final is asked for.
    for stream, audio in zip(streams[:2], audios[:2], strict=True):
        stream.push_audio(audio[: len(audio) // 2])
    for stream, audio in zip(streams[:2], audios[:2], strict=True):
        n = live_steps_for(engine, len(audio) // 2)
        wait_steps(engine, stream, n)
    # Enough for one more live step and a final of two sub-steps; the fresh final has two
    # too (a first and a later step), and its stream's live first step is ready.
    extra = (runner.chunk + 6) * hop
    fresh = (runner.chunk_first + runner.chunk // 2) * hop
    cut = [len(audios[0]) // 2 + extra, len(audios[1]) // 2 + extra, fresh]
    with engine._tick_lock:  # everything below lands in one tick's plan
        for stream, audio, n in zip(streams, audios, cut, strict=True):
            stream.push_audio(audio[len(audio) // 2 if n != fresh else 0 : n])
        futures = [s.request_final() for s in streams]
    finals = [f.result(30) for f in futures]
    assert all(final.is_final for final in finals)
    for i, (final, audio, n) in enumerate(zip(finals, audios, cut, strict=True)):
        assert final.text == offline.transcript(padded(engine, audio[:n]), right), f"stream {i}"
    if final_rows:
        assert any(joined for _, joined, _ in in_store), "finals should join the live calls"
        assert any(keep_all for _, _, keep_all in in_store), "last sub-steps in the graphs too"
    else:
        assert not in_store
    # The live streams were not disturbed by the finals: they go on to the offline text.
    for stream, audio in zip(streams[:2], audios[:2], strict=True):
        stream.push_audio(audio[len(audio) // 2 + extra :])
        final = stream.finalize_sync(30)
        assert final.text == offline.transcript(padded(engine, audio), right)
