"""Tick planning: which streams step now, with which shape, and which finals run.

Pure bookkeeping over ``StreamState`` (no torch): the engine calls ``plan`` under its lock, then
runs the plan without the lock. Each tick holds at most three kinds of work:

- first steps (``chunk_size[0]`` frames, drop 0) for streams starting an utterance;
- second steps, only where the first step is shorter than the pre-encode cache (80 ms chunks):
  the first step's frames + ``chunk_size[1]``, one pre-encoded frame dropped;
- later steps (9 cached + ``chunk_size[1]`` frames, drop 2) for streams with a full chunk;
- finals: a copy of a stream's state is advanced over the rest of its audio, padded with silence
  to the chunk grid, the last sub-step keeping all outputs. Finals never write the live state.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable

import numpy as np

from .features import IncrementalMel
from .runner import FIRST, LATER, SECOND
from .state import RESET, FinalRequest, StreamState, TextState, TokenTimes


@dataclasses.dataclass
class LiveStep:
    """One stream's regular step."""

    stream: StreamState
    generation: int
    kind: str
    start: int  # first mel frame
    n_frames: int
    window: np.ndarray  # samples for the mel frames
    slot: int
    audio_needed: int  # samples the step needed (for chunk latency)


@dataclasses.dataclass
class FinalWork:
    """One final: sub-steps from the stream's position to the padded end."""

    stream: StreamState
    request: FinalRequest
    start: int  # mel frame the final continues from (the live position)
    end: int  # padded end, in mel frames
    substeps: list[tuple[str, int]]  # (kind, n_frames), the last one keeps all outputs
    window: np.ndarray
    slot: int | None  # live slot to copy state from; None when the utterance has no step yet
    text: TextState  # snapshot of the live text when the final was planned
    tokens: TokenTimes  # snapshot of the live tokens and their frames (word timings)


@dataclasses.dataclass
class TickPlan:
    tick: int
    first: list[LiveStep]
    later: list[LiveStep]
    finals: list[FinalWork]
    second: list[LiveStep] = dataclasses.field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.first or self.second or self.later or self.finals)

    @property
    def live(self) -> list[LiveStep]:
        """Every live step, in the order of the tick's decode rows."""
        return self.first + self.second + self.later

    @property
    def live_rows(self) -> int:
        return len(self.first) + len(self.second) + len(self.later)


def _is_control(item: object) -> bool:
    """A reset or a finalize request (the rest of an inbox is audio)."""
    return item is RESET or isinstance(item, FinalRequest)


