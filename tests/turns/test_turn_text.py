"""The text rule on many sentences of its own: finished ones, unfinished ones, both with and
without the capitals and punctuation a formatting ASR adds."""

from __future__ import annotations

import pytest

from pipelines.turn_text import judge_transcript

# Finished utterances, as a punctuating ASR (Whisper, Nemotron) writes them.
COMPLETE = [
    "What time is it?",
    "I went to the store yesterday.",
    "Thank you very much.",
    "Can you turn it off?",
    "Come in.",
    "Hold on.",
    "I don't know.",
    "I'm not sure where.",
    "I don't know why.",
    "Where are you from?",
    "What are you looking at?",
    "Who did you go with?",
    "What is it made of?",
    "That's what I was thinking of.",
    "That's the thing that I was talking about.",
    "Is there anything you need?",
    "We can go tomorrow if you want.",
    "Whatever you like.",
    "Here it is.",
    "Yes, it is.",
    "I know where the station is.",
    "Do you know what time it is?",
    "So do I.",
    "Neither have we.",
    "Shall we?",
    "I think so.",
    "I hope so.",
    "Is that so?",
    "Okay then.",
    "See you then.",
    "Not yet.",
    "I like that.",
    "How about that?",
    "It is what it is.",
    "Call me back later.",
    "Yes, please.",
    "No thanks.",
    "Sure.",
    "Hello.",
    "Goodbye!",
    "I'm sorry.",
    "That conference is full.",
    "Something is terribly wrong.",
    "Please wait while I connect your call.",
    "Password incorrect. Please enter your password followed by the pound key.",
    "And you always want to see it in the superlative degree.",
    "My phone number is 555 1234.",
    "Press 1 to send this message.",
    "I'd like a large coffee with milk.",
    "It was a great show.",
    "What a find!",
    "Oh well.",
    "I'm doing well.",
    "Turn the lights on in the kitchen.",
    "Can you help me?",
    "What do you mean?",
    "That's what I mean.",
    "Book a table for two at eight.",
    "The meeting moved to Thursday.",
    "Remind me to call my mother tomorrow morning.",
    "What's the weather like in Paris?",
    "I need a taxi to the airport.",
    "Tell me a joke.",
    "Why not?",
    "Me too.",
    "What if?",
    "Could you?",
    "Do you?",
    "Yes, I do.",
    "Please stand by.",
    "Count me in.",
    "I would never.",
    "What is it?",
    "It scares me.",
    "Me too.",
]

# Unfinished utterances: the speaker paused mid-thought.
UNFINISHED = [
    "I want to",
    "I want to.",
    "And then",
    "and then.",
    "I was going to the",
    "Can you tell me",
    "Can you tell me about",
    "I need",
    "I think that",
    "I think",
    "Um",
    "Um.",
    "So, um",
    "The problem is",
    "My name is",
    "What I mean is",
    "The last caller was",
    "The number I have is",
    "I'm looking for",
    "Tell me about",
    "How do you deal with",
    "It's kind of",
    "There are a lot of",
    "I went there because",
    "I'll do it if",
    "We could go, or",
    "I'd rather have the",
    "It looks like",
    "I would like",
    "Well",
    "So",
    "I was wondering if",
    "I'm gonna",
    "It's more than",
    "I'm",
    "I think it's",
    "It was very",
    "Let me",
    "and I",
    "Give me",
    "Wait until",
    "With.",
    "From",
    "And",
    "I went to the store and...",
    "I mean, you know",
    "It's on the table but",
    "Can you put it next to the",
    "I'm thinking of",
    "I'm not sure whether",
    "Which one do you",
    "What should I",
    "It depends on",
    "We should probably",
    "Could you please",
    "Why did it",
    "It's too",
    "That makes me",
]


# Unfinished only by their punctuation: without it the words could end ("She said that.").
UNFINISHED_BY_PUNCTUATION = [
    "I went to the store,",
    "She said that",
    "Well, I was thinking...",
    "It's about the meeting \u2014",
    "Things like: ",
]


@pytest.mark.parametrize("text", COMPLETE)
def test_finished_utterances_read_complete(text):
    verdict = judge_transcript(text)
    assert verdict.complete, verdict.reason


@pytest.mark.parametrize("text", UNFINISHED + UNFINISHED_BY_PUNCTUATION)
def test_unfinished_utterances_read_unfinished(text):
    verdict = judge_transcript(text)
    assert not verdict.complete, verdict.reason


def unformatted(text: str) -> str:
    """What an ASR without formatting writes: lower case, no punctuation."""
    return " ".join("".join(c for c in w if c.isalnum() or c == "'") for w in text.lower().split())


@pytest.mark.parametrize("text", COMPLETE)
def test_finished_utterances_read_complete_without_formatting(text):
    verdict = judge_transcript(unformatted(text))
    assert verdict.complete, verdict.reason


@pytest.mark.parametrize("text", UNFINISHED)
def test_unfinished_utterances_read_unfinished_without_formatting(text):
    verdict = judge_transcript(unformatted(text))
    assert not verdict.complete, verdict.reason


@pytest.mark.parametrize(
    "text",
    ["I went to the store yesterday", "Thank you very much", "Hello", "What time is it"],
)
def test_a_formatting_asr_without_a_sentence_end_reads_unfinished(text):
    verdict = judge_transcript(text)
    assert not verdict.complete
    assert "punctuat" in verdict.reason


def test_every_verdict_says_why():
    for text in COMPLETE + UNFINISHED + [""]:
        assert judge_transcript(text).reason
