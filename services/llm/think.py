"""Streaming removal of reasoning blocks (``<think>...</think>``) from LLM text.

Reasoning models write their thoughts between tags in the answer text unless the server splits
them out (vLLM's ``--reasoning-parser`` does; llama.cpp and many NIMs may not). None of it may
reach the TTS. The stripper works on streamed chunks: a tag split across chunks
(``"<thi"`` + ``"nk>"``) is held back until it is complete or proven not to be a tag.
"""

from __future__ import annotations

DEFAULT_OPEN_TAGS = ("<think>", "<thinking>", "<reasoning>")
DEFAULT_CLOSE_TAGS = ("</think>", "</thinking>", "</reasoning>")


class ThinkStripper:
    """Removes reasoning blocks from a stream of text chunks.

    Feed each chunk with :meth:`feed` and send on what it returns; call :meth:`flush` at the end
    of the reply. Text inside an unterminated block is dropped. An orphan closing tag (a model
    whose chat template opened the block in the prompt) is removed, and with
    ``starts_inside=True`` everything before it is dropped too.
    """

    def __init__(
        self,
        *,
        open_tags: tuple[str, ...] = DEFAULT_OPEN_TAGS,
        close_tags: tuple[str, ...] = DEFAULT_CLOSE_TAGS,
        starts_inside: bool = False,
    ):
        """Initialize the stripper.

        Args:
            open_tags: Tags that open a reasoning block (matched case-insensitively).
            close_tags: Tags that close one.
            starts_inside: Treat each reply as starting inside a block (for chat templates that
                put the opening tag in the prompt).
        """
        self._open = tuple(t.lower() for t in open_tags)
        self._close = tuple(t.lower() for t in close_tags)
        self._starts_inside = starts_inside
        self._pending = ""
        self._inside = starts_inside
        self._after_block = False
        self.dropped_chars = 0

    @property
    def inside(self) -> bool:
        """Whether the stream is currently inside a reasoning block."""
        return self._inside

    def reset(self) -> None:
        """Forget any partial state; the next chunk starts a new reply."""
        self._pending = ""
        self._inside = self._starts_inside
        self._after_block = False
        self.dropped_chars = 0

    @staticmethod
    def _find(text: str, tags: tuple[str, ...]) -> tuple[int, int]:
        """Earliest (index, length) of any tag in text, or (-1, 0)."""
        lowered = text.lower()
        best = (-1, 0)
        for tag in tags:
            index = lowered.find(tag)
            if index != -1 and (best[0] == -1 or index < best[0]):
                best = (index, len(tag))
        return best

    @staticmethod
    def _partial_tag_suffix(text: str, tags: tuple[str, ...]) -> int:
        """Length of the longest suffix of text that is a proper prefix of a tag."""
        lowered = text.lower()
        longest = 0
        for tag in tags:
            for size in range(min(len(tag) - 1, len(lowered)), 0, -1):
                if lowered.endswith(tag[:size]):
                    longest = max(longest, size)
                    break
        return longest

    def feed(self, text: str) -> str:
        """Add a chunk; return the text that is safe to speak now."""
        self._pending += text
        out: list[str] = []
        while self._pending:
            if self._inside:
                index, size = self._find(self._pending, self._close)
                if index == -1:
                    keep = self._partial_tag_suffix(self._pending, self._close)
                    self.dropped_chars += len(self._pending) - keep
                    self._pending = self._pending[len(self._pending) - keep :]
                    break
                self.dropped_chars += index + size
                self._pending = self._pending[index + size :]
                self._inside = False
                self._after_block = True
                continue
            if self._after_block:
                # Drop the blank lines models put after "</think>".
                stripped = self._pending.lstrip()
                self.dropped_chars += len(self._pending) - len(stripped)
                self._pending = stripped
                if not self._pending:
                    break
                self._after_block = False
            open_index, open_size = self._find(self._pending, self._open)
            close_index, close_size = self._find(self._pending, self._close)
            if close_index != -1 and (open_index == -1 or close_index < open_index):
                # An orphan closing tag: the block was opened by the prompt.
                out.append(self._pending[:close_index])
                self.dropped_chars += close_size
                self._pending = self._pending[close_index + close_size :]
                self._after_block = True
                continue
            if open_index != -1:
                out.append(self._pending[:open_index])
                self.dropped_chars += open_size
                self._pending = self._pending[open_index + open_size :]
                self._inside = True
                continue
            keep = self._partial_tag_suffix(self._pending, self._open + self._close)
            out.append(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
            break
        return "".join(out)

    def flush(self) -> str:
        """End of reply: return held text that turned out not to be a tag; drop open blocks."""
        rest = "" if self._inside else self._pending
        if self._inside:
            self.dropped_chars += len(self._pending)
        self.reset()
        return rest
