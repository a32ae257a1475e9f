"""ASREngine: one batched cache-aware streaming ASR per (model, device), shared by all sessions.

Callers (any thread, or asyncio) open streams and push audio; what they call only appends to the
stream's inbox under a per-stream lock held for a few list operations, so it never waits for
model work or for the scheduler. A scheduler thread runs ticks: plan (apply inboxes, pick work)
-> execute on the model -> commit results -> deliver events. A tick runs one encoder call per
step shape (first steps, later steps, finals) and one greedy decode for all of them.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import itertools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import EngineConfig
from .events import (
    SAMPLE_RATE,
    EngineFullError,
    EngineOverloadedError,
    StreamClosedError,
    TranscriptEvent,
    to_float32,
)
from .loader import configure_for_streaming, load_asr_model
from .runner import FIRST, LATER, SECOND, ModelRunner
from .scheduler import FinalWork, LiveGroup, Scheduler, TickPlan
from .slots import SlotPool
from .state import FinalRequest, ResetRequest, StreamState, TextState
from .table import StreamTable
from .words import WordTimer

logger = logging.getLogger(__name__)


class ASRStream:
    """A handle to one audio stream of an engine. All methods are thread-safe."""

    def __init__(
        self,
        engine: ASREngine,
        state: StreamState,
        on_event: Callable[[TranscriptEvent], None] | None,
    ) -> None:
        self._engine = engine
        self._state = state
        self._on_event = on_event
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []

    @property
    def id(self) -> str:
        return self._state.id

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def utterance(self) -> int:
        """Index of the current utterance (0 at open, +1 per ``reset``)."""
        return self._state.utterance

    def push_audio(self, pcm: bytes | np.ndarray) -> None:
        """Append 16 kHz mono audio (int16 LE bytes, or a 1-D float32/int16 array).

        Never waits for model work. Raises ValueError for malformed audio and StreamClosedError
        after ``close``.
        """
        self._engine._push(self, to_float32(pcm))

    async def events(self) -> AsyncIterator[TranscriptEvent]:
        """Partial transcripts (``is_final=False``) whenever the utterance text changes.

        Events are delivered onto the event loop that iterates; iteration ends when the stream
        closes. Finals are not sent here: they are what ``finalize`` returns.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TranscriptEvent | None] = asyncio.Queue()
        if not self._engine._subscribe(self, loop, queue):
            return
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._engine._unsubscribe(self, loop, queue)

    async def finalize(self) -> TranscriptEvent:
        """Speculative final of the utterance so far, without disturbing the live stream.

        The audio pushed up to this call is padded with silence to the chunk grid and decoded
        to the end on a copy of the stream state. If speech resumes, keep pushing audio and
        ignore the result; if the turn ends, call ``reset``.
        """
        return await asyncio.wrap_future(self.request_final())

    def finalize_sync(self, timeout: float | None = None) -> TranscriptEvent:
        """Blocking ``finalize`` for threads (never call it on an event loop)."""
        return self.request_final().result(timeout)

    def request_final(self) -> concurrent.futures.Future:
        """``finalize`` for callers without an event loop: a future of the final event."""
        return self._engine._request_final(self)

    def reset(self) -> None:
        """Accept the utterance: the next one starts fresh (empty text, clock at 0).

        Audio pushed before the call is dropped; a final requested before it is still
        computed (on the old utterance) and returned; partials of the old utterance that were
        still in flight are dropped.
        """
        self._engine._reset(self)

    def close(self) -> None:
        """Free the stream's slot now; pending finals fail; ``events()`` ends. Idempotent."""
        self._engine._close(self)

    def _deliver(self, event: TranscriptEvent, subscribers: list) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event callback of stream %s failed", self.id)
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop is closed: that consumer is gone
                pass

    def __repr__(self) -> str:
        return f"ASRStream(id={self.id!r}, closed={self.closed})"


