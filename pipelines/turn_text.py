"""Does a transcript read as a finished utterance? A rule from English syntax, no model.

Smart Turn v3 judges from the audio alone and calls many plain, complete statements incomplete
(read speech in particular: flat, even prosody at the end). The transcript says more: a
sentence that ends in a conjunction, an article, a preposition with nothing to strand it, a
subject pronoun or a filler is unfinished whatever its prosody; one that ends in sentence-final
punctuation from a model that punctuates, with none of those cues, is finished.

The rule errs towards "unfinished": that verdict only keeps the turn model's long wait (the
behaviour without this rule), while a wrong "complete" cuts the user off. So ambiguous endings
("I'd love to.", "What is it made out of?") count as unfinished.

Two kinds of ASR output are handled:

- formatted (capitals and punctuation: Whisper, Nemotron): sentence-final ``.``, ``!`` or ``?``
  is required; a missing one means the model heard no sentence end;
- unformatted (one letter case, no punctuation: the tiny test model, CTC models): the lexical
  cues alone decide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TERMINAL = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_TRAILS_OFF = re.compile(r"(\.\.\.|\u2026)[\"'\u201d\u2019)\]]*$")
_OPEN_PUNCTUATION = re.compile(r"[,;:\-\u2013\u2014]$")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")

# Hesitation sounds: the speaker is holding the floor while planning what comes next.
FILLERS = frozenset("um umm uh uhh uhm er erm ah eh hmm mm mhm".split())
# Words that only open something: a clause, a noun phrase. Nothing can follow them and end.
CONJUNCTIONS = frozenset("and but or nor because cause cuz although unless whereas whether".split())
# Contracted auxiliaries cannot end a clause ("*I know where it's"): something must follow.
CONTRACTIONS = ("'re", "'m", "'ll", "'ve", "'d")
COPULA_CONTRACTIONS = frozenset(
    "it's that's there's here's what's who's where's how's he's she's let's".split()
)
DETERMINERS = frozenset("a an the my your our their its every".split())
# Prepositions that take an object. At the end they are finished only when something earlier
# moved that object away ("What are you looking at?", "the one I asked for"). Particles that
# end phrasal verbs on their own ("turn it off", "come in", "hold on") are not here.
PREPOSITIONS = frozenset(
    """of to for with from at about into onto than as between without toward towards among
    during per via upon within until till""".split()
)
# Words that can leave a gap for a final preposition or verb to point back to: wh-words,
# relative pronouns and indefinite pronouns that take a relative clause.
# ("when", "why" and "how" leave no object gap: "how do you deal with" is unfinished.)
GAP_FILLERS = frozenset(
    """what which who whom whose where whatever whichever whoever whomever wherever that
    something anything nothing everything someone anyone everyone somebody anybody nobody
    everybody""".split()
)
# Before these, "that" is a complementizer opening a clause, not a relative pronoun.
COMPLEMENTIZER_HEADS = frozenset(
    """think thought believe hope guess feel felt sure realize realized wish glad afraid seems
    seem suggest claim so such said say says know knew told tell mean heard is was""".split()
)
WH_WORDS = frozenset("what which who whom whose where when why how".split())
# "kind of", "a lot of", "because of": quantity and complex prepositions, never stranded.
OF_HEADS = frozenset(
    """kind sort lot lots some all most one each many few none part because instead front
    terms top full couple bunch number piece bit rest half both any much out""".split()
)
# Words before "to" that make it an infinitive marker: "I want to", "going to", "have to".
INFINITIVE_HEADS = frozenset(
    """want wants wanted going have has had need needs needed like love try trying tried able
    used supposed got ought plan planning hope hoping due about wish start started begin
    decided decide""".split()
)
# Verbs that need their object ("I want", "can you give me"), unless a gap explains its
# absence ("whatever you want") or a conditional elides it ("if you want").
# Only after a subject, a modal or "to": "what a find" and "a great show" are nouns.
TRANSITIVE_VERBS = frozenset("want need give bring put buy send tell show find".split())
VERB_HEADS = frozenset(
    """i you we they he she to please can could will would should must might may do did don't
    didn't just also really still i'll we'll you'll i'd we'd you'd let's""".split()
)
VERB_GAP_OPENERS = GAP_FILLERS | frozenset("if as when whenever how".split())
# "tell me", "give us", "let me": a second object or a verb must follow.
DITRANSITIVE_VERBS = frozenset(
    "tell give show send bring buy hand pass teach lend let make makes".split()
)
OBJECT_PRONOUNS = frozenset("me us him her them".split())
# "it looks like", "I'd like": "like" wanting its object; "if you like" is finished.
LIKE_HEADS = frozenset(
    """look looks looked sound sounds seem seems feel feels felt was is were just it's
    something kind sort would i'd you'd we'd i we they don't really more""".split()
)
# "I think", "I wonder": a clause-taking verb right after its subject opens the utterance.
OPENING_VERBS = frozenset("think wonder feel believe".split())
# Subject pronouns: a clause that ends on its subject has not reached its verb yet, unless
# subject and auxiliary were inverted ("so do I", "shall we", "than I").
SUBJECT_PRONOUNS = frozenset("i we they he she".split())
AUXILIARIES = frozenset(
    """am is are was were be been do does did have has had can could will would shall should
    may might must don't doesn't didn't can't couldn't won't wouldn't shouldn't isn't aren't
    wasn't weren't haven't hasn't hadn't than as""".split()
)
BE_FORMS = frozenset("is are was were".split())
# Pronouns that can be the subject of a final "is": "here it is", "yes they are".
# ("this is", "there is" open a clause far more often than they answer.)
PRONOUNS = frozenset("i you he she it we they who what which".split())
# Verbs of thinking after which "that" opens a clause ("I think that ...").
THAT_CLAUSE_HEADS = frozenset(
    """think thought believe hope guess feel felt sure realize realized wish glad afraid seems
    seem suggest claim so such""".split()
)
# "I think so", "I hope so", "even so": "so" as a pro-form, not a conjunction.
SO_PROFORM_HEADS = frozenset(
    """think thought hope guess believe suppose say said told expect imagine fear seems seem
    appears do does did not even just why or quite that more less only""".split()
)
SENTENCE_OPENERS = frozenset("so well like".split())
# Auxiliaries that invert with the subject in a question: "what should I [do]".
MODALS = frozenset(
    """do does did can could will would shall should may might must am is are was were have
    has had don't doesn't didn't can't couldn't won't wouldn't shouldn't""".split()
)
# Adverbs that sit between a modal or subject and the verb still to come: "we should
# probably", "could you please", "I really".
PRE_VERB_ADVERBS = frozenset(
    "probably definitely just please really also actually certainly maybe still even".split()
)
# Verbs whose "on" is a preposition wanting its object, not a particle ("hold on").
ON_VERBS = frozenset(
    """depends depend depending rely relies relying based focus focused count insist
    concentrate""".split()
)
PROGRESSIVE_FUTURES = frozenset("gonna wanna gotta".split())


