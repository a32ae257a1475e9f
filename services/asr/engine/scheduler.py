"""Tick planning: which streams step now, with which shape, and which finals run.

Bookkeeping over the ``StreamTable`` (no model): the scheduler thread calls ``plan`` between
ticks. Live steps are planned with array operations over every row (readiness, step kind, one
audio gather per kind); only streams with queued calls or deferred finals are visited one by
one. Each tick holds at most four kinds of work:

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
import torch

from .features import IncrementalMel
from .runner import FIRST, LATER, SECOND
from .state import FinalRequest, ResetRequest, StreamState, TextState, TokenTimes
from .table import NO_LIMIT, StreamTable


@dataclasses.dataclass
class LiveGroup:
    """The live steps of one encoder call (one step kind), as arrays over its ``B`` rows."""

    kind: str
    rows: np.ndarray  # [B] table rows
    slots: np.ndarray  # [B] slot pool rows
    start: np.ndarray  # [B] first mel frame of the step
    n_frames: int
    # Samples for the mel frames (CPU): [b_i, window_length(n_frames)] parts, B rows in all
    # (rows planned ahead, then rows that became ready since).
    windows: list[torch.Tensor]
    generation: np.ndarray  # [B] stream generation the step was planned at
    audio_needed: np.ndarray  # [B] utterance samples the step needed (for chunk latency)

    def __len__(self) -> int:
        return len(self.rows)


@dataclasses.dataclass
class AheadPart:
    """Live steps of one kind planned ahead in one go: the rows, their windows gathered."""

    group: LiveGroup  # one window part
    base: np.ndarray  # [B] utterance starts then
    opened: np.ndarray  # [B] the rows' stream counts then


@dataclasses.dataclass
class PlannedAhead:
    """Live steps planned while the device ran the tick before, in parts as rows became ready.

    ``plan`` keeps a row of it only if the row is still ready at the same position of the same
    utterance of the same stream (``base`` and ``opened`` as they were); the rest is planned anew.
    """

    parts: dict[str, list[AheadPart]]

    @property
    def rows(self) -> np.ndarray:
        """Every row planned ahead."""
        rows = [part.group.rows for parts in self.parts.values() for part in parts]
        return np.concatenate(rows) if rows else np.zeros(0, np.int64)

    @property
    def n_parts(self) -> int:
        return max((len(parts) for parts in self.parts.values()), default=0)


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
    live: list[LiveGroup]  # first, second, later steps (non-empty groups, in that order)
    finals: list[FinalWork]

    @property
    def empty(self) -> bool:
        return not (self.live or self.finals)

    @property
    def live_rows(self) -> int:
        return sum(len(group) for group in self.live)


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

    def encoder_frames_before(self, mel_pos: int, out_per_step: int) -> int:
        """Encoder frames the utterance has produced once its steps reached ``mel_pos``."""
        if mel_pos == 0:
            return 0
        return out_per_step * (1 + (mel_pos - self.chunk_first) // self.chunk)

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
        table: StreamTable,
        controls: Iterable[StreamState],
        deferring: set[StreamState],
        tick: int,
        acquire_slot: Callable[[], int],
        ahead: PlannedAhead | None = None,
    ) -> TickPlan:
        """Apply what callers queued, then build the work of one tick (scheduler thread).

        Args:
            table: every open stream's arrays (``open``, positions, audio).
            controls: streams with queued finalize or reset calls (each at most once).
            deferring: streams holding deferred finals; updated here.
            tick: this tick's number (round-robin fairness).
            acquire_slot: hands out a slot pool row for a stream's first step.
            ahead: live steps planned during the tick before (``plan_ahead``): their gathered
                windows are used for the rows still planned the same way.

        Queued finalize requests and resets are applied in call order, each at the stream
        position it was made at, so a final covers exactly the audio pushed before its
        ``finalize`` call and is planned from the stream's state at that point (its copy is
        taken before this tick's live steps). Only those streams and the ones with deferred
        finals are visited one by one; readiness, step shapes and audio windows of the live
        steps are array operations over all rows.
        """
        # Snapshot the audio counts before taking the inboxes: a reset taken below was made
        # at a position at most this count, so no live step reads a later utterance's audio.
        written = table.written.copy()
        finals: list[FinalWork] = []
        for stream in controls:
            items = stream.take_inbox()
            row = stream.row
            for i, item in enumerate(items):
                # Any call ends the wait of a deferred final: it is planned first, on the
                # state it was asked for.
                finals += self._plan_deferred(stream, deferring)
                if isinstance(item, ResetRequest):
                    stream.new_utterance(item.pos)
                    continue
                item.n_samples = item.pos - int(table.base[row])
                item.utterance = stream.sched_utterance
                if i == len(items) - 1 and self._behind(stream, item.n_samples):
                    with stream.lock:
                        stream.deferred.append(item)
                    deferring.add(stream)
                else:
                    finals.append(self._plan_final(stream, item))
        now = time.perf_counter()
        for stream in list(deferring):
            row = stream.row
            with stream.lock:
                first = stream.deferred[0] if stream.deferred else None
            if first is None or stream.closed:
                deferring.discard(stream)
                table.limit[row] = NO_LIMIT
                continue
            # Live steps may only use the audio the deferred final covers.
            need = int(table.next_needed[row])
            can_step = int(written[row] - table.base[row]) >= need and first.n_samples >= need
            if not can_step or now - first.requested_at > self.max_defer_s:
                finals += self._plan_deferred(stream, deferring)
            else:
                table.limit[row] = first.n_samples

        groups = self._live_groups(table, written, acquire_slot, "", ahead)
        return TickPlan(tick=tick, live=groups, finals=finals)

    def plan_ahead(
        self,
        table: StreamTable,
        acquire_slot: Callable[[], int],
        parity: int,
        previous: PlannedAhead | None = None,
    ) -> PlannedAhead:
        """The live steps the next tick would run as of now, windows gathered (scheduler thread).

        Called while the device runs a tick, after its positions advanced, and again as more
        rows become ready: each call gathers only the rows ``previous`` does not hold, as one
        more part. The gather, the bulk of a tick's host work, then overlaps the device step.
        ``parity`` alternates the buffers, so the windows of the tick in flight are not
        overwritten before their copy to the device.
        """
        parts = {kind: list(p) for kind, p in previous.parts.items()} if previous else {}
        planned = previous.rows if previous is not None else None
        key = f"ahead{parity}.{previous.n_parts if previous else 0}"
        written = table.written.copy()
        for group in self._live_groups(table, written, acquire_slot, key, exclude=planned):
            part = AheadPart(group, table.base[group.rows], table.opened[group.rows])
            parts.setdefault(group.kind, []).append(part)
        return PlannedAhead(parts)

    def _live_groups(
        self,
        table: StreamTable,
        written: np.ndarray,
        acquire_slot: Callable[[], int],
        buffer: str,
        ahead: PlannedAhead | None = None,
        exclude: np.ndarray | None = None,
    ) -> list[LiveGroup]:
        """The ready rows' live steps, one group per step kind (array work over every row).

        ``exclude``: rows already planned ahead (they count against ``max_batch``).
        """
        need = table.next_needed
        ready = table.open & (written - table.base >= need) & (table.limit >= need)
        room = self.max_batch
        if exclude is not None and len(exclude):
            ready[exclude] = False
            room -= len(exclude)
        rows = np.flatnonzero(ready)
        if len(rows) > room:  # round robin under overload: longest unserved first
            order = np.argsort(table.last_served[rows], kind="stable")
            rows = np.sort(rows[order[: max(room, 0)]])
        new = rows[table.slot[rows] < 0]
        for row in new.tolist():  # streams starting: slots on first use
            table.slot[row] = acquire_slot()
        mel = table.mel_pos[rows]
        first = mel == 0
        second = ~first & (mel < self.pre_cache)
        groups = []
        for kind, mask in ((FIRST, first), (SECOND, second), (LATER, ~first & ~second)):
            members = rows[mask]
            if not len(members):
                continue
            n = self.chunk_first if kind == FIRST else self.chunk
            width = self.features.window_length(n)
            windows: list[torch.Tensor] = []
            kept_rows = []
            for rows_kept, windows_kept in _still_planned(table, members, kind, ahead):
                kept_rows.append(rows_kept)
                windows.append(windows_kept)
            if kept_rows:
                kept_all = np.concatenate(kept_rows)
                late = members[~np.isin(members, kept_all, assume_unique=True)]
                members = np.concatenate([kept_all, late])
            else:
                late = members
            start = table.mel_pos[members]
            if len(late):
                lo, _ = self.features.window(start[len(members) - len(late) :], 0)
                windows.append(table.gather(late, lo, width, buffer + kind))
            _, hi = self.features.window(start, start + n)
            groups.append(
                LiveGroup(
                    kind=kind,
                    rows=members,
                    slots=table.slot[members],
                    start=start,
                    n_frames=n,
                    windows=windows,
                    generation=table.generation[members],
                    audio_needed=hi,
                )
            )
        return groups

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

    def _plan_deferred(self, stream: StreamState, deferring: set[StreamState]) -> list[FinalWork]:
        with stream.lock:
            requests, stream.deferred = stream.deferred, []
        if requests:
            deferring.discard(stream)
            stream.table.limit[stream.row] = NO_LIMIT
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
        slot = stream.slot if start > 0 else None  # mel_pos > 0 implies a slot
        return FinalWork(
            stream=stream,
            request=request,
            start=start,
            end=end,
            substeps=substeps,
            window=stream.table.read(stream.row, lo, hi, limit=request.n_samples),
            slot=slot,
            text=stream.text.snapshot(),
            tokens=stream.tokens.snapshot(),
        )


def _still_planned(
    table: StreamTable, members: np.ndarray, kind: str, ahead: PlannedAhead | None
) -> list[tuple[np.ndarray, torch.Tensor]]:
    """Rows of ``ahead``'s ``kind`` parts that ``members`` still steps the same way, windows.

    A row planned ahead is kept if it is still ready, at the same position, in the same
    utterance (``base``) of the same stream (``opened``): its window holds the same samples.
    """
    kept = []
    for part in ahead.parts.get(kind, []) if ahead is not None else []:
        rows = part.group.rows
        valid = (
            np.isin(rows, members, assume_unique=True)
            & (table.mel_pos[rows] == part.group.start)
            & (table.base[rows] == part.base)
            & (table.opened[rows] == part.opened)
        )
        windows = part.group.windows[0]
        if valid.all():
            kept.append((rows, windows))
        elif valid.any():
            keep = np.flatnonzero(valid)
            kept.append((rows[keep], windows[torch.from_numpy(keep)]))
    return kept
