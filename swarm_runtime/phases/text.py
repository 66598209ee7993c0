"""The words a task is about, as the router and the critic both compare them.

A text is split into lowercase words (identifiers on `_` and camelCase), each folded to a
rough stem so "parsing" meets "parse", and the words every task uses are left out: they
say a text is about work, not which work.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

WORD = re.compile(r"[^\W_]+")
CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
FILE_EXTENSION = re.compile(
    r"(?<=[\w-]\.)(?:json|jsonl|csv|tsv|txt|md|py|yaml|yml|toml|ini|cfg|xml|html|log)\b",
    re.IGNORECASE,
)
STEM_SUFFIXES = (
    ("ically", "ic"),
    ("ly", ""),
    ("ies", "y"),
    ("ied", "y"),
    ("ing", ""),
    ("ed", ""),
    ("es", ""),
    ("s", ""),
)

# Function words, plus the verbs and nouns every coding task uses: they say a task is work,
# not which work, so matching on them is what dragged unrelated tools into prompts.
STOP_WORDS = frozenset(
    """
a about above after again against all also an and any are as at back be been before being
below between both but by can could did do does doing done down during each else etc every
few for from further had has have having he her here hers him his how i if in into is it its
itself just let like may me might more most must my no nor not now of off on once only onto or
other our ours out over own per please same she should so some such than that the their them
then there these they this those through to too under until up upon us very via was we were
what when where which while who whom why will with within would yet you your yours
add added adding build change code create edit file files data fix function functions
generate handle helper implement implementation improve make method modify module new
program project refactor script simple small support task thing something update use used
using want need way work ensure sure able
clear clearly good better proper properly correct correctly quick quickly nice
""".split()
)


def stem(word: str) -> str:
    """Fold plurals and -ing/-ed/-ly forms together, so "parsing" meets "parse"."""
    for suffix, replacement in STEM_SUFFIXES:
        if word.endswith(suffix) and not word.endswith("ss"):
            candidate = word[: -len(suffix)] + replacement
            if len(candidate) >= 3:
                word = candidate
                break
    return word[:-1] if len(word) >= 4 and word.endswith("e") else word


STOP_STEMS = STOP_WORDS | {stem(word) for word in STOP_WORDS}


def words(text: str) -> Iterator[tuple[str, int]]:
    """Lowercase word parts with their offsets. A file extension (the `json` of
    `config.json`) names a file, not the work, so it is left out."""
    extensions = {match.start() for match in FILE_EXTENSION.finditer(text)}
    for match in WORD.finditer(text):
        start = match.start()
        for part in CAMEL_BOUNDARY.split(match.group()):
            if start not in extensions:
                yield part.lower(), start
            start += len(part)


def key_words(text: str, min_length: int = 2) -> list[tuple[str, int]]:
    """The stems of the words that say what a text is about, with where each word starts;
    numbers, stop words and words shorter than `min_length` are left out."""
    found = []
    for word, start in words(text):
        token = stem(word)
        if len(word) >= min_length and not word.isdigit() and {word, token}.isdisjoint(STOP_STEMS):
            found.append((token, start))
    return found