class ASREngine:
    """Batched cache-aware streaming ASR shared by every stream of a process.

    ``on_event`` callbacks run on the scheduler thread: keep them short and never block in them.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, config: EngineConfig | None = None, *, model=None) -> None:
        """Load the model (unless ``model`` is given, already loaded) and start the scheduler.

        Args:
            config: engine settings; defaults to ``EngineConfig()``.
            model: an already loaded NeMo RNNT model to use instead of loading ``config.model``
                (benchmarks share one model between runs). It is reconfigured for streaming.
        """
        self.config = config or EngineConfig()
        self.device = torch.device(self.config.resolved_device())
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"EngineConfig.device={self.config.device!r} but CUDA is unavailable")
        if model is None:
            model = load_asr_model(self.config, str(self.device))
        else:
            configure_for_streaming(model, self.config)
            model = model.to(self.device)
        self.model = model
        with torch.inference_mode(), _on_device(self.device):
            self._runner = ModelRunner(model, self.config, self.device)
            if self._runner.features.sample_rate != SAMPLE_RATE:
                raise ValueError(f"model expects {self._runner.features.sample_rate} Hz audio")
            graphs = self._runner.use_graphs
            n_final = self.config.resolved_final_rows(self.device.type)
            self._pool = SlotPool(
                self._runner.cache_layout,
                self._runner.decoder_layout,
                max_slots=self.config.max_streams + n_final,
                scratch=graphs,  # graphs step pool rows in place: allocate them all now
            )
            # Rows where finals step copies of their streams' states inside the live calls.
            self._final_rows = np.array([self._pool.acquire() for _ in range(n_final)], np.int64)
            if graphs:
                self._runner.bind_store(self._pool.encoder_state, self._pool.scratch)
            if self.config.warmup:
                self._runner.warmup(self.config.max_batch)
        if self.config.freeze_gc:
            gc.collect()
            gc.freeze()
        self._scheduler = Scheduler(
            self._runner.features,
            self._runner.chunk_first,
            self._runner.chunk,
            self.config.max_batch,
            pre_cache=self._runner.pre_cache if self._runner.has_second else 0,
        )
        self._detok = model.decoding.decode_tokens_to_str_with_strip_punctuation
        self._words = WordTimer(model)
        features = self._runner.features
        self._first_need = features.samples_needed(self._runner.chunk_first)
        self._hop = features.hop
        self._max_backlog_samples = int(self.config.max_backlog_s * SAMPLE_RATE)
        # Each stream's ring holds its longest backlog and the window reaching back from it.
        mirror = features.window_length(max(self._runner.chunk_first, self._runner.chunk))
        # Rows of closed streams come back between ticks; the spare rows let callers open
        # streams in their place meanwhile (the newest freed rows are reused first, so the
        # spares cost memory only under that churn).
        rows = self.config.max_streams + self.config.max_streams // 2 + 8
        self._table = StreamTable(
            rows,
            ring_samples=self._max_backlog_samples + mirror + features.lookback,
            mirror=mirror,
            first_need=self._first_need,
            pin_memory=self.device.type == "cuda",
        )
        self._by_row: list[ASRStream | None] = [None] * rows
        # Streams with queued finalize/reset calls, and those holding deferred finals.
        self._controls: collections.deque[StreamState] = collections.deque()
        self._deferring: set[StreamState] = set()
        self._overloaded_pushes = 0
        # Guards the stream registry and the counters only; never held during model work.
        self._lock = threading.Lock()
        self._rows_freed = threading.Condition(self._lock)  # the scheduler gave rows back
        self._wake = threading.Event()
        self._urgent = threading.Event()  # a final is queued: skip the batch window
        self._tick_lock = threading.Lock()  # held by the scheduler thread during a tick
        self._streams: dict[str, ASRStream] = {}
        self._released: collections.deque[int] = collections.deque()  # rows of closed streams
        self._ids = itertools.count()
        self._tick = 0
        self._encoder_calls = 0
        self._tick_ms: collections.deque[float] = collections.deque(maxlen=2048)
        self._batch_sizes: collections.deque[int] = collections.deque(maxlen=256)
        # Chunk latency: a step's audio complete (pushed) -> its result committed.
        self._chunk_ms: collections.deque[float] = collections.deque(maxlen=4096)
        self._stopping = False
        # Live steps of the next tick planned while the device runs this one (plan_ahead).
        self._plan_ahead = self.config.plan_ahead
        self._ahead = None
        self._ahead_parity = 0
        # Test/benchmark hook: called on the scheduler thread as
        # tap(stream_id, "live" | "final", encoded [d_model, T] tensor) for every encoder output.
        self._encoder_tap: Callable[[str, str, torch.Tensor], None] | None = None
        self._thread = threading.Thread(target=self._loop, name="asr-engine", daemon=True)
        self._thread.start()
        logger.info(
            "ASR engine started: %s on %s (%s, %s encoder), chunk %d ms (%d+%d mel frames/step)",
            self.config.model,
            self.device,
            self.config.dtype,
            self._runner.encoder.name,
            self.config.chunk_ms,
            self._runner.chunk_first,
            self._runner.chunk,
        )

    # ---------------- public API ----------------

    @property
    def chunk_ms(self) -> int:
        return self.config.chunk_ms

    @property
    def is_shutdown(self) -> bool:
        return self._stopping

    def open_stream(self, on_event: Callable[[TranscriptEvent], None] | None = None) -> ASRStream:
        """Open a stream (thread-safe).

        Args:
            on_event: called with each partial ``TranscriptEvent``, on the scheduler thread.

        Raises:
            EngineFullError: ``max_streams`` streams are already open.
            StreamClosedError: the engine was shut down.
        """
        with self._lock:
            if self._stopping:
                raise StreamClosedError("the ASR engine is shut down")
            if len(self._streams) >= self.config.max_streams:
                raise EngineFullError(
                    f"{len(self._streams)} streams open: max_streams={self.config.max_streams}"
                )
            if not self._table.free_rows and self._released:
                # Closed streams' rows come back at the next tick (only a burst of opens and
                # closes faster than ticks gets here): wake the scheduler and wait for it.
                self._wake.set()
                self._rows_freed.wait_for(lambda: self._table.free_rows, timeout=2.0)
            if not self._table.free_rows:
                raise EngineFullError(
                    f"all {self._table.capacity} stream rows are taken by open streams and "
                    "streams closed since the last tick"
                )
            stream_id = f"{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            row = self._table.take_row()
            text = TextState(self._detok, self.config.max_utterance_chars)
            state = StreamState(stream_id, text, self._table, row)
            handle = ASRStream(self, state, on_event)
            self._streams[stream_id] = handle
            self._by_row[row] = handle
            return handle

    def padded_length(self, n_samples: int) -> int:
        """Samples of the silence-padded utterance a final over ``n_samples`` samples decodes.

        ``finalize`` returns the offline transcript of the audio padded with zeros to this length.
        """
        return self._scheduler.padded_length(n_samples)

    def stats(self) -> dict:
        """Counters for monitoring: streams, slots, batch sizes, step latency percentiles."""
        with self._lock:
            live = len(self._streams)
            states = [h._state for h in self._streams.values()]
            ticks = list(self._tick_ms)
            chunks = list(self._chunk_ms)
            batches = list(self._batch_sizes)
            steps = self._tick
            calls = self._encoder_calls
        pending = 0
        for state in states:
            with state.lock:
                pending += sum(isinstance(item, FinalRequest) for item in state.inbox)
                pending += len(state.deferred)

        def pcts(values: list[float]) -> dict[str, float | None]:
            ordered = sorted(values)

            def pct(q: float) -> float | None:
                if not ordered:
                    return None
                return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

            return {"p50": pct(50), "p95": pct(95), "p99": pct(99)}

        return {
            "live_streams": live,
            # Slots of closed streams wait for the next tick to be freed: they are not in use.
            "slots_in_use": self._pool.in_use
            - len(self._final_rows)
            - sum(int(self._table.slot[row]) >= 0 for row in list(self._released)),
            "slot_capacity": self._pool.capacity - len(self._final_rows),
            "slot_pool_bytes": self._pool.nbytes(),
            "pending_finals": pending,
            "overloaded_pushes": self._overloaded_pushes,
            "steps_run": steps,
            "encoder_calls": calls,
            "recent_batch_sizes": batches[-32:],
            "step_latency_ms": pcts(ticks),
            "chunk_latency_ms": pcts(chunks),
            "device": str(self.device),
            "dtype": self.config.dtype,
            "chunk_ms": self.config.chunk_ms,
        }

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the scheduler thread and close every stream. Idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            handles = list(self._streams.values())
        self._urgent.set()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        for handle in handles:
            handle.close()
        _forget_engine(self)
        logger.info("ASR engine shut down")

    # ---------------- called by ASRStream ----------------

    def _push(self, handle: ASRStream, samples: np.ndarray) -> None:
        state, table = handle._state, self._table
        row = state.row
        now = time.perf_counter()
        with state.lock:
            if state.closed:
                raise StreamClosedError(f"stream {state.id} is closed")
            if not samples.size:
                return
            # Audio not yet encoded, from the live position on (written by the scheduler
            # thread; a stale read only delays the check). The ring holds this much and the
            # window before it, so the check also keeps the ring from overwriting audio a
            # step or a final still needs.
            written = table.written.item(row)
            base = table.base.item(row)
            backlog = written - base - table.mel_pos.item(row) * self._hop
            if backlog + samples.size > self._max_backlog_samples:
                self._overloaded_pushes += 1
                raise EngineOverloadedError(
                    f"stream {state.id} is {backlog / SAMPLE_RATE:.1f} s behind real time "
                    f"(max_backlog_s={self.config.max_backlog_s}): the engine is overloaded; "
                    "send fewer streams to this engine or give it a faster device"
                )
            table.write(row, samples, now)
            wake = written + samples.size - base >= table.next_needed.item(row)
        if wake and not self._wake.is_set():  # set() takes a lock: skip it when it is set
            self._wake.set()

    def _request_final(self, handle: ASRStream) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        state = handle._state
        with state.lock:
            if state.closed:
                future.set_exception(StreamClosedError(f"stream {state.id} is closed"))
                return future
            pos = int(self._table.written[state.row])
            state.inbox.append(FinalRequest(time.perf_counter(), future, pos=pos))
        self._controls.append(state)
        self._urgent.set()
        self._wake.set()
        return future

    def _reset(self, handle: ASRStream) -> None:
        state, table = handle._state, self._table
        with state.lock:
            if state.closed:
                raise StreamClosedError(f"stream {state.id} is closed")
            # A final queued before this is planned on the old utterance when the scheduler
            # applies the inbox, before this marker: it still gets its result.
            state.inbox.append(ResetRequest(int(table.written[state.row])))
            state.utterance += 1
            table.generation[state.row] += 1
        self._controls.append(state)
        self._wake.set()

    def _close(self, handle: ASRStream) -> None:
        state = handle._state
        with state.lock:
            if state.closed:
                return
            state.closed = True
            self._table.open[state.row] = False
            pending = [item for item in state.inbox if isinstance(item, FinalRequest)]
            pending += state.deferred
            state.inbox, state.deferred = [], []
            subscribers, handle._subscribers = handle._subscribers, []
        # The row (and its slot) is freed by the scheduler thread between ticks: a tick being
        # planned or run may still hold it, and handing it to a new stream in the same tick
        # would give one call two rows writing the same slot.
        self._released.append(state.row)
        self._wake.set()
        with self._lock:
            self._streams.pop(state.id, None)
        for request in pending:
            _fail(request.future, StreamClosedError(f"stream {state.id} closed before its final"))
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except RuntimeError:
                pass

    def _subscribe(self, handle: ASRStream, loop, queue) -> bool:
        with handle._state.lock:
            if handle._state.closed:
                return False
            handle._subscribers.append((loop, queue))
            return True

    def _unsubscribe(self, handle: ASRStream, loop, queue) -> None:
        with handle._state.lock:
            if (loop, queue) in handle._subscribers:
                handle._subscribers.remove((loop, queue))

    # ---------------- scheduler thread ----------------

    def _loop(self) -> None:
        window = self.config.resolved_batch_window_s(self.device.type)
        with torch.inference_mode(), _on_device(self.device):
            busy = False
            last_start = 0.0
            while not self._stopping:
                if not busy:
                    self._wake.wait(0.05)
                # Let more streams complete their chunks before the next step (see
                # EngineConfig.batch_window_ms); a finalize cuts the wait short.
                pause = last_start + window - time.perf_counter()
                if pause > 0:
                    self._urgent.wait(pause)
                if self._stopping:
                    break
                last_start = time.perf_counter()
                self._urgent.clear()
                with self._tick_lock:
                    try:
                        busy = self._tick_once() > 0
                    except Exception:
                        logger.exception("ASR engine tick failed")
                        busy = False
                        time.sleep(0.05)  # do not spin if every tick fails

    def _tick_once(self) -> int:
        """Plan, run, commit and deliver one tick; returns the rows it ran (0: nothing to do).

        Runs on the scheduler thread. Benchmarks call it directly while holding ``_tick_lock``
        (which keeps the scheduler thread out), inside ``torch.inference_mode()``.
        """
        self._wake.clear()
        table = self._table
        while self._released:
            row = self._released.popleft()
            slot = int(table.slot[row])
            if slot >= 0:
                self._pool.release(slot)
            with self._lock:
                self._by_row[row] = None
                table.give_back(row)
                self._rows_freed.notify_all()
        controls: dict[int, StreamState] = {}  # each stream once, in first-call order
        while self._controls:
            state = self._controls.popleft()
            controls.setdefault(id(state), state)
        ahead, self._ahead = self._ahead, None
        plan = self._scheduler.plan(
            table, controls.values(), self._deferring, self._tick, self._pool.acquire, ahead
        )
        if plan.empty:
            return 0
        started = time.perf_counter()
        try:
            live, final = self._execute(plan)
        except Exception as exc:
            # Fail what was asked for in this tick; the other streams keep being served.
            for work in plan.finals:
                _fail(work.request.future, exc)
            raise
        finals, events = self._commit(plan, live, final)
        for future, event in finals:
            if not future.done():
                try:
                    future.set_result(event)
                except concurrent.futures.InvalidStateError:
                    pass  # cancelled by the caller meanwhile
        for handle, event, subscribers in events:
            handle._deliver(event, subscribers)
        elapsed_ms = (time.perf_counter() - started) * 1000
        rows = plan.live_rows + len(plan.finals)
        with self._lock:
            self._tick += 1
            self._tick_ms.append(elapsed_ms)
            self._batch_sizes.append(rows)
        return rows

    def _index(self, values: np.ndarray) -> torch.Tensor:
        """Row indices on the device without a host sync (a pinned, non-blocking copy).

        A blocking host-to-device copy waits for every kernel queued before it; through pinned
        memory the copy is queued like a kernel (PyTorch keeps the pinned block until it ran).
        """
        host = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def _execute(self, plan: TickPlan) -> tuple[Decoded, Decoded]:
        """Run a tick's encoder calls and its one decode.

        Calls run in waves of step kinds (first, second, later). Wave 0 holds the live steps;
        up to ``final_rows`` finals join them: each is stepped on a copy of its stream's state
        in a pool row of its own, one sub-step per call of that kind, in the first call after
        its previous sub-step, so a final of one or two sub-steps adds rows to the live calls
        and no call of its own. Finals beyond that run in calls of their own on private copies
        (``_private_finals``, the reference path, also ``final_rows=0``).

        Returns the tokens of the live rows (in the order of ``plan.live``) and of the finals
        (in the order of ``plan.finals``), frames counted from the first encoder frame of that
        row's work in this tick.
        """
        runner, pool, features = self._runner, self._pool, self._runner.features
        store = pool.encoder_state
        n_shared = min(len(plan.finals), len(self._final_rows))
        groups = _place_finals(plan.finals[:n_shared])

        # The tick's row indices, one copy to the device: every live slot (decoder state),
        # then each call's rows where finals join it, then the finals' pool rows and sources.
        calls: dict[int, _Call] = {}
        for k, group in enumerate(plan.live):  # wave 0
            calls[_KINDS.index(group.kind)] = _Call(group.kind, live=group, live_at=k)
        next_row = 0
        for group in groups:
            group.pool_rows = self._final_rows[next_row : next_row + len(group.members)]
            next_row += len(group.members)
            for j, at in enumerate(group.calls):
                call = calls.setdefault(at, _Call(_KINDS[at % len(_KINDS)]))
                call.finals.append((group, j))
        parts: list[np.ndarray] = [group.slots for group in plan.live]
        n_live = plan.live_rows
        cursor = n_live
        for at in sorted(calls):
            call = calls[at]
            if not call.finals:
                continue
            if call.live is not None:
                parts.append(call.live.slots)
            parts += [group.pool_rows for group, _ in call.finals]
            call.span = (cursor, cursor + call.rows)
            cursor += call.rows
        for group in groups:
            group.span = (cursor, cursor + len(group.members))
            parts += [group.pool_rows, group.sources(plan.finals)]
            cursor += 2 * len(group.members)
        index = self._index(np.concatenate(parts)) if parts else None
        live_index, offset = [], 0
        for group in plan.live:
            live_index.append(index[offset : offset + len(group)])
            offset += len(group)

        # 1. Finals first: they copy the live state before this tick's live steps advance it.
        private_order, enc_parts, len_parts, state_parts, n_calls = self._private_finals(
            plan.finals[n_shared:], n_shared
        )
        for group in groups:
            lo, hi = group.span
            rows, sources = index[lo:hi], index[hi : hi + (hi - lo)]
            works = [plan.finals[i] for i in group.members]
            if group.fresh:
                group.dec_state = pool.start_decoder(len(works))
            else:
                pool.copy_encoder(sources, rows)
                group.dec_state = pool.gather_decoder(sources)
            total = sum(n for _, n in group.substeps)
            group.mel = features.compute(np.stack([w.window for w in works]), total)
        for group, rows in zip(plan.live, live_index, strict=True):
            if group.kind == FIRST:
                pool.reset_decoder(rows)

        # 2. The calls, in order; the pool rows advance in place.
        remaining = collections.Counter(call.kind for call in calls.values())
        live_out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for at in sorted(calls):
            call = calls[at]
            remaining[call.kind] -= 1
            mel_parts = []
            if call.live is not None:
                n = call.live.n_frames
                mel_parts += [features.compute(part, n) for part in call.live.windows]
            keep_all = False
            for group, j in call.finals:
                start = sum(n for _, n in group.substeps[:j])
                mel_parts.append(group.mel[:, :, start : start + group.substeps[j][1]])
                keep_all |= j == len(group.substeps) - 1
            if call.span is not None:
                rows = index[call.span[0] : call.span[1]]
            else:
                rows = live_index[call.live_at]
            mel = mel_parts[0] if len(mel_parts) == 1 else mel_parts
            res = runner.encode(call.kind, mel, store, rows, keep_all=keep_all)
            n_calls += 1
            # A graph's outputs are rewritten by its next replay: keep copies if one follows.
            keep = (lambda t: t.clone()) if remaining[call.kind] and runner.use_graphs else None
            first = 0
            if call.live is not None:
                first = len(call.live)
                enc, lens = res.encoded[:first], res.lengths[:first]
                if keep_all:
                    enc, lens = self._cut(call.kind, enc, lens, False)
                live_out[id(call.live)] = (keep(enc), keep(lens)) if keep else (enc, lens)
            for group, j in call.finals:
                size = len(group.members)
                last = j == len(group.substeps) - 1
                enc, lens = res.encoded[first : first + size], res.lengths[first : first + size]
                enc, lens = self._cut(call.kind, enc, lens, last)
                group.outs.append((keep(enc), keep(lens)) if keep else (enc, lens))
                first += size

        # The positions advance now (the steps are queued, whatever their results), so the next
        # tick's live steps can be planned while the device runs this one.
        self._advance(plan)
        if self._plan_ahead:
            self._plan_next(runner.device_done())

        # 3. One greedy decode for every row: live rows, then shared finals, then private ones.
        live_enc = [live_out[id(group)] for group in plan.live]
        if self._encoder_tap is not None:
            for group, (enc, lens) in zip(plan.live, live_enc, strict=True):
                for i, row in enumerate(group.rows.tolist()):
                    handle = self._by_row[row]
                    if handle is not None:
                        self._encoder_tap(handle.id, "live", enc[i, :, : int(lens[i])])
        final_order: list[int] = []
        final_enc, final_len, final_state = [], [], []
        for group in groups:
            enc = torch.cat([e for e, _ in group.outs], dim=2)
            lens = group.outs[0][1]
            for _, more in group.outs[1:]:
                lens = lens + more
            final_order += group.members
            final_enc.append(enc)
            final_len.append(lens)
            final_state.append(group.dec_state)
            self._tap_finals([plan.finals[i] for i in group.members], enc, lens)
        final_order += private_order
        enc_parts = [e for e, _ in live_enc] + final_enc + enc_parts
        len_parts = [n for _, n in live_enc] + final_len + len_parts
        live_state = []
        if n_live:
            all_live = index[:n_live]
            live_state.append(pool.gather_decoder(all_live))
        state_parts = live_state + final_state + state_parts
        width = max(e.shape[2] for e in enc_parts)
        encoded = torch.cat([F.pad(e, (0, width - e.shape[2])) for e in enc_parts], dim=0)
        lengths = torch.cat(len_parts)
        dims = runner.decoder_layout.batch_dims
        state = [torch.cat([p[k] for p in state_parts], dim=d) for k, d in enumerate(dims)]
        counts, ids, frames, new_state = runner.decode(encoded, lengths, state)
        if n_live:
            pool.scatter_decoder(
                all_live, [t.narrow(d, 0, n_live) for t, d in zip(new_state, dims, strict=True)]
            )
        with self._lock:
            self._encoder_calls += n_calls
        live = Decoded(counts[:n_live], ids[:n_live], frames[:n_live])
        order = np.empty(len(final_order), np.int64)
        order[np.asarray(final_order, np.int64)] = np.arange(len(final_order)) + n_live
        return live, Decoded(counts[order], ids[order], frames[order])

    def _cut(
        self, kind: str, enc: torch.Tensor, lens: torch.Tensor, keep_all: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A call's outputs ``[B, D, T]`` cut to a ``kind`` step's width (``keep_all`` or not).

        Every row of a call has as many frames as the output is wide, so the width is a number
        the runner knows; reading the lengths back (a host sync) is only the fallback.
        """
        width = self._runner.width(kind, keep_all)
        if width is None:
            width = int(lens.max())
        if not keep_all:
            lens = lens.clamp(max=self._runner.out_per_step)
        return enc[:, :, :width], lens

    def _private_finals(self, works: list[FinalWork], first: int):
        """Finals in calls of their own, each group of equal sub-steps on a private state copy.

        Returns the finals' indices (``first`` + position in ``works``), their encoder outputs,
        lengths and decoder states (one entry per group), and the number of encoder calls.
        """
        runner, pool, features = self._runner, self._pool, self._runner.features
        groups: dict[tuple, list[int]] = {}
        for i, work in enumerate(works):
            groups.setdefault((work.slot is None, tuple(work.substeps)), []).append(i)
        order: list[int] = []
        encs, lens_out, states = [], [], []
        calls = 0
        for (fresh, substeps), members in groups.items():
            batch = [works[i] for i in members]
            total = batch[0].end - batch[0].start
            mel = features.compute(np.stack([w.window for w in batch]), total)
            if fresh:
                caches = pool.initial_encoder(len(batch))
                dec_state = pool.start_decoder(len(batch))
            else:
                idx = self._index(np.array([w.slot for w in batch], np.int64))
                caches = pool.gather_encoder(idx)
                dec_state = pool.gather_decoder(idx)
            outs, lens, pos = [], None, 0
            for j, (kind, n) in enumerate(substeps):
                last = j == len(substeps) - 1
                res = runner.encode(kind, mel[:, :, pos : pos + n], caches, keep_all=last)
                calls += 1
                pos += n
                enc, step_lens = self._cut(kind, res.encoded, res.lengths, last)
                outs.append(enc)
                lens = step_lens if lens is None else lens + step_lens
            enc = torch.cat(outs, dim=2)
            self._tap_finals(batch, enc, lens)
            order += [first + i for i in members]
            encs.append(enc)
            lens_out.append(lens)
            states.append(dec_state)
        return order, encs, lens_out, states, calls

    def _tap_finals(self, works: list[FinalWork], enc: torch.Tensor, lens: torch.Tensor) -> None:
        if self._encoder_tap is not None:
            for row, work in enumerate(works):
                self._encoder_tap(work.stream.id, "final", enc[row, :, : int(lens[row])])

    def _plan_next(self, device_done: Callable[[], bool]) -> None:
        """Plan the next tick's live steps until the device has run this tick's encoder calls.

        Rows become ready while the device runs (callers push audio meanwhile): each look
        gathers the new ones as one more part, up to ``_AHEAD_PARTS`` parts; the scheduler
        thread sleeps between looks so the callers' threads get the interpreter.
        """
        self._ahead_parity ^= 1
        scheduler, table, acquire = self._scheduler, self._table, self._pool.acquire
        ahead = scheduler.plan_ahead(table, acquire, self._ahead_parity)
        while ahead.n_parts < _AHEAD_PARTS and not device_done():
            time.sleep(_AHEAD_LOOK_S)
            ahead = scheduler.plan_ahead(table, acquire, self._ahead_parity, ahead)
        self._ahead = ahead

    def _advance(self, plan: TickPlan) -> None:
        """Move the live rows' positions past this tick's steps (scheduler thread).

        The steps advanced the model state in the slots whatever the caller did since: the
        scheduler-side position must follow it even after a reset() (applied at the next
        plan), or a final queued before that reset would be planned from the old position on
        caches one step ahead. Closed rows are cleared before reuse.
        """
        table, chunk = self._table, self._runner.chunk
        samples_needed = self._runner.features.samples_needed
        for group in plan.live:
            rows = group.rows
            new_pos = group.start + group.n_frames
            table.mel_pos[rows] = new_pos
            table.last_served[rows] = plan.tick
            table.next_needed[rows] = samples_needed(new_pos + chunk)

    def _commit(self, plan: TickPlan, live: Decoded, final: Decoded):
        """Apply a tick's results to the streams; return what to deliver (scheduler thread).

        Positions, clocks and readiness of every live row are array updates; only rows with
        new tokens (text, word times, a partial) and finals get Python work.
        """
        now = time.perf_counter()
        table, hop = self._table, self._hop
        finals = []
        events = []
        chunk_ms: list[np.ndarray] = []
        out_per_step = self._runner.out_per_step
        for i, work in enumerate(plan.finals):
            ids, frames = final.tokens(i)
            request = work.request
            if work.stream.closed:
                _fail(request.future, StreamClosedError(f"stream {work.stream.id} is closed"))
                continue
            base = self._scheduler.encoder_frames_before(work.start, out_per_step)
            times = work.tokens
            times.extend(ids, [base + f for f in frames])
            event = TranscriptEvent(
                stream_id=work.stream.id,
                text=work.text.preview(ids),
                is_final=True,
                audio_start_s=0.0,
                audio_end_s=request.n_samples / SAMPLE_RATE,
                latency_s=now - request.requested_at,
                utterance=request.utterance,
                words=self._words.words(times.ids, times.frames),
            )
            finals.append((request.future, event))
        offset = 0
        for group in plan.live:
            rows = group.rows
            new_pos = group.start + group.n_frames  # positions moved in _advance
            # A reset meanwhile: no partial or latency for an utterance the caller ended.
            current = table.open[rows] & (table.generation[rows] == group.generation)
            arrived = table.arrival_times(rows, group.audio_needed)
            seen = current & ~np.isnan(arrived)
            chunk_ms.append((now - arrived[seen]) * 1000)
            counts = live.counts[offset : offset + len(rows)]
            for i in np.flatnonzero(counts).tolist():  # rows with new tokens only
                ids, frames = live.tokens(offset + i)
                handle = self._by_row[int(rows[i])]
                if handle is None:
                    continue
                state = handle._state
                if state.closed:
                    continue
                changed = state.text.extend(ids)
                start = int(group.start[i])
                base = self._scheduler.encoder_frames_before(start, out_per_step)
                state.tokens.extend(ids, [base + f for f in frames])
                if not changed or not current[i]:
                    continue
                with state.lock:
                    if int(table.generation[state.row]) != int(group.generation[i]):
                        continue
                    subscribers = list(handle._subscribers)
                arrival = arrived[i]
                event = TranscriptEvent(
                    stream_id=state.id,
                    text=state.text.text,
                    is_final=False,
                    audio_start_s=0.0,
                    audio_end_s=int(new_pos[i]) * hop / SAMPLE_RATE,
                    latency_s=None if np.isnan(arrival) else now - float(arrival),
                    utterance=state.sched_utterance,
                )
                events.append((handle, event, subscribers))
            offset += len(rows)
        with self._lock:
            for values in chunk_ms:
                self._chunk_ms.extend(values.tolist())
        return finals, events


