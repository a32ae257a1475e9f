"""Real recorded speech for end-to-end tests and benchmarks (fetched, never committed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.agent_process import REPO_ROOT

SPEECH_DIR = Path(os.environ.get("SPEECH_CACHE_DIR", "~/.cache/voice-agent/speech"))
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch_speech.py"


@dataclass(frozen=True)
class Utterance:
    """One recording and its reference text."""

    id: str
    path: Path
    text: str
    duration_s: float


def load_utterances(speech_dir: Path | str = SPEECH_DIR, *, fetch: bool = True) -> list[Utterance]:
    """Every utterance in the speech cache, fetching it first if it is empty.

    Raises:
        RuntimeError: If fetching fails (the message has the fetcher's output).
    """
    speech_dir = Path(speech_dir).expanduser()
    manifest = speech_dir / "manifest.jsonl"
    if not manifest.is_file() and fetch:
        result = subprocess.run(
            [sys.executable, str(FETCH_SCRIPT), "--dest", str(speech_dir)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{FETCH_SCRIPT.name} failed:\n{result.stdout}\n{result.stderr}")
    if not manifest.is_file():
        return []
    found = []
    for line in manifest.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            found.append(
                Utterance(
                    entry["id"], speech_dir / entry["path"], entry["text"], entry["duration_s"]
                )
            )
    return found


def questions(utterances: list[Utterance], max_secs: float = 6.0) -> list[Utterance]:
    """Utterances that ask something (their text ends with ``?``), shortest first."""
    asked = [u for u in utterances if u.text.rstrip().endswith("?") and u.duration_s <= max_secs]
    return sorted(asked, key=lambda u: u.duration_s)


_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped."""
    return _WORD.findall(text.lower().replace("’", "'"))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words divided by the reference length."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / len(ref)


# Function words carry no topic: overlap on them says nothing about relatedness.
STOPWORDS = frozenset(
    """a an the and or but if so to of in on at by for with from into about as is are was
    were be been being am do does did done have has had having i me my mine you your yours
    he him his she her it its we us our they them their this that these those what which who
    whom whose when where why how not no yes can could should would will shall may might
    must there here than then just also very too up down out over under again only own same
    some any all each few more most other such s t don't i'm it's you're let's please ok
    okay oh well""".split()
)


def content_words(text: str) -> set[str]:
    """Topic-bearing words: no stopwords, crude plural folding."""
    found = set()
    for word in words(text):
        if word in STOPWORDS or len(word) < 3:
            continue
        found.add(word[:-1] if word.endswith("s") and len(word) > 4 else word)
    return found
