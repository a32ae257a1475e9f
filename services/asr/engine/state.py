"""Per-stream bookkeeping that is not a per-row array: text, tokens, queued requests.

Plain Python only: model tensors live in the slot pool and per-row scalars and audio in the
``StreamTable``, so a final's copy of a stream's state here is cheap (a text snapshot).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections.abc import Callable

from .table import StreamTable


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
    pos: int = 0  # stream samples pushed before the call (absolute, set by the caller)
    n_samples: int = 0  # the same, counted in the utterance (set by the scheduler)
    utterance: int = 0


@dataclasses.dataclass(frozen=True)
class ResetRequest:
    """A ``reset`` call: the next utterance starts at stream sample ``pos`` (absolute)."""

    pos: int


class StreamState:
    """State of one stream that is not a per-row scalar of the ``StreamTable``.

    Callers (any thread) touch only the inbox side, under ``lock``, which is held for a few
    list operations at most: finalize requests and resets are queued in order, each with the
    stream position it was made at, and applied by the scheduler thread when it plans the next
    tick (audio goes straight to the table's ring). Everything else (text, tokens) belongs to
    the scheduler thread alone, so callers never wait for model work or for a tick.
    """

    def __init__(self, stream_id: str, text: TextState, table: StreamTable, row: int) -> None:
        self.id = stream_id
        self.lock = threading.Lock()
        self.table = table
        self.row = row
        # ---- caller side (guarded by lock) ----
        self.inbox: list[FinalRequest | ResetRequest] = []  # in call order
        self.utterance = 0  # utterance index as callers see it
        self.closed = False
        # Finals waiting for the live steps to catch up (the engine is behind); the scheduler
        # adds and plans them, close() fails them.
        self.deferred: list[FinalRequest] = []
        # ---- scheduler side ----
        self.text = text
        self.tokens = TokenTimes()
        self.sched_utterance = 0

    @property
    def mel_pos(self) -> int:
        """Mel frames the live steps consumed in this utterance (0: the first step is next)."""
        return int(self.table.mel_pos[self.row])

    @property
    def slot(self) -> int | None:
        """The slot pool row holding this stream's model state (None before its first step)."""
        slot = int(self.table.slot[self.row])
        return None if slot < 0 or self.closed else slot

    def take_inbox(self) -> list[FinalRequest | ResetRequest]:
        """Everything queued by callers since the last call."""
        with self.lock:
            items, self.inbox = self.inbox, []
            return items

    def new_utterance(self, pos: int) -> None:
        """Start the next utterance at stream sample ``pos``: text cleared, a first step next."""
        table, row = self.table, self.row
        table.base[row] = pos
        table.mel_pos[row] = 0
        table.next_needed[row] = table.first_need
        self.text.clear()
        self.tokens.clear()
        self.sched_utterance += 1
