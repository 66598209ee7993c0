"""Undo the disguises that hide a word from a pattern, before any rule reads the text.

`curl` written with a Cyrillic `с`, `ignore` with a combining accent on each letter, a zero
width joiner, a variation selector or an invisible tag character inside `bash`: each
leaves the text readable to a model and invisible to a regex. Folding maps every such text
to one skeleton (after Unicode TS #39): compatibility decomposition, then every format
character (Cf: joiners, bidi controls, tag characters) and every combining mark (Mn, Me,
which include the variation selectors) dropped, then each character that looks like an
ASCII one replaced by it, then lower case. The skeleton is for matching only; nobody
reads it.

The look-alike data is Unicode's confusables list as shipped by `confusable-homoglyphs`,
read straight from the package (its loader would follow an environment variable to
another file); the table is built once per process (about 0.15 s), when the gateway is
built, so that no task pays for it.
"""

from __future__ import annotations

import functools
import json
import sys
import unicodedata
from importlib import resources

# Planes where marks and format characters live: the BMP, the SMP, and the tags and
# variation selectors supplement.
_SCANNED = (range(0x80, 0x20000), range(0xE0000, 0xE01F0))
_DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf"})
# Letters Unicode does not list as confusable, though they pass for Latin ones in a word set
# in most fonts: Greek eta, iota, nu, tau, kappa, rho, chi, upsilon, omega.
_SUPPLEMENT = {
    "\u03b7": "n", "\u03b9": "i", "\u03bd": "v", "\u03c4": "t", "\u03ba": "k",
    "\u03c1": "p", "\u03c7": "x", "\u03c5": "u", "\u03c9": "w",
}  # fmt: skip
# Of two ASCII look-alikes the letter wins: `ǀ` reads as `l` in a word more than as `|`.
_PREFERENCE = "abcdefghijklmnopqrstuvwxyz0123456789"


def fold(text: str) -> str:
    """The skeleton of `text`: lower case, disguises undone. ASCII text only lower-cases.

    Each distinct character is replaced once, with `str.replace`: `str.translate` spends
    about 100 ns on every character, a third of the budget for a 4 KB prompt."""
    if text.isascii():
        return text.lower()
    folded = unicodedata.normalize("NFKD", text)
    table = skeleton_table()
    for char in table.keys() & set(folded):
        folded = folded.replace(char, table[char])
    return folded.lower()


@functools.cache
def skeleton_table() -> dict[str, str]:
    """What each disguising character becomes: nothing, or the ASCII character it mimics."""
    table = {**_SUPPLEMENT, **_ascii_lookalikes()}
    for plane in _SCANNED:
        for code in plane:
            if unicodedata.category(chr(code)) in _DROPPED_CATEGORIES:
                table[chr(code)] = ""
    return table


def _ascii_lookalikes() -> dict[str, str]:
    """Each non-ASCII character Unicode lists as confusable with one ASCII character."""
    chosen: dict[str, str] = {}
    data = resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8")
    listed: dict[str, list[dict[str, str]]] = json.loads(data)
    for key, glyphs in listed.items():
        pairs = [(key, glyph["c"]) for glyph in glyphs] + [(glyph["c"], key) for glyph in glyphs]
        for source, target in pairs:
            if len(source) == 1 and not source.isascii() and _is_ascii_char(target):
                chosen[source] = _better(chosen.get(source), _as_letter(source, target))
    return chosen


def _as_letter(source: str, target: str) -> str:
    """Unicode's prototype for every vertical stroke is `l`; a capital one (Greek `Ι`,
    Cyrillic `І`) stands for `i` in the words an attacker disguises."""
    return "i" if target.lower() == "l" and source.isupper() else target.lower()


def _is_ascii_char(text: str) -> bool:
    return len(text) == 1 and text.isascii() and text.isprintable()


def _better(current: str | None, candidate: str) -> str:
    if current is None:
        return candidate
    rank = {char: index for index, char in enumerate(_PREFERENCE)}
    return min(current, candidate, key=lambda char: rank.get(char, sys.maxsize))
