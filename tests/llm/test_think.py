"""Streaming removal of <think> blocks, whatever the chunking."""

from __future__ import annotations

import random

import pytest

from services.llm.think import ThinkStripper


def run(stripper: ThinkStripper, chunks: list[str]) -> str:
    return "".join(stripper.feed(c) for c in chunks) + stripper.flush()


def chunked(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        size = rng.randint(1, 6)
        out.append(text[i : i + size])
        i += size
    return out


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("<think>The user wants a greeting.</think>\n\nHello there!", "Hello there!"),
        ("Hello <think>hmm</think>there!", "Hello there!"),
        ("<THINK>Upper case.</THINK>Fine.", "Fine."),
        ("<thinking>plan</thinking>Sure.", "Sure."),
        ("No tags at all, a < b and c > d.", "No tags at all, a < b and c > d."),
        ("Ends with a less-than <", "Ends with a less-than <"),
        ("Answer.<think>never closed", "Answer."),
        ("<think>a</think>One. <think>b</think>Two.", "One. Two."),
    ],
)
@pytest.mark.parametrize("seed", range(8))
def test_think_blocks_are_removed_at_any_chunking(text, spoken, seed):
    assert run(ThinkStripper(), chunked(text, seed)) == spoken


def test_reply_opened_by_the_chat_template():
    stripper = ThinkStripper(starts_inside=True)
    assert run(stripper, ["The user asks", " something.</th", "ink>\n", "Answer."]) == "Answer."
    # Every reply starts inside again.
    assert run(stripper, ["more reasoning</think>", "Second."]) == "Second."


def test_orphan_closing_tag_is_removed():
    assert run(ThinkStripper(), ["Okay</think>Done."]) == "OkayDone."


def test_text_is_released_as_soon_as_it_cannot_be_a_tag():
    stripper = ThinkStripper()
    assert stripper.feed("Hello <") == "Hello "
    assert stripper.feed("b") == "<b"
