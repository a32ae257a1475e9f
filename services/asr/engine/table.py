"""Every open stream's scalars and audio as arrays indexed by row (structure of arrays).

A tick at B = 4096 rows has ~35 us per row for everything, model step included, so the host side
cannot walk Python objects per row: readiness, step shapes, audio windows and commits are vector
operations over these arrays, and only rows that need Python (a control request, a new token, a
new slot) get it. Rows are handed out at ``open_stream`` and taken back between ticks, by the
scheduler thread, which also clears them then: a free row always holds the values of a fresh
stream, so a tick that reads the arrays while a caller opens a stream never sees a mix of the old
and the new stream's values.

Audio lives in one ring per row, ``ring[row, pos % L]`` for absolute sample ``pos`` (samples since
the stream opened). The first ``mirror`` samples of each ring are repeated after its end, so any
window of up to ``mirror`` samples is one contiguous slice: a tick's live windows are one gather.
Owners: callers write the ring, ``written`` and the arrival records (under the stream's lock);
the scheduler thread owns the rest.
"""

from __future__ import annotations

import numpy as np
import torch

NO_LIMIT = np.iinfo(np.int64).max

# Push records kept per row for chunk latency (when a step's audio was complete): at 20 ms per
# push this covers the last 0.64 s; older audio counts as arrived at the oldest record kept.
ARRIVALS = 32


