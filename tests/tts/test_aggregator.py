"""First-clause aggregation: a long first sentence starts speaking at its first clause."""

from __future__ import annotations

from services.tts.aggregator import FirstClauseTextAggregator


async def collect(aggregator, *chunks):
    out = []
    for chunk in chunks:
        async for aggregation in aggregator.aggregate(chunk):
            out.append(aggregation.text)
    rest = await aggregator.flush()
    if rest and rest.text:
        out.append(rest.text)
    return out


async def test_long_first_sentence_is_cut_once_per_reply():
    aggregator = FirstClauseTextAggregator(first_clause_min_chars=40)
    text = "The weather in Paris today is sunny and warm, with a light breeze. Later, rain."
    tokens = [text[i : i + 3] for i in range(0, len(text), 3)]
    assert await collect(aggregator, *tokens) == [
        "The weather in Paris today is sunny and warm,",
        "with a light breeze.",
        "Later, rain.",
    ]
    # The next reply gets its early clause again.
    assert (await collect(aggregator, text))[0] == "The weather in Paris today is sunny and warm,"


async def test_short_first_sentence_is_not_cut():
    aggregator = FirstClauseTextAggregator(first_clause_min_chars=40)
    assert await collect(aggregator, "Well, sure. ", "Go ahead, then.") == [
        "Well, sure.",
        "Go ahead, then.",
    ]


async def test_numbers_with_commas_are_not_clauses():
    aggregator = FirstClauseTextAggregator(first_clause_min_chars=10)
    assert await collect(aggregator, "There were 1,250,000 people there today.") == [
        "There were 1,250,000 people there today."
    ]


async def test_interruption_resets_the_reply():
    aggregator = FirstClauseTextAggregator(first_clause_min_chars=10)
    assert await collect(aggregator, "A fairly long start, then more.") == [
        "A fairly long start,",
        "then more.",
    ]
    async for _ in aggregator.aggregate("Another long opening clause"):
        pass
    await aggregator.handle_interruption()
    assert await collect(aggregator, "Brand new reply here, and more.") == [
        "Brand new reply here,",
        "and more.",
    ]


async def test_disabled_cut():
    aggregator = FirstClauseTextAggregator(first_clause_min_chars=0)
    text = "The weather in Paris today is sunny and warm, with a light breeze."
    assert await collect(aggregator, text) == [text]
