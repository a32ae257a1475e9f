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
from .runner import FIRST, ModelRunner
from .scheduler import Scheduler, TickPlan
from .slots import SlotPool
from .state import RESET, FinalRequest, StreamState, TextState
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
            self._pool = SlotPool(
                self._runner.cache_layout,
                self._runner.decoder_layout,
                max_slots=self.config.max_streams,
            )
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
        self._first_need = self._runner.features.samples_needed(self._runner.chunk_first)
        self._hop = self._runner.features.hop
        self._max_backlog_samples = int(self.config.max_backlog_s * SAMPLE_RATE)
        self._overloaded_pushes = 0
        # Guards the stream registry and the counters only; never held during model work.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._urgent = threading.Event()  # a final is queued: skip the batch window
        self._tick_lock = threading.Lock()  # held by the scheduler thread during a tick
        self._streams: dict[str, ASRStream] = {}
        self._released: collections.deque[int] = collections.deque()  # slots closed streams freed
        self._ids = itertools.count()
        self._tick = 0
        self._encoder_calls = 0
        self._tick_ms: collections.deque[float] = collections.deque(maxlen=2048)
        self._batch_sizes: collections.deque[int] = collections.deque(maxlen=256)
        # Chunk latency: a step's audio complete (pushed) -> its result committed.
        self._chunk_ms: collections.deque[float] = collections.deque(maxlen=4096)
        self._stopping = False
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
            stream_id = f"{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            state = StreamState(stream_id, TextState(self._detok, self.config.max_utterance_chars))
            state.next_needed = self._first_need
            handle = ASRStream(self, state, on_event)
            self._streams[stream_id] = handle
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
            "slots_in_use": self._pool.in_use - len(self._released),
            "slot_capacity": self._pool.capacity,
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
        state = handle._state
        now = time.perf_counter()
        with state.lock:
            if state.closed:
                raise StreamClosedError(f"stream {state.id} is closed")
            if not samples.size:
                return
            # mel_pos is advanced by the scheduler thread; a stale read only delays the check.
            backlog = state.pushed - state.mel_pos * self._hop
            if backlog + samples.size > self._max_backlog_samples:
                self._overloaded_pushes += 1
                raise EngineOverloadedError(
                    f"stream {state.id} is {backlog / SAMPLE_RATE:.1f} s behind real time "
                    f"(max_backlog_s={self.config.max_backlog_s}): the engine is overloaded; "
                    "send fewer streams to this engine or give it a faster device"
                )
            state.inbox.append((samples, now))
            state.pushed += samples.size
            wake = state.pushed >= state.next_needed
        if wake:
            self._wake.set()

    def _request_final(self, handle: ASRStream) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        state = handle._state
        with state.lock:
            if state.closed:
                future.set_exception(StreamClosedError(f"stream {state.id} is closed"))
                return future
            state.inbox.append(FinalRequest(time.perf_counter(), future))
        self._urgent.set()
        self._wake.set()
        return future

    def _reset(self, handle: ASRStream) -> None:
        state = handle._state
        with state.lock:
            if state.closed:
                raise StreamClosedError(f"stream {state.id} is closed")
            # A final queued before this is planned on the old utterance when the scheduler
            # applies the inbox, before this marker: it still gets its result.
            state.inbox.append(RESET)
            state.pushed = 0
            state.utterance += 1
            state.generation += 1
            state.next_needed = self._first_need
        self._wake.set()

    def _close(self, handle: ASRStream) -> None:
        state = handle._state
        with state.lock:
            if state.closed:
                return
            state.closed = True
            slot, state.slot = state.slot, None
            pending = [item for item in state.inbox if isinstance(item, FinalRequest)]
            pending += state.deferred
            state.inbox, state.deferred = [], []
            subscribers, handle._subscribers = handle._subscribers, []
        if slot is not None:
            # Freed by the scheduler thread between ticks: a tick being planned or run may
            # still hold this row, and handing it to a new stream in the same tick would give
            # one call two rows writing the same slot.
            self._released.append(slot)
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
        while self._released:
            self._pool.release(self._released.popleft())
        with self._lock:
            states = [h._state for h in self._streams.values()]
        plan = self._scheduler.plan(states, self._tick, self._pool.acquire)
        if plan.empty:
            return 0
        started = time.perf_counter()
        try:
            live_tokens, final_tokens = self._execute(plan)  # (ids, frames) per row
        except Exception as exc:
            # Fail what was asked for in this tick; the other streams keep being served.
            for work in plan.finals:
                _fail(work.request.future, exc)
            raise
        finals, events = self._commit(plan, live_tokens, final_tokens)
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

    def _slots(self, slots: list[int]) -> torch.Tensor:
        return torch.tensor(slots, dtype=torch.long, device=self.device)

    def _execute(self, plan: TickPlan) -> tuple[list[tuple], list[tuple]]:
        """Run a tick's encoder calls and its one decode.

        Returns ``(ids, frames)`` per live row and per final, frames counted from the first
        encoder frame of that row's work in this tick.
        """
        runner, pool, features = self._runner, self._pool, self._runner.features
        calls = 0
        # Rows of the single decode: live first steps, live later steps, then finals.
        enc_parts: list[torch.Tensor] = []
        len_parts: list[torch.Tensor] = []
        state_parts: list[list[torch.Tensor]] = []

        # 1. Finals first: they copy the live state before this tick's live steps advance it.
        groups: dict[tuple, list[int]] = {}
        for i, work in enumerate(plan.finals):
            key = (work.slot is None, tuple(work.substeps))
            groups.setdefault(key, []).append(i)
        final_order: list[int] = []
        final_enc, final_len, final_state = [], [], []
        for (fresh, substeps), members in groups.items():
            works = [plan.finals[i] for i in members]
            total = works[0].end - works[0].start
            mel = features.compute(np.stack([w.window for w in works]), total)
            if fresh:
                caches = pool.initial_encoder(len(works))
                dec_state = pool.start_decoder(len(works))
            else:
                idx = self._slots([w.slot for w in works])
                caches = pool.gather_encoder(idx)
                dec_state = pool.gather_decoder(idx)
            outs, lens, pos = [], None, 0
            for j, (kind, n) in enumerate(substeps):
                res = runner.encode(
                    kind, mel[:, :, pos : pos + n], caches, keep_all=j == len(substeps) - 1
                )
                calls += 1
                pos += n
                width = int(res.lengths.max())
                outs.append(res.encoded[:, :, :width])
                lens = res.lengths if lens is None else lens + res.lengths
            final_order.extend(members)
            final_enc.append(torch.cat(outs, dim=2))
            if self._encoder_tap is not None:
                for row, work in enumerate(works):
                    self._encoder_tap(work.stream.id, "final", final_enc[-1][row, :, : lens[row]])
            final_len.append(lens)
            final_state.append(dec_state)

        # 2. Live steps: one encoder call per step shape, updating the slots in place.
        live_idx = []
        steps = plan.live
        for group in (plan.first, plan.second, plan.later):
            if not group:
                continue
            kind = group[0].kind
            idx = self._slots([s.slot for s in group])
            n_frames = runner.chunk_first if kind == FIRST else runner.chunk
            mel = features.compute(np.stack([s.window for s in group]), n_frames)
            res = runner.encode(kind, mel, pool.encoder_state, idx)
            calls += 1
            if kind == FIRST:
                pool.reset_decoder(idx)
            enc_parts.append(res.encoded)
            len_parts.append(res.lengths)
            live_idx.append(idx)
        n_live = plan.live_rows
        if self._encoder_tap is not None and n_live:
            row = 0
            for enc, lens in zip(enc_parts, len_parts, strict=True):
                for i in range(enc.shape[0]):
                    self._encoder_tap(steps[row].stream.id, "live", enc[i, :, : lens[i]])
                    row += 1
        if live_idx:
            all_live = torch.cat(live_idx)
            state_parts.append(pool.gather_decoder(all_live))

        # 3. One greedy decode for every row.
        enc_parts += final_enc
        len_parts += final_len
        state_parts += final_state
        width = max(e.shape[2] for e in enc_parts)
        encoded = torch.cat([F.pad(e, (0, width - e.shape[2])) for e in enc_parts], dim=0)
        lengths = torch.cat(len_parts)
        dims = runner.decoder_layout.batch_dims
        state = [torch.cat([p[k] for p in state_parts], dim=d) for k, d in enumerate(dims)]
        ids, frames, new_state = runner.decode(encoded, lengths, state)
        tokens = list(zip(ids, frames, strict=True))
        if n_live:
            pool.scatter_decoder(
                all_live, [t.narrow(d, 0, n_live) for t, d in zip(new_state, dims, strict=True)]
            )
        with self._lock:
            self._encoder_calls += calls

        final_tokens: list[tuple] = [([], []) for _ in plan.finals]
        for row, i in enumerate(final_order):
            final_tokens[i] = tokens[n_live + row]
        return tokens[:n_live], final_tokens

    def _commit(self, plan: TickPlan, live_tokens, final_tokens):
        """Apply a tick's results to the streams; return what to deliver (scheduler thread)."""
        now = time.perf_counter()
        features = self._runner.features
        finals = []
        events = []
        chunk_ms: list[float] = []
        out_per_step = self._runner.out_per_step
        for work, (ids, frames) in zip(plan.finals, final_tokens, strict=True):
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
        for step, (ids, frames) in zip(plan.live, live_tokens, strict=True):
            state = step.stream
            if state.closed:
                continue  # its slot may already belong to another stream
            # The step has advanced the model state in the slot whatever the caller did since:
            # the scheduler-side position and text must follow it even after a reset() (applied
            # at the next plan), or a final queued before that reset would be planned from the
            # old position on caches one step ahead.
            new_pos = step.start + step.n_frames
            state.audio.trim(features.window(new_pos, new_pos)[0])
            state.mel_pos = new_pos
            state.last_served = plan.tick
            changed = state.text.extend(ids)
            if ids:
                base = self._scheduler.encoder_frames_before(step.start, out_per_step)
                state.tokens.extend(ids, [base + f for f in frames])
            with state.lock:
                current = state.generation == step.generation
                if current:
                    state.next_needed = self._scheduler.samples_for_next_step(state)
            if not current:
                continue  # reset meanwhile: no partial for an utterance the caller ended
            arrived = state.arrival_time(step.audio_needed)
            if arrived is not None:
                chunk_ms.append((now - arrived) * 1000)
            if not changed:
                continue
            with self._lock:
                handle = self._streams.get(state.id)
            if handle is None:
                continue
            with state.lock:
                if state.generation != step.generation:
                    continue
                subscribers = list(handle._subscribers)
            event = TranscriptEvent(
                stream_id=state.id,
                text=state.text.text,
                is_final=False,
                audio_start_s=0.0,
                audio_end_s=new_pos * features.hop / SAMPLE_RATE,
                latency_s=None if arrived is None else now - arrived,
                utterance=state.sched_utterance,
            )
            events.append((handle, event, subscribers))
        with self._lock:
            self._chunk_ms.extend(chunk_ms)
        return finals, events


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