class StreamTable:
    """Per-row arrays of every open stream.

    Shapes: ``ring`` ``[capacity, ring_samples + mirror]`` float32; every other array
    ``[capacity]`` (``arrival_pos`` / ``arrival_t``: ``[capacity, ARRIVALS]``).
    """

    def __init__(
        self,
        capacity: int,
        ring_samples: int,
        mirror: int,
        first_need: int,
        pin_memory: bool = False,
    ) -> None:
        """Allocate ``capacity`` rows of ``ring_samples`` samples of audio each.

        Args:
            capacity: most streams open at once.
            ring_samples: audio kept per stream (the longest backlog plus one step's window).
            mirror: longest live window; samples repeated after the ring's end.
            first_need: samples a fresh stream's first step needs.
            pin_memory: gather windows into pinned buffers (for a CUDA engine).
        """
        if mirror > ring_samples:
            raise ValueError(f"a window of {mirror} samples does not fit a ring of {ring_samples}")
        self.capacity = capacity
        self.ring_samples = ring_samples
        self.mirror = mirror
        self.first_need = first_need
        self.pin_memory = pin_memory
        self._buffers: dict[str, torch.Tensor] = {}
        # np.zeros maps untouched pages lazily: a row costs memory once its stream has used it.
        self.ring = np.zeros((capacity, ring_samples + mirror), np.float32)
        self._ring_t = torch.from_numpy(self.ring)  # the same memory
        # ---- caller side ----
        self.written = np.zeros(capacity, np.int64)  # samples pushed since the stream opened
        self.generation = np.zeros(capacity, np.int64)  # bumped by reset()
        self.open = np.zeros(capacity, bool)  # cleared by close()
        self.opened = np.zeros(capacity, np.int64)  # streams the row has held (tells them apart)
        self.arrival_pos = np.zeros((capacity, ARRIVALS), np.int64)  # written after each push
        self.arrival_t = np.zeros((capacity, ARRIVALS), np.float64)
        self.arrivals = np.zeros(capacity, np.int64)  # pushes recorded
        # ---- scheduler side ----
        self.base = np.zeros(capacity, np.int64)  # absolute sample where the utterance starts
        self.mel_pos = np.zeros(capacity, np.int64)  # mel frames the live steps consumed
        self.next_needed = np.full(capacity, first_need, np.int64)  # utterance samples
        self.limit = np.full(capacity, NO_LIMIT, np.int64)  # audio a deferred final covers
        self.last_served = np.full(capacity, -1, np.int64)  # tick of the last step
        self.slot = np.full(capacity, -1, np.int64)  # slot pool row, -1 before the first step
        self._free = list(range(capacity - 1, -1, -1))

    @property
    def free_rows(self) -> int:
        return len(self._free)

    def take_row(self) -> int:
        """A cleared row for a new stream (the caller holds the engine's registry lock)."""
        row = self._free.pop()
        self.opened[row] += 1
        self.open[row] = True
        return row

    def give_back(self, row: int) -> None:
        """Clear a closed stream's row and make it free again (scheduler thread, between ticks)."""
        self.written[row] = 0
        self.generation[row] = 0
        self.arrivals[row] = 0
        self.base[row] = 0
        self.mel_pos[row] = 0
        self.next_needed[row] = self.first_need
        self.limit[row] = NO_LIMIT
        self.last_served[row] = -1
        self.slot[row] = -1
        self.open[row] = False
        self._free.append(row)

    # ---- caller side ----

    def write(self, row: int, samples: np.ndarray, now: float) -> None:
        """Append ``samples`` to the row's ring (the caller checked that it has room)."""
        n, ring, mirror = samples.size, self.ring_samples, self.mirror
        written = self.written.item(row)
        start = written % ring
        end = start + n
        buf = self.ring[row]
        if end <= ring:
            buf[start:end] = samples
        else:  # wrapped: the rest goes to the ring's start
            first = ring - start
            buf[start:ring] = samples[:first]
            buf[: n - first] = samples[first:]
        # Keep the mirror equal to the ring's first ``mirror`` samples.
        if start < mirror:
            top = min(end, mirror)
            buf[ring + start : ring + top] = samples[: top - start]
        if end > ring:
            top = min(end - ring, mirror)
            buf[ring : ring + top] = buf[:top]
        k = self.arrivals.item(row)
        self.arrival_pos[row, k % ARRIVALS] = written + n
        self.arrival_t[row, k % ARRIVALS] = now
        self.arrivals[row] = k + 1
        self.written[row] = written + n  # last: the scheduler reads samples below it only

    # ---- scheduler side ----

    def gather(self, rows: np.ndarray, lo: np.ndarray, width: int, key: str) -> torch.Tensor:
        """Utterance samples ``[lo, lo + width)`` of each row, zeros before the utterance start.

        Args:
            rows: ``[B]`` rows; ``lo``: ``[B]`` first utterance sample of each window.
            width: window length (at most ``mirror``).
            key: names the buffer written (one per encoder call of a tick).

        Returns:
            float32 ``[B, width]`` CPU tensor, a view of the ``key`` buffer: valid until the
            next gather with that key (the next tick; a tick ends with the device synced).
            Pinned memory for a CUDA engine, so the copy to the device is a direct DMA.
        """
        start = (self.base[rows] + lo) % self.ring_samples
        flat = self._ring_t.view(-1)
        # Every window of the ring as a row of a strided view: one index_select copies B
        # contiguous slices (faster than numpy's fancy indexing, and it can fill ``out``).
        windows = flat.as_strided((flat.numel() - width + 1, width), (1, 1))
        index = torch.from_numpy(rows * self.ring.shape[1] + start)
        out = self._buffer(key, len(rows), width)
        torch.index_select(windows, 0, index, out=out)
        before = -lo
        if before.max(initial=0) > 0:  # the first steps' windows start before the utterance
            mask = np.arange(width)[None, :] < before[:, None]
            out.masked_fill_(torch.from_numpy(mask), 0.0)
        return out

    def _buffer(self, key: str, batch: int, width: int) -> torch.Tensor:
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < batch or buf.shape[1] != width:
            size = 1 << max(batch - 1, 0).bit_length()  # grows in powers of two
            buf = torch.empty(size, width, pin_memory=self.pin_memory)
            self._buffers[key] = buf
        return buf[:batch]

    def read(self, row: int, lo: int, hi: int, limit: int) -> np.ndarray:
        """Utterance samples ``[lo, hi)`` of one row; zeros before 0 and from ``limit`` on."""
        out = np.zeros(hi - lo, np.float32)
        s0, s1 = max(lo, 0), min(hi, limit)
        if s1 <= s0:
            return out
        base, ring = int(self.base[row]), self.ring_samples
        if base + s1 > int(self.written[row]) or int(self.written[row]) - (base + s0) > ring:
            raise RuntimeError(f"samples {s0}..{s1} of row {row} are not in its ring")
        a = (base + s0) % ring
        n = s1 - s0
        first = min(n, ring - a)
        out[s0 - lo : s0 - lo + first] = self.ring[row, a : a + first]
        if first < n:
            out[s0 - lo + first : s1 - lo] = self.ring[row, : n - first]
        return out

    def arrival_times(self, rows: np.ndarray, needed: np.ndarray) -> np.ndarray:
        """When each row's utterance first held ``needed`` samples (``[B]`` perf_counter s).

        Rows whose record of that moment was overwritten get their oldest record (an early
        bound: the latency it gives is a lower bound); rows without one get NaN.
        """
        pos = self.arrival_pos[rows]
        t = self.arrival_t[rows]
        valid = np.arange(ARRIVALS)[None, :] < self.arrivals[rows][:, None]
        target = (self.base[rows] + needed)[:, None]
        hit = valid & (pos >= target)
        out = np.where(hit, t, np.inf).min(axis=1)
        missing = ~np.isfinite(out)
        if missing.any():  # use the oldest record, or none
            oldest = np.where(valid, t, np.inf).min(axis=1)
            out[missing] = oldest[missing]
        out[~np.isfinite(out)] = np.nan
        return out