_KINDS = (FIRST, SECOND, LATER)  # the order of a wave's calls
# Planning ahead: most looks per device step that gather rows, and the pause between looks.
_AHEAD_PARTS = 4
_AHEAD_LOOK_S = 0.002


@dataclasses.dataclass
class _FinalGroup:
    """Shared finals with the same sub-steps in the same calls (contiguous rows in each)."""

    members: list[int]  # indices into the tick's finals
    substeps: list[tuple[str, int]]
    calls: list[int]  # the call of each sub-step: wave * len(_KINDS) + kind's position
    fresh: bool  # the utterance has no step yet: start state, nothing to copy
    pool_rows: np.ndarray | None = None  # the pool rows holding their state copies
    span: tuple[int, int] | None = None  # where those rows sit in the tick's index tensor
    dec_state: list[torch.Tensor] | None = None
    mel: torch.Tensor | None = None  # [G, n_mels, frames of all sub-steps]
    outs: list[tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=list)

    def sources(self, finals: list[FinalWork]) -> np.ndarray:
        """The live slots the state copies come from (the pool rows themselves when fresh)."""
        if self.fresh:
            return self.pool_rows
        return np.array([finals[i].slot for i in self.members], np.int64)


@dataclasses.dataclass
class _Call:
    """One encoder call of a tick: a live group's rows, then finals' rows for one sub-step."""

    kind: str
    live: LiveGroup | None = None
    live_at: int = -1  # position of ``live`` in the plan
    finals: list[tuple[_FinalGroup, int]] = dataclasses.field(default_factory=list)
    span: tuple[int, int] | None = None  # its rows in the tick's index tensor, if finals join

    @property
    def rows(self) -> int:
        live = len(self.live) if self.live is not None else 0
        return live + sum(len(group.members) for group, _ in self.finals)


