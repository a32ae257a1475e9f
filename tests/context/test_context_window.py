"""The context-window budget and the trimming rule, on plain message lists."""

from __future__ import annotations

from pipelines.context_window import (
    SUMMARY_PREFIX,
    context_budget,
    context_strategy,
    fit_messages,
    messages_tokens,
    summarization_config,
)
from tests.turns.conftest import settings_with


def conversation(turns: int, words: int = 30) -> list[dict]:
    messages = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "word " * words})
        messages.append({"role": "assistant", "content": f"answer {i} " + "word " * words})
    return messages


def test_a_conversation_that_fits_is_left_alone():
    messages = conversation(3)
    kept, dropped = fit_messages(messages, messages_tokens(messages))
    assert kept == messages and dropped == 0


def test_the_oldest_turns_go_first_and_the_conversation_starts_on_a_user_turn():
    messages = conversation(20) + [{"role": "user", "content": "the newest question"}]
    limit = messages_tokens(messages) // 3
    kept, dropped = fit_messages(messages, limit)
    assert messages_tokens(kept) <= limit
    assert kept[-1] == messages[-1] and kept == messages[dropped:]
    assert kept[0]["role"] == "user"


def test_the_summary_and_a_system_message_stay_at_the_head():
    head = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": SUMMARY_PREFIX + "they talked about the weather"},
    ]
    messages = head + conversation(20)
    kept, dropped = fit_messages(messages, messages_tokens(messages) // 4)
    assert kept[:2] == head and dropped > 0
    assert kept[2]["role"] == "user" and kept[-1] == messages[-1]


def test_the_last_message_is_kept_even_alone_over_the_limit():
    messages = conversation(2) + [{"role": "user", "content": "word " * 500}]
    kept, _ = fit_messages(messages, 50)
    assert kept == [messages[-1]]


def test_the_budget_leaves_room_for_the_system_prompt_and_the_reply():
    settings = settings_with(**{"llm.n_ctx": 4096, "llm.max_tokens": 100})
    budget = context_budget(settings)
    assert budget.reply_tokens == 100
    assert budget.conversation_limit + budget.reply_tokens + budget.system_tokens < 4096
    # Unset max_tokens keeps a spoken answer's worth, at most a quarter of the window.
    assert context_budget(settings_with(**{"llm.n_ctx": 512})).reply_tokens == 128


def test_summaries_start_well_before_the_limit():
    budget = context_budget(settings_with())
    config = summarization_config(budget)
    assert config.max_context_tokens <= 0.6 * budget.conversation_limit
    assert config.max_unsummarized_messages is None
    assert config.summary_config.summary_message_template.startswith(SUMMARY_PREFIX)


def test_auto_trims_for_the_embedded_model_and_summarizes_elsewhere():
    assert context_strategy(settings_with(**{"llm.preset": "local"})) == "trim"
    assert context_strategy(settings_with(**{"llm.preset": "vllm"})) == "summarize"
    assert context_strategy(settings_with(**{"llm.context_strategy": "trim"})) == "trim"


def test_an_overfull_conversation_is_cut_to_the_target_so_its_front_stays_put():
    """Cut deeper than needed once, the front (a prefix cache's hit) holds for several turns."""
    messages = conversation(30)
    limit = messages_tokens(messages) - 10
    kept, dropped = fit_messages(messages, limit, target=limit // 2)
    assert messages_tokens(kept) <= limit // 2 and dropped > 2
    # The next turns fit again without touching the front.
    grown = kept + conversation(3)
    assert fit_messages(grown, limit, target=limit // 2) == (grown, 0)


def test_a_speculative_request_is_cut_like_the_conversation_it_copies():
    from pipecat.frames.frames import LLMContextFrame
    from pipecat.processors.aggregators.llm_context import LLMContext

    from pipelines.context_window import ContextBudget, ContextWindowGuard

    stored = LLMContext(messages=conversation(40))
    budget = ContextBudget(window=2048, reply_tokens=256, system_tokens=40)
    guard = ContextWindowGuard(budget, stored)
    # What Pipecat's user aggregator sends for an eager end of turn: a copy plus the turn.
    turn = {"role": "user", "content": "and what about tomorrow?"}
    copy = LLMContext(messages=[*stored.messages, turn])
    guard.fit(LLMContextFrame(context=copy, speculation=True))
    assert messages_tokens(stored.messages) <= budget.conversation_limit
    assert copy.messages == [*stored.messages, turn]
    assert guard.dropped > 0
    # Within budget, nothing changes.
    before = list(stored.messages)
    guard.fit(LLMContextFrame(context=stored))
    assert stored.messages == before
