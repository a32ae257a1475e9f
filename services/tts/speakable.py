"""Text hygiene before TTS: what a voice should say instead of what an LLM wrote.

Markdown markup, emoji and URLs are not read aloud literally; numbers, times, currencies,
percentages and ordinals are spelled out the way a person would say them. The transform runs on
each aggregated sentence just before synthesis and never changes the text kept in the
conversation context. Register it on any Pipecat TTS service with::

    tts = SomeTTSService(text_transforms=speakable_transforms())
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from num2words import num2words

# Markdown --------------------------------------------------------------------------------------
_CODE_FENCE = re.compile(r"```[^\n]*\n?|```")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
_HEADER = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE)
_BLOCKQUOTE = re.compile(r"^[ \t]{0,3}>[ \t]?", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*[-*+•][ \t]+", re.MULTILINE)
_NUMBERED = re.compile(r"^[ \t]*\d{1,3}[.)][ \t]+", re.MULTILINE)
_RULE = re.compile(r"^[ \t]*([-*_])([ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_TABLE_SEP = re.compile(
    r"^[ \t]*\|?[ \t]*:?-{2,}:?[ \t]*(\|[ \t]*:?-{2,}:?[ \t]*)*\|?[ \t]*$", re.MULTILINE
)
_EMPHASIS = re.compile(r"(\*\*\*|\*\*|\*|___|__|~~)(?=\S)(.+?)(?<=\S)\1")
_UNDERSCORE_EM = re.compile(r"(?<![\w])_(?=\S)(.+?)(?<=\S)_(?![\w])")
_INLINE_CODE = re.compile(r"`+([^`]*)`+")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")

# URLs and e-mail -----------------------------------------------------------------------------
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>()\"']+", re.IGNORECASE)
_EMAIL = re.compile(r"\b([\w.+-]+)@([\w-]+(?:\.[\w-]+)+)\b")

# Emoji: pictographs, dingbats, flags, keycaps and the joiners/selectors that glue them.
_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, flags, supplemental symbols
    "\u2600-\u26ff"  # miscellaneous symbols
    "\u2700-\u27bf"  # dingbats
    "\u2b00-\u2bff"  # arrows and stars used as emoji
    "\u2300-\u23ff"  # technical (watch, hourglass)
    "\ufe00-\ufe0f"  # variation selectors
    "\u200d"  # zero-width joiner
    "\u20e3"  # keycap
    "\U000e0020-\U000e007f"  # tag characters
    "]+"
)

# Numbers ---------------------------------------------------------------------------------------
_CURRENCY_SYMBOLS = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", "", ""),
    "₹": ("rupee", "rupees", "paisa", "paise"),
}
_SCALES = r"(thousand|million|billion|trillion|k|m|bn)"
_CURRENCY = re.compile(
    r"(?P<neg>-)?(?P<sym>[$€£¥₹])\s?(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?"
    rf"(?:\s?(?P<scale>{_SCALES})\b)?",
    re.IGNORECASE,
)
_CURRENCY_CODE = re.compile(
    r"\b(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d{2}))?\s?(?P<code>USD|EUR|GBP)\b"
)
_CODE_TO_SYMBOL = {"USD": "$", "EUR": "€", "GBP": "£"}
_AMPM = r"(?:(?P<ampm>[aApP])\.\s?[mM]\.|(?P<ampm2>[aApP])[mM]\b)"
_TIME = re.compile(rf"\b(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)(?::[0-5]\d)?(?:\s?{_AMPM})?")
_HOUR_AMPM = re.compile(rf"\b(?P<h>1[0-2]|0?[1-9])\s?{_AMPM}")
_PERCENT = re.compile(r"(?P<num>-?\d+(?:\.\d+)?)\s?%")
_ORDINAL = re.compile(r"\b(?P<num>\d+)(?:st|nd|rd|th)\b", re.IGNORECASE)
_YEAR = re.compile(r"(?<![\d.,$€£])\b(?P<num>1[1-9]\d\d|20\d\d)\b(?![.,]\d)(?!\s?%)")
_DECADE = re.compile(r"\b(?P<num>1[1-9]\d0|20\d0)s\b")
_NUMBER = re.compile(
    r"(?<![\w.])(?P<neg>-)?(?P<num>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?(?![\w])"
)
_RANGE = re.compile(r"(?<=\d)\s?[-–]\s?(?=\d)")
_DEGREES = re.compile(r"(?P<num>-?\d+(?:\.\d+)?)\s?°\s?(?P<unit>[CF])?\b")

_ABBREVIATIONS = [
    (re.compile(r"\be\.g\.", re.IGNORECASE), "for example"),
    (re.compile(r"\bi\.e\.", re.IGNORECASE), "that is"),
    (re.compile(r"\betc\.(?=\s*$)", re.IGNORECASE), "et cetera."),
    (re.compile(r"\betc\.", re.IGNORECASE), "et cetera"),
    (re.compile(r"\bvs\.?(?=\s)", re.IGNORECASE), "versus"),
    (re.compile(r"\s&\s"), " and "),
    (re.compile(r"\s\+\s"), " plus "),
    (re.compile(r"\s=\s"), " equals "),
    (re.compile(r"\s?(?:→|->|=>)\s?"), " to "),
    (re.compile(r"\band/or\b", re.IGNORECASE), "and or"),
    (re.compile(r"\b24/7\b"), "twenty four seven"),
    (re.compile(r"\b([A-Za-z]+)/([A-Za-z]+)\b"), r"\1 or \2"),
    (re.compile(r"#(?=\d)"), "number "),
]


def _words(value: int | float, **kwargs) -> str:
    """num2words without the commas and hyphens that make TTS engines pause or stumble."""
    return num2words(value, lang="en", **kwargs).replace(",", "").replace("-", " ")


def _integer(text: str) -> int:
    return int(text.replace(",", ""))


def _spoken_number(whole: str, frac: str | None = None) -> str:
    """Read a number: quantities as words, long digit strings (IDs, phones) digit by digit."""
    digits = whole.replace(",", "")
    if "," not in whole and len(digits) >= 7:
        spoken = " ".join(_words(int(d)) for d in digits)
    else:
        spoken = _words(int(digits))
    if frac:
        spoken += " point " + " ".join(_words(int(d)) for d in frac)
    return spoken


def _currency(match: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCY_SYMBOLS[match["sym"]]
    whole, frac, scale = match["num"], match["frac"], match["scale"]
    neg = "minus " if match["neg"] else ""
    if scale:
        scale_word = {"k": "thousand", "m": "million", "bn": "billion"}.get(
            scale.lower(), scale.lower()
        )
        return f"{neg}{_spoken_number(whole, frac)} {scale_word} {many}"
    amount = _integer(whole)
    unit = one if amount == 1 else many
    spoken = f"{_words(amount)} {unit}"
    if frac and sub_one and int(frac[:2].ljust(2, "0")) > 0:
        cents = int(frac[:2].ljust(2, "0"))
        sub = sub_one if cents == 1 else sub_many
        spoken = f"{spoken} and {_words(cents)} {sub}" if amount else f"{_words(cents)} {sub}"
    return neg + spoken


def _currency_code(match: re.Match) -> str:
    symbol = _CODE_TO_SYMBOL[match["code"]]
    frac = f".{match['frac']}" if match["frac"] else ""
    return _CURRENCY.sub(_currency, f"{symbol}{match['num']}{frac}")


def _time(match: re.Match) -> str:
    hour, minute, ampm = int(match["h"]), int(match["m"]), match["ampm"] or match["ampm2"]
    suffix = f" {ampm.lower()} m" if ampm else ""
    if ampm and minute == 0:
        return f"{_words(hour)}{suffix}"
    if minute == 0:
        return f"{_words(hour)} o'clock" if hour else "midnight"
    minutes = f"oh {_words(minute)}" if minute < 10 else _words(minute)
    return f"{_words(hour)} {minutes}{suffix}"


def _hour_ampm(match: re.Match) -> str:
    ampm = match["ampm"] or match["ampm2"]
    return f"{_words(int(match['h']))} {ampm.lower()} m"


def _percent(match: re.Match) -> str:
    num = match["num"]
    neg = "minus " if num.startswith("-") else ""
    whole, _, frac = num.lstrip("-").partition(".")
    return f"{neg}{_spoken_number(whole, frac or None)} percent"


def _degrees(match: re.Match) -> str:
    num = match["num"]
    neg = "minus " if num.startswith("-") else ""
    whole, _, frac = num.lstrip("-").partition(".")
    unit = {"C": " Celsius", "F": " Fahrenheit"}.get(match["unit"] or "", "")
    return f"{neg}{_spoken_number(whole, frac or None)} degrees{unit}"


def _ordinal(match: re.Match) -> str:
    return _words(int(match["num"]), to="ordinal")


def _year(match: re.Match) -> str:
    return _words(int(match["num"]), to="year")


def _decade(match: re.Match) -> str:
    spoken = _words(int(match["num"]), to="year")
    if spoken.endswith("y"):
        return spoken[:-1] + "ies"
    return spoken + "s"


def _number(match: re.Match) -> str:
    neg = "minus " if match["neg"] else ""
    return neg + _spoken_number(match["num"], match["frac"])


def _url(match: re.Match) -> str:
    url = match.group(0).rstrip(".,;:!?")
    trailing = match.group(0)[len(url) :]
    host = re.sub(r"^(?:https?://)?(?:www\.)?", "", url, flags=re.IGNORECASE).split("/")[0]
    host = host.split("?")[0].split("#")[0]
    return " dot ".join(part for part in host.split(".") if part) + trailing


def _email(match: re.Match) -> str:
    user = match[1].replace(".", " dot ")
    domain = " dot ".join(match[2].split("."))
    return f"{user} at {domain}"


def strip_markdown(text: str) -> str:
    """Remove Markdown markup, keeping the words a listener needs."""
    text = _CODE_FENCE.sub("", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _TABLE_SEP.sub("", text)
    text = _RULE.sub("", text)
    text = _HEADER.sub("", text)
    text = _BLOCKQUOTE.sub("", text)
    text = _BULLET.sub("", text)
    text = _NUMBERED.sub("", text)
    for _ in range(2):  # nested emphasis, e.g. ***bold italic*** or **_both_**
        text = _EMPHASIS.sub(r"\2", text)
        text = _UNDERSCORE_EM.sub(r"\1", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _HTML_TAG.sub("", text)
    # Table rows: outer pipes go, inner pipes become pauses.
    text = re.sub(r"^[ \t]*\|(.*?)\|?[ \t]*$", r"\1", text, flags=re.MULTILINE)
    text = re.sub(r"[ \t]*\|[ \t]*", ", ", text)
    return text


def strip_emoji(text: str) -> str:
    """Remove emoji and pictographic symbols (a space stays where one separated words)."""
    text = _EMOJI.sub(" ", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cs")


def expand_numbers(text: str) -> str:
    """Spell out currencies, times, percentages, ordinals, years and plain numbers."""
    text = _CURRENCY.sub(_currency, text)
    text = _CURRENCY_CODE.sub(_currency_code, text)
    text = _TIME.sub(_time, text)
    text = _HOUR_AMPM.sub(_hour_ampm, text)
    text = _PERCENT.sub(_percent, text)
    text = _DEGREES.sub(_degrees, text)
    text = _ORDINAL.sub(_ordinal, text)
    text = _DECADE.sub(_decade, text)
    text = _RANGE.sub(" to ", text)
    text = _YEAR.sub(_year, text)
    text = _NUMBER.sub(_number, text)
    return text


def speakable_text(text: str) -> str:
    """Rewrite LLM output into text a TTS voice can read naturally.

    Args:
        text: One sentence (or any fragment) of LLM output.

    Returns:
        The text with markup, emoji and URLs removed or reworded and numbers spelled out.
    """
    text = strip_markdown(text)
    text = _URL.sub(_url, text)
    text = _EMAIL.sub(_email, text)
    text = strip_emoji(text)
    for pattern, replacement in _ABBREVIATIONS:
        text = pattern.sub(replacement, text)
    text = expand_numbers(text)
    text = re.sub(r"[ \t]+([,.!?;:])", r"\1", text)
    # A line break (list item, table row, paragraph) is a pause when nothing else marks it.
    text = re.sub(r"(?<=[\w)\"'])[ \t]*\n\s*", ". ", text)
    text = re.sub(r"\s*\n\s*", " ", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip(" \t")


async def speakable_transform(text: str, text_type: str) -> str:
    """Pipecat ``TextTransform`` wrapper of :func:`speakable_text`."""
    return speakable_text(text)


def speakable_transforms() -> list[tuple[str, Callable]]:
    """The ``text_transforms`` list to pass to any Pipecat TTS service."""
    return [("*", speakable_transform)]