@dataclass(frozen=True)
class TextVerdict:
    """Whether a transcript reads as a finished utterance, and why."""

    complete: bool
    reason: str


def words_of(text: str) -> list[str]:
    """Lower-case words with their apostrophes (``don't``), punctuation dropped."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def is_formatted(text: str) -> bool:
    """Whether the ASR formats its output: both letter cases occur (so it capitalizes)."""
    letters = [c for c in text if c.isalpha()]
    return any(c.isupper() for c in letters) and any(c.islower() for c in letters)


def _has_gap_filler(words: list[str], openers: frozenset[str] = GAP_FILLERS) -> bool:
    """Whether an earlier word can fill the gap a final preposition or verb leaves."""
    for index, word in enumerate(words[:-1]):
        if word == "that" and (index == 0 or words[index - 1] in COMPLEMENTIZER_HEADS):
            # "That makes me": a demonstrative; "I think that we should talk about": a
            # clause opener. Neither is a relative pronoun leaving a gap.
            continue
        if word in openers:
            return True
    return False


def unfinished_cue(words: list[str]) -> str | None:
    """The syntactic reason the words cannot end an utterance, or None if they can."""
    if not words:
        return "no words"
    last = words[-1]
    prev = words[-2] if len(words) > 1 else ""
    prev2 = words[-3] if len(words) > 2 else ""
    if last in FILLERS:
        return f"ends in the filler '{last}'"
    if len(words) == 1 and last in SENTENCE_OPENERS:
        return f"only the opener '{last}'"
    if last in CONJUNCTIONS:
        return f"ends in the conjunction '{last}'"
    if last.endswith(CONTRACTIONS) or last in COPULA_CONTRACTIONS:
        return f"ends in the contraction '{last}'"
    if last == "so" and prev not in SO_PROFORM_HEADS:
        return "ends in the conjunction 'so'"
    if last == "if" and prev not in ("what", "as"):
        return "ends in the conjunction 'if'"
    if last in ("then", "yet") and prev in ("and", "but", "so", "or"):
        return f"ends in '{prev} {last}'"
    if last in DETERMINERS:
        return f"ends in the determiner '{last}'"
    if last == "very" or (last == "too" and (prev in BE_FORMS or prev in COPULA_CONTRACTIONS)):
        return f"ends in the intensifier '{last}'"
    if last in PROGRESSIVE_FUTURES:
        return f"ends in '{last}'"
    if last == "of" and prev in OF_HEADS:
        return f"ends in '{prev} of'"
    if last == "to" and prev in INFINITIVE_HEADS:
        return f"ends in the infinitive marker ('{prev} to')"
    if last in PREPOSITIONS and not _has_gap_filler(words):
        return f"ends in the preposition '{last}' with nothing to strand it"
    if (
        last in TRANSITIVE_VERBS
        and (prev in VERB_HEADS or len(words) == 1)
        and not _has_gap_filler(words, VERB_GAP_OPENERS)
    ):
        return f"ends in the verb '{last}' without its object"
    if last in OBJECT_PRONOUNS and prev in DITRANSITIVE_VERBS and not _has_gap_filler(words):
        return f"ends in '{prev} {last}', which wants what is given or told"
    if last == "like" and prev in LIKE_HEADS and not _has_gap_filler(words):
        return f"ends in '{prev} like' without its object"
    if len(words) == 2 and words[0] in SUBJECT_PRONOUNS and last in OPENING_VERBS:
        return f"only the opening '{words[0]} {last}'"
    if (
        (last in SUBJECT_PRONOUNS | {"you"} and prev in MODALS)
        or (last == "it" and prev in MODALS - BE_FORMS - {"am"})
    ) and any(w in WH_WORDS for w in words[:-2]):
        return f"the question stops at '{prev} {last}', before its verb"
    if last in PRE_VERB_ADVERBS and prev in MODALS | SUBJECT_PRONOUNS | {"you"}:
        return f"ends in '{prev} {last}', before the verb"
    if last == "on" and prev in ON_VERBS:
        return f"ends in '{prev} on' without its object"
    if last in SUBJECT_PRONOUNS and prev not in AUXILIARIES:
        return f"ends in the subject pronoun '{last}'"
    if last in BE_FORMS and prev and prev not in PRONOUNS:
        # "I know where the station is" (an embedded question) is finished; "the problem
        # is" and "what I mean is" (the wh-clause is the subject) are not.
        if not any(w in WH_WORDS for w in words[1:-1]):
            return f"ends in '{prev} {last}' with no complement"
    if last == "that" and (
        prev in THAT_CLAUSE_HEADS or (prev in BE_FORMS and prev2 and prev2 not in PRONOUNS)
    ):
        return f"ends in '{prev} that', which opens a clause"
    if last == "know" and prev == "you" and prev2 not in AUXILIARIES | WH_WORDS:
        return "ends in the tag 'you know'"
    if last == "mean" and prev == "i" and not _has_gap_filler(words):
        return "ends in the tag 'I mean'"
    return None


def judge_transcript(text: str) -> TextVerdict:
    """Judge whether ``text`` (a turn's transcript) reads as a finished utterance.

    Returns:
        The verdict with a short reason for the log.
    """
    stripped = text.strip()
    words = words_of(stripped)
    if not words:
        return TextVerdict(False, "no words in the transcript")
    if _TRAILS_OFF.search(stripped):
        return TextVerdict(False, "trails off ('...')")
    if _OPEN_PUNCTUATION.search(stripped):
        return TextVerdict(False, f"ends with '{stripped[-1]}'")
    cue = unfinished_cue(words)
    if cue is not None:
        return TextVerdict(False, cue)
    match = _TERMINAL.search(stripped)
    if match:
        return TextVerdict(True, f"sentence-final '{match.group(0)[0]}' and no unfinished cue")
    if is_formatted(stripped):
        return TextVerdict(False, "no sentence-final punctuation from an ASR that punctuates")
    return TextVerdict(True, "no unfinished cue (unpunctuated transcript)")
