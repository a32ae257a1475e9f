"""Sentence aggregation that gets the first words of a reply to the TTS sooner.

A TTS that synthesizes whole sentences (Magpie's ``do_tts`` returns one waveform per call) cannot
start speaking until the first sentence is complete. When that sentence is long, waiting for its
full stop costs the user hundreds of milliseconds of silence, so the first sentence of each reply is
cut at its first clause boundary (comma, semicolon, colon, dash) once it is long enough. Later
sentences are aggregated whole: by then audio is already playing and whole sentences sound better.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

# The first sentence is cut at its first clause mark however short the clause ("Sure, ",
# "I'm sorry, "): a clause mark is where a speaker pauses anyway, so the seam is not heard, and
# each token the TTS does not wait for is ~15-40 ms of silence on CPU. 40 (the old default)
# waited for the whole first sentence on most replies (measured in docs/voice-to-voice.md).
DEFAULT_FIRST_CLAUSE_MIN_CHARS = 1

# A clause mark followed by the whitespace just typed: "warm, " or "this; " or "here: " or " - ".
_CLAUSE_END = re.compile(r"(?:[,;:]|\s[-–—]|[–—])\s$")


class FirstClauseTextAggregator(SimpleTextAggregator):
    """Sentence aggregator that also releases the first clause of a long first sentence.

    The state resets at the end of each reply (``flush``), on interruption and on ``reset``, so
    every reply gets its early first clause.
    """

    def __init__(self, *, first_clause_min_chars: int = DEFAULT_FIRST_CLAUSE_MIN_CHARS, **kwargs):
        """Initialize the aggregator.

        Args:
            first_clause_min_chars: How long the first sentence must already be before it is cut
                at a clause boundary. 0 disables clause cutting.
            **kwargs: Passed to ``SimpleTextAggregator`` (``aggregation_type``, ``language``).
        """
        super().__init__(**kwargs)
        self._first_clause_min_chars = first_clause_min_chars
        self._released_in_reply = False

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        """Aggregate streamed text into sentences, cutting a long first sentence at a clause.

        Args:
            text: The next piece of streamed text.

        Yields:
            Sentences (and possibly one leading clause) ready for synthesis.
        """
        if self._aggregation_type == TextType.TOKEN:
            async for aggregation in super().aggregate(text):
                yield aggregation
            return

        for char in text:
            self._text += char
            result = await self._check_sentence_with_lookahead(char)
            if result:
                self._released_in_reply = True
                yield result
                continue
            clause = self._take_first_clause()
            if clause:
                self._released_in_reply = True
                yield clause

    def _take_first_clause(self) -> Aggregation | None:
        if (
            self._released_in_reply
            or not self._first_clause_min_chars
            or len(self._text) < self._first_clause_min_chars
            # Never cut while a possible sentence end is still being checked ("Dr. Smith, ...").
            or self._lookahead_state.name != "IDLE"
            or not _CLAUSE_END.search(self._text)
        ):
            return None
        clause = self._text.strip()
        self._text = ""
        return Aggregation(text=clause, type=TextType.SENTENCE)

    async def flush(self) -> Aggregation | None:
        """Return the rest of the reply and start the next reply afresh."""
        self._released_in_reply = False
        return await super().flush()

    async def handle_interruption(self):
        """Drop buffered text; the next reply gets its early first clause again."""
        self._released_in_reply = False
        await super().handle_interruption()

    async def reset(self):
        """Clear buffered text and the per-reply state."""
        self._released_in_reply = False
        await super().reset()
