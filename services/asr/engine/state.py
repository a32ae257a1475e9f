"""Per-stream bookkeeping: audio, feature position, slot, text, queued requests.

Plain Python/numpy only: model tensors live in the slot pool, so a final's copy of a stream's
state here is cheap (a text snapshot and a slice of audio).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
from collections.abc import Callable

import numpy as np


class AudioBuffer:
    """Samples of the current utterance, indexed from its start; old samples are dropped."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._start = 0  # utterance index of the first sample held
        self.total = 0  # samples pushed since the utterance began

    @property
    def held(self) -> int:
        """Samples currently kept in memory."""
        return self.total - self._start

    def append(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append(samples)
            self.total += samples.size

    def _joined(self) -> np.ndarray:
        if len(self._chunks) != 1:
            self._chunks = [
                np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
            ]
        return self._chunks[0]

    def read(self, lo: int, hi: int, limit: int | None = None) -> np.ndarray:
        """Samples ``[lo, hi)``; indices below 0 or at/after ``limit`` (or the end) are zeros."""
        out = np.zeros(hi - lo, dtype=np.float32)
        end = self.total if limit is None else min(limit, self.total)
        s0, s1 = max(lo, 0), min(hi, end)
        if s1 > s0:
            if s0 < self._start:
                raise RuntimeError(
                    f"samples from {s0} were already dropped (held from {self._start})"
                )
            data = self._joined()
            out[s0 - lo : s1 - lo] = data[s0 - self._start : s1 - self._start]
        return out

    def trim(self, keep_from: int) -> None:
        """Forget samples before ``keep_from`` (they will never be read again)."""
        keep_from = min(max(keep_from, self._start), self.total)
        if keep_from == self._start:
            return
        data = self._joined()
        # Copy so the dropped prefix is really released, not kept alive as a view's base.
        self._chunks = [data[keep_from - self._start :].copy()]
        self._start = keep_from

    def clear(self) -> None:
        """Start a new utterance clock at zero."""
        self._chunks = []
        self._start = 0
        self.total = 0


class TextState:
    """The current utterance's text, built incrementally from token ids.

    Only a short tail of token ids is kept; older ones are folded into ``committed`` text. The
    detokenizer is applied to ``[anchor] + tail`` and the anchor's own text is cut off, so
    word-boundary spaces of subword tokenizers come out as in a one-shot decode. A fold only
    splits where that reproduces the text exactly (see ``_fold``), so ``text`` equals the
    detokenizer applied to every id at once (until ``max_chars`` cuts it).
    """

    # Split points tried per fold attempt. A split fails only where the detokenizer joins the
    # ids on either side (a space then a punctuation mark NeMo strips it before, the bytes of one
    # character): never many in a row, so the first or second candidate almost always fits.
    _FOLD_SEARCH = 16

    def __init__(
        self,
        detokenize: Callable[[list[int]], str],
        max_chars: int,
        max_tail: int = 256,
        keep_tail: int = 32,
    ) -> None:
        if not 1 <= keep_tail < max_tail:
            raise ValueError(f"need 1 <= keep_tail < max_tail, got {keep_tail}, {max_tail}")
        self._detok = detokenize
        self._max_chars = max_chars
        self._max_tail = max_tail
        self._keep_tail = keep_tail
        self.clear()

    def clear(self) -> None:
        self.committed = ""
        self.anchor: int | None = None
        self.tail: list[int] = []
        self.text = ""
        self._fold_after = self._max_tail  # tail length past which the next fold is tried

    def snapshot(self) -> TextState:
        """An independent copy (finals preview text on it while the live text moves on)."""
        copy = TextState(self._detok, self._max_chars, self._max_tail, self._keep_tail)
        copy.committed, copy.anchor, copy.tail, copy.text, copy._fold_after = (
            self.committed,
            self.anchor,
            list(self.tail),
            self.text,
            self._fold_after,
        )
        return copy

    def _suffix(self, ids: list[int], anchor: int | None) -> str:
        """Text of ``ids`` as it reads after ``anchor`` (the last id already folded)."""
        if not ids:
            return ""
        if anchor is None:
            return self._detok(ids)
        head = self._detok([anchor])
        both = self._detok([anchor, *ids])
        return both[len(head) :] if both.startswith(head) else self._detok(ids)

    def preview(self, ids: list[int]) -> str:
        """Text the utterance would have with ``ids`` appended (state unchanged)."""
        if not ids:
            return self.text
        return self._cap(self.committed + self._suffix(self.tail + list(ids), self.anchor))

    def extend(self, ids: list[int]) -> bool:
        """Append token ids; returns True when the text changed."""
        if not ids:
            return False
        self.tail.extend(ids)
        tail_text = self._suffix(self.tail, self.anchor)
        if len(self.tail) > self._fold_after:
            tail_text = self._fold(tail_text)
        before = self.text
        self.text = self._cap(self.committed + tail_text)
        return self.text != before

    def _fold(self, tail_text: str) -> str:
        """Fold the oldest tail ids into ``committed``; returns the text of the tail left.

        ``tail_text`` is the whole tail's text. A split is kept only if the two parts read
        exactly as ``tail_text``: NeMo's detokenizer drops a space before a punctuation mark,
        which a split between the two would leave in ``committed`` for good. Splits from
        ``keep_tail`` ids before the end back to ``_FOLD_SEARCH`` earlier are tried; if none
        fits, the fold waits for more ids, up to a tail of ``2 * max_tail`` (then it folds
        anyway, so memory and the per-id cost stay bounded).
        """
        last = len(self.tail) - self._keep_tail
        for split in range(last, max(last - self._FOLD_SEARCH, 0), -1):
            old_text = self._suffix(self.tail[:split], self.anchor)
            rest_text = self._suffix(self.tail[split:], self.tail[split - 1])
            if old_text + rest_text == tail_text:
                self._commit(split, old_text)
                return rest_text
        if len(self.tail) <= 2 * self._max_tail:
            # Try again once the tail has grown past the split points just tried.
            self._fold_after = len(self.tail) + self._FOLD_SEARCH - 1
            return tail_text
        self._commit(last, self._suffix(self.tail[:last], self.anchor))
        return self._suffix(self.tail, self.anchor)

    def _commit(self, split: int, old_text: str) -> None:
        self.committed = self._cap(self.committed + old_text)
        self.anchor = self.tail[split - 1]
        self.tail = self.tail[split:]
        self._fold_after = self._max_tail

    def _cap(self, text: str) -> str:
        return text if len(text) <= self._max_chars else text[-self._max_chars :]


class TokenTimes:
    """Token ids of the current utterance and the absolute encoder frame each was emitted at.

    Kept for word timings of finals. Bounded: a stream that is never reset keeps its newest
    ``max_tokens`` tokens (its words before them get no times).
    """

    def __init__(self, max_tokens: int = 4096) -> None:
        self.max_tokens = max_tokens
        self.ids: list[int] = []
        self.frames: list[int] = []

    def extend(self, ids: list[int], frames: list[int]) -> None:
        self.ids.extend(ids)
        self.frames.extend(frames)
        if len(self.ids) > self.max_tokens:
            del self.ids[: -self.max_tokens], self.frames[: -self.max_tokens]

    def snapshot(self) -> TokenTimes:
        copy = TokenTimes(self.max_tokens)
        copy.ids, copy.frames = list(self.ids), list(self.frames)
        return copy

    def clear(self) -> None:
        self.ids.clear()
        self.frames.clear()


@dataclasses.dataclass
class FinalRequest:
    """A ``finalize`` call: the utterance audio up to ``n_samples`` is finished off."""

    requested_at: float
    future: concurrent.futures.Future
    n_samples: int = 0  # set when the scheduler takes the request (audio pushed before it)
    utterance: int = 0


RESET = "reset"


class StreamState:
    """State of one stream, split by owner.

    Callers (any thread) touch only the inbox side, under ``lock``, which is held for a few
    list operations at most: pushes, finalize requests and resets are queued in order and
    applied by the scheduler thread when it plans the next tick. Everything else (audio buffer,
    feature position, text) belongs to the scheduler thread alone, so callers never wait for
    model work or for a tick to be planned.
    """

    def __init__(self, stream_id: str, text: TextState) -> None:
        self.id = stream_id
        self.lock = threading.Lock()
        # ---- caller side (guarded by lock) ----
        self.inbox: list = []  # (samples, time) | FinalRequest | RESET, in call order
        self.pushed = 0  # samples pushed in the current utterance
        self.utterance = 0  # utterance index as callers see it
        self.generation = 0  # bumped by reset(): results planned before it are dropped
        self.closed = False
        self.slot: int | None = None  # set by the scheduler, cleared by close (both under lock)
        self.next_needed = 0  # samples the next step needs (written by the scheduler)
        # Finals waiting for the live steps to catch up (the engine is behind); the scheduler
        # adds and plans them, close() fails them.
        self.deferred: list[FinalRequest] = []
        # ---- scheduler side ----
        self.audio = AudioBuffer()
        self.text = text
        self.tokens = TokenTimes()
        self.sched_utterance = 0
        self.mel_pos = 0  # mel frames consumed by the encoder (0: the first step is next)
        self.last_served = -1  # tick of the last step, for round-robin fairness
        # (samples so far, time) after each push: tells when a chunk's audio was complete.
        self.arrivals: collections.deque[tuple[int, float]] = collections.deque()

    def take_inbox(self) -> tuple[list, int]:
        """Everything queued by callers since the last call, and the generation it ends at."""
        with self.lock:
            items, self.inbox = self.inbox, []
            return items, self.generation

    def new_utterance(self) -> None:
        """Forget the utterance: audio, features position, text; the next step is a first step."""
        self.audio.clear()
        self.text.clear()
        self.tokens.clear()
        self.arrivals.clear()
        self.mel_pos = 0
        self.sched_utterance += 1

    def arrival_time(self, n_samples: int) -> float | None:
        """When the stream first had ``n_samples`` samples; older records are dropped."""
        while len(self.arrivals) > 1 and self.arrivals[1][0] <= n_samples:
            self.arrivals.popleft()
        for total, t in self.arrivals:
            if total >= n_samples:
                return t
        return None