def _place_finals(works: list[FinalWork]) -> list[_FinalGroup]:
    """Each sub-step in the first call of its kind after the previous one; group equal ones."""
    groups: dict[tuple, _FinalGroup] = {}
    for i, work in enumerate(works):
        at, placed = 0, []
        for kind, _ in work.substeps:
            wave, pos = divmod(at, len(_KINDS))
            if _KINDS.index(kind) < pos:
                wave += 1
            at = wave * len(_KINDS) + _KINDS.index(kind)
            placed.append(at)
            at += 1
        key = (tuple(work.substeps), tuple(placed))
        group = groups.get(key)
        if group is None:
            group = groups[key] = _FinalGroup(
                [], list(work.substeps), placed, fresh=work.slot is None
            )
        group.members.append(i)
    return list(groups.values())


@dataclasses.dataclass
class Decoded:
    """Tokens of a decode's rows: ``counts`` ``[R]``; ``ids``, ``frames`` ``[R, W]`` (padded)."""

    counts: np.ndarray
    ids: np.ndarray
    frames: np.ndarray

    def tokens(self, row: int) -> tuple[list[int], list[int]]:
        """Token ids of ``row`` and the encoder frame of each."""
        n = int(self.counts[row])
        return self.ids[row, :n].tolist(), self.frames[row, :n].tolist()


def _on_device(device: torch.device):
    """Make ``device`` current on this thread (CUDA graphs and streams use the current device)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _fail(future: concurrent.futures.Future, exc: BaseException) -> None:
    if not future.done():
        try:
            future.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass


# ---------------- process-wide engines ----------------

_ENGINES: dict[tuple, ASREngine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine_key(config: EngineConfig) -> tuple:
    return (config.model, config.resolved_device(), config.dtype, config.chunk_ms, config.encoder)


def get_engine(config: EngineConfig | None = None) -> ASREngine:
    """The process-wide engine for ``(model, device, dtype, chunk_ms, encoder)``, made on first use.

    Thread-safe. Later calls with the same key return the same engine even if other fields
    (``max_streams``, ...) differ: the first config wins.
    """
    config = config or EngineConfig()
    key = _engine_key(config)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None or engine.is_shutdown:
            engine = ASREngine(config)
            _ENGINES[key] = engine
        return engine


def _forget_engine(engine: ASREngine) -> None:
    with _ENGINES_LOCK:
        for key, value in list(_ENGINES.items()):
            if value is engine:
                del _ENGINES[key]
