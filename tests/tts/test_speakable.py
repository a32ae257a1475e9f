"""Text hygiene: what reaches the TTS is what a person would say."""

from __future__ import annotations

import pytest

from services.tts.speakable import speakable_text, speakable_transforms


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("**Sure!** Here's the plan:", "Sure! Here's the plan:"),
        ("1. Buy milk\n2. Call *Mom*\n- eat `pizza`", "Buy milk. Call Mom. eat pizza"),
        ("## Heading\nText", "Heading. Text"),
        ("See [the docs](https://docs.python.org/3/).", "See the docs."),
        ("Go to https://example.com/path?x=1 now.", "Go to example dot com now."),
        ("Visit www.nvidia.com.", "Visit nvidia dot com."),
        ("Great job 😀👍🏽!", "Great job!"),
        ("Flags 🇫🇷 and hearts ❤️ go.", "Flags and hearts go."),
        ("It costs $42.50.", "It costs forty two dollars and fifty cents."),
        ("About €1,200 or £3.", "About one thousand two hundred euros or three pounds."),
        ("A $1.5 million deal.", "A one point five million dollars deal."),
        ("Just $1.", "Just one dollar."),
        ("Meet at 3:30 pm.", "Meet at three thirty p m."),
        ("At 15:45 or 9:05.", "At fifteen forty five or nine oh five."),
        ("Open 9 a.m. to 5 PM daily.", "Open nine a m to five p m daily."),
        ("It's 12:00 now.", "It's twelve o'clock now."),
        ("Up 3.5% in 2024.", "Up three point five percent in twenty twenty four."),
        ("The 21st century.", "The twenty first century."),
        ("In the 1990s.", "In the nineteen nineties."),
        ("We had 1,234 visitors.", "We had one thousand two hundred and thirty four visitors."),
        ("Pi is 3.14.", "Pi is three point one four."),
        ("Call 5551234567.", "Call five five five one two three four five six seven."),
        ("It's 72°F outside.", "It's seventy two degrees Fahrenheit outside."),
        ("Pages 10-20.", "Pages ten to twenty."),
        ("Salt & pepper.", "Salt and pepper."),
        ("Mail jane.doe@example.org today.", "Mail jane dot doe at example dot org today."),
        ("Plain words stay.", "Plain words stay."),
    ],
)
def test_speakable(written, spoken):
    assert speakable_text(written) == spoken


def test_snake_case_identifiers_are_not_mangled():
    assert speakable_text("use snake_case_name here") == "use snake_case_name here"


async def test_transform_plugs_into_pipecat():
    [(kind, transform)] = speakable_transforms()
    assert kind == "*"
    assert await transform("**$5**", "sentence") == "five dollars"