class Scheduler:
    """Decides the work of each tick from the streams' states."""

    # Longest a final waits for the live steps to catch up when the engine is behind.
    max_defer_s = 2.0

    def __init__(
        self,
        features: IncrementalMel,
        chunk_first: int,
        chunk: int,
        max_batch: int,
        pre_cache: int = 0,
    ) -> None:
        self.features = features
        self.chunk_first = chunk_first
        self.chunk = chunk
        self.max_batch = max_batch
        self.pre_cache = pre_cache

    def kind_at(self, mel_pos: int) -> str:
        """Kind of the step that starts at mel frame ``mel_pos``."""
        if mel_pos == 0:
            return FIRST
        return SECOND if mel_pos < self.pre_cache else LATER

    def step_frames(self, stream: StreamState) -> tuple[str, int]:
        """Kind and frame count of the stream's next live step."""
        kind = self.kind_at(stream.mel_pos)
        return kind, self.chunk_first if kind == FIRST else self.chunk

    def encoder_frames_before(self, mel_pos: int, out_per_step: int) -> int:
        """Encoder frames the utterance has produced once its steps reached ``mel_pos``."""
        if mel_pos == 0:
            return 0
        return out_per_step * (1 + (mel_pos - self.chunk_first) // self.chunk)

    def samples_for_next_step(self, stream: StreamState) -> int:
        """Samples the stream needs before its next live step can run."""
        _, n = self.step_frames(stream)
        return self.features.samples_needed(stream.mel_pos + n)

    def final_frames(self, n_samples: int) -> int:
        """Mel frames of a final over ``n_samples`` samples: covers them, on the chunk grid."""
        needed = max(math.ceil(n_samples / self.features.hop), 1)
        if needed <= self.chunk_first:
            return self.chunk_first
        return self.chunk_first + math.ceil((needed - self.chunk_first) / self.chunk) * self.chunk

    def padded_length(self, n_samples: int) -> int:
        """Length of the silence-padded utterance whose offline transcript a final equals."""
        return self.final_frames(n_samples) * self.features.hop

    def plan(
        self,
        streams: Iterable[StreamState],
        tick: int,
        acquire_slot: Callable[[], int],
    ) -> TickPlan:
        """Apply what callers queued, then build the work of one tick (scheduler thread).

        Queued pushes, finalize requests and resets are applied in call order, so a final
        covers exactly the audio pushed before its ``finalize`` call and is planned from the
        stream's state at that point (its copy is taken before this tick's live steps).
        """
        ready: list[tuple[StreamState, int]] = []
        finals: list[FinalWork] = []
        now = time.perf_counter()
        for stream in streams:
            items, generation = stream.take_inbox()
            # Only audio follows the last reset or final of the inbox.
            last_control = max((i for i, item in enumerate(items) if _is_control(item)), default=-1)
            for i, item in enumerate(items):
                if _is_control(item):
                    # Anything but audio ends the wait of a deferred final: it is planned
                    # first, on the state it was asked for.
                    finals += self._plan_deferred(stream)
                if item is RESET:
                    stream.new_utterance()
                elif isinstance(item, FinalRequest):
                    item.n_samples = stream.audio.total
                    item.utterance = stream.sched_utterance
                    if i == last_control and self._behind(stream, item.n_samples):
                        with stream.lock:
                            stream.deferred.append(item)
                    else:
                        finals.append(self._plan_final(stream, item))
                else:
                    samples, pushed_at = item
                    stream.audio.append(samples)
                    stream.arrivals.append((stream.audio.total, pushed_at))
            stream.next_needed = self.samples_for_next_step(stream)
            # With a final deferred, live steps may only use the audio that final covers.
            limit = stream.deferred[0].n_samples if stream.deferred else stream.audio.total
            can_step = stream.audio.total >= stream.next_needed and limit >= stream.next_needed
            if stream.deferred and (
                not can_step or now - stream.deferred[0].requested_at > self.max_defer_s
            ):
                finals += self._plan_deferred(stream)
                can_step = stream.audio.total >= stream.next_needed
            if not stream.closed and can_step:
                ready.append((stream, generation))
        # Round robin under overload: streams served longest ago go first.
        ready.sort(key=lambda item: item[0].last_served)
        by_kind: dict[str, list[LiveStep]] = {FIRST: [], SECOND: [], LATER: []}
        for stream, generation in ready[: self.max_batch]:
            with stream.lock:
                if stream.closed:
                    continue
                if stream.slot is None:
                    stream.slot = acquire_slot()
                slot = stream.slot
            kind, n = self.step_frames(stream)
            lo, hi = self.features.window(stream.mel_pos, stream.mel_pos + n)
            step = LiveStep(
                stream=stream,
                generation=generation,
                kind=kind,
                start=stream.mel_pos,
                n_frames=n,
                window=stream.audio.read(lo, hi),
                slot=slot,
                audio_needed=hi,
            )
            by_kind[kind].append(step)
        return TickPlan(
            tick=tick,
            first=by_kind[FIRST],
            second=by_kind[SECOND],
            later=by_kind[LATER],
            finals=finals,
        )

    def _behind(self, stream: StreamState, n_samples: int) -> bool:
        """Whether a final over ``n_samples`` would redo more than two steps of live work.

        Such a stream is behind real time (the engine is overloaded). Its final then waits
        until the batched live steps have caught up to the request, so an overloaded engine
        does not also run each final's backlog as extra small encoder calls, which would slow
        every tick further and never let it catch up.
        """
        frames = self.final_frames(n_samples) - stream.mel_pos
        next_step = self.chunk_first if stream.mel_pos == 0 else self.chunk
        return frames > next_step + self.chunk

    def _plan_deferred(self, stream: StreamState) -> list[FinalWork]:
        with stream.lock:
            requests, stream.deferred = stream.deferred, []
        return [self._plan_final(stream, request) for request in requests]

    def _plan_final(self, stream: StreamState, request: FinalRequest) -> FinalWork:
        start = stream.mel_pos
        end = self.final_frames(request.n_samples)
        if end <= start:  # cannot happen while live steps only use audio pushed before the request
            end = start + (self.chunk_first if start == 0 else self.chunk)
        substeps: list[tuple[str, int]] = []
        pos = start
        if pos == 0:
            substeps.append((FIRST, self.chunk_first))
            pos = self.chunk_first
        while pos < end:
            substeps.append((self.kind_at(pos), self.chunk))
            pos += self.chunk
        lo, hi = self.features.window(start, end)
        return FinalWork(
            stream=stream,
            request=request,
            start=start,
            end=end,
            substeps=substeps,
            window=stream.audio.read(lo, hi, limit=request.n_samples),
            slot=stream.slot if start > 0 else None,  # mel_pos > 0 implies a slot
            text=stream.text.snapshot(),
            tokens=stream.tokens.snapshot(),
        )
