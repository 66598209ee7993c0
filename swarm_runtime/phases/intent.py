"""What the user asked for, kept beside a task so every prompt derived from it keeps the goal.

Extraction is deterministic: a prompt is cut into sentences and each sentence is sorted by
whole-word cues ("must", "prefer", "don't"), so the same prompt always yields the same intent
and a subtask written long after its parent still sees the parent's words. The small text
helpers at the top are shared with `decomposition`, so both read prompts the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from swarm_runtime.contract import Mode, Task

INTENT_HEADING = "## USER INTENT (Do not deviate)"
INTENT_END = "## END USER INTENT"
GOAL_CHARS = 200
ITEM_CHARS = 300
ELLIPSIS = "…"

# A word edge that also treats apostrophes and hyphens as part of a word ("don't", "next-gen").
_BEFORE = r"(?<![\w'’-])"
_AFTER = r"(?![\w'’-]|\.\w)"


def whole_words(*phrases: str) -> re.Pattern[str]:
    """Case-insensitive, whole-word matcher: `then` never fires inside "authentication"."""
    ordered = sorted(phrases, key=len, reverse=True)
    alternatives = "|".join(_phrase_pattern(phrase) for phrase in ordered)
    return re.compile(rf"{_BEFORE}(?:{alternatives}){_AFTER}", re.IGNORECASE)


def _phrase_pattern(phrase: str) -> str:
    words = [re.escape(word).replace("'", "['’]") for word in phrase.split()]
    return r"\s+".join(words)


FILLER = (
    "please",
    "kindly",
    "can you",
    "could you",
    "would you",
    "will you",
    "i want you to",
    "i'd like you to",
    "i would like you to",
    "let's",
)
_LEADING_FILLER = re.compile(
    rf"^[\s,]*(?:(?:{'|'.join(_phrase_pattern(f) for f in FILLER)}){_AFTER}[\s,:]*)+",
    re.IGNORECASE,
)
LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+(?:\[[ xX]\]\s+)?")


def strip_filler(text: str) -> str:
    """Politeness carries no intent; removing it keeps goals and features comparable."""
    return _without_trailing_please(_LEADING_FILLER.sub("", text))


def _without_trailing_please(text: str) -> str:
    """ "…, please?" keeps its "?"; done without a regex so a long prompt stays linear."""
    body = text.rstrip(".!? \t\n")
    head = body[: -len("please")]
    if body.lower().endswith("please") and head[-1:] in (" ", ",", "\t"):
        return head.rstrip(" ,\t") + text[len(body) :]
    return text


def sentence_case(text: str) -> str:
    """Capitalize a lower-case first word only, so "iOS" or "npm" style names survive."""
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    if not first or first != first.lower():
        return text
    return text[0].upper() + text[1:]


def tidy(text: str) -> str:
    """One clean line: no list marker, filler, doubled spaces or trailing punctuation."""
    text = strip_filler(LIST_MARKER.sub("", text))
    return sentence_case(" ".join(text.split()).lstrip(",;:").rstrip(" ,;:.!?").strip())


def logical_lines(text: str, opens_item: Callable[[str], bool] | None = None) -> list[str]:
    """Lines without list markers, with hard-wrapped prose joined back: a line continues the
    one before when it is unmarked, starts in lower case, the line before it is unfinished,
    and `opens_item` (if given) does not claim it as a new item."""
    lines: list[list[str]] = []
    joinable = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            joinable = False
            continue
        marker = LIST_MARKER.match(line)
        body = line[marker.end() :] if marker else line
        if joinable and not marker and _continues(lines[-1][-1], body, opens_item):
            lines[-1].append(body)
        else:
            lines.append([body])
        joinable = True
    return [" ".join(parts) for parts in lines]


def _continues(previous: str, line: str, opens_item: Callable[[str], bool] | None) -> bool:
    return (
        line[:1].islower()
        and not previous.endswith((".", "!", "?", ":", ";"))
        and not (opens_item and opens_item(line))
    )


def shorten(text: str, limit: int) -> str:
    """Cut at a word edge so a capped goal never ends mid-word."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] or text[:limit]
    return cut.rstrip(" ,;:") + ELLIPSIS


def dedupe(items: Iterable[str]) -> list[str]:
    """Case-insensitive, first spelling and order kept."""
    seen: set[str] = set()
    kept = []
    for item in items:
        key = item.casefold()
        if item and key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


# --- the intent -------------------------------------------------------------------------

CONSTRAINT_CUES = whole_words(
    "must",
    "should",
    "required",
    "require",
    "requires",
    "only",
    "exactly",
    "at most",
    "at least",
    "within",
    "no more than",
    "always",
    "need to",
    "needs to",
)
PREFERENCE_CUES = whole_words(
    "prefer",
    "preferably",
    "preferred",
    "ideally",
    "if possible",
    "nice to have",
    "would like",
    "would be nice",
    "optionally",
)
_NEGATIONS = whole_words(
    "don't",
    "dont",
    "do not",
    "never",
    "avoid",
    "without",
    "must not",
    "mustn't",
    "should not",
    "shouldn't",
    "no need to",
)
# "no <noun>" forbids something; "no more than" and friends bound it instead.
_NO_NOUN = re.compile(
    rf"{_BEFORE}no\s+(?!(?:more|less|fewer|later|sooner|longer|need|one|matter|doubt)\b)(?=\w)",
    re.IGNORECASE,
)
_CLAUSE_TAIL = re.compile(r",\s*(?:and|but|then|so|while|yet|or)\b.*$", re.IGNORECASE | re.DOTALL)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<!\s)\s*;\s*")


class UserIntent(BaseModel):
    """The parent's goal and limits; `inherited` marks a copy handed to a subtask."""

    model_config = ConfigDict(extra="ignore")

    goal: str
    constraints: list[str] = Field(default_factory=list)
    preferences: list[str] = Field(default_factory=list)
    anti_goals: list[str] = Field(default_factory=list)
    source: Literal["extracted", "inherited"] = "extracted"

    @field_validator("constraints", "preferences", "anti_goals", mode="before")
    @classmethod
    def _as_list(cls, value: object) -> object:
        """Operators seed intents by hand; a single string is one item, blanks are dropped."""
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [
                item.strip() if isinstance(item, str) else item
                for item in value
                if not (isinstance(item, str) and not item.strip())
            ]
        return value


def extract_intent(prompt: str) -> UserIntent:
    """Goal from the first sentence; constraints, preferences and anti-goals by their cues."""
    sentences = [
        tidy(raw) for line in logical_lines(prompt or "") for raw in _SENTENCE_BREAK.split(line)
    ]
    sentences = [sentence for sentence in sentences if sentence]
    return UserIntent(
        goal=shorten(_goal(sentences), GOAL_CHARS),
        constraints=_capped(s for s in sentences if CONSTRAINT_CUES.search(s)),
        preferences=_capped(s for s in sentences if PREFERENCE_CUES.search(s)),
        anti_goals=_capped(target for s in sentences if (target := anti_goal(s))),
    )


def _goal(sentences: list[str]) -> str:
    """The first sentence, unless it only forbids something and a later one says what to do."""
    for sentence in sentences:
        if not _starts_with_negation(sentence):
            return sentence
    return sentences[0] if sentences else ""


def _starts_with_negation(sentence: str) -> bool:
    found = _NEGATIONS.match(sentence) or _NO_NOUN.match(sentence)
    return found is not None


def anti_goal(sentence: str) -> str | None:
    """What a sentence forbids: the words after its negation, up to the next clause."""
    found = _NEGATIONS.search(sentence) or _NO_NOUN.search(sentence)
    if found is None:
        return None
    target = tidy(_CLAUSE_TAIL.sub("", sentence[found.end() :]))
    return target or sentence


def _capped(items: Iterable[str]) -> list[str]:
    return dedupe(shorten(item, ITEM_CHARS) for item in items)


def with_intent(task: Task) -> Task:
    """An llm task carrying its intent in `phase4_intent`, ready to be persisted. A stored
    intent (a subtask's inherited copy, an operator's seed, an earlier attempt's) is kept,
    so retries and subtasks send the same goal; local commands get none."""
    if task.effective_mode != Mode.LLM or not task.prompt or task.phase4_intent:
        return task
    extracted = extract_intent(task.prompt).model_dump(mode="json")
    return task.model_copy(update={"phase4_intent": extracted})


def intent_from_task(task: Task) -> UserIntent:
    """The stored intent when the task carries one (a missing goal is filled from the
    prompt), otherwise a fresh extraction. A malformed stored intent raises ValidationError."""
    if not task.phase4_intent:
        return extract_intent(task.prompt or "")
    seeded: dict[str, Any] = dict(task.phase4_intent)
    if not isinstance(seeded.get("goal"), str) or not seeded["goal"].strip():
        seeded["goal"] = extract_intent(task.prompt or "").goal
    return UserIntent.model_validate(seeded)


# --- the prompt block -------------------------------------------------------------------

_BLOCK = re.compile(
    rf"^{re.escape(INTENT_HEADING)}$.*?^{re.escape(INTENT_END)}$\n*",
    re.DOTALL | re.MULTILINE,
)


def intent_block(intent: UserIntent) -> str:
    """Items are flattened to one line each, so no item can end the block early."""
    lines = [INTENT_HEADING, f"Goal: {_one_line(intent.goal) or '(not stated)'}"]
    for title, items in (
        ("Constraints", intent.constraints),
        ("Preferences", intent.preferences),
        ("Avoid", intent.anti_goals),
    ):
        if items:
            lines += [f"{title}:", *(f"- {_one_line(item)}" for item in items)]
    lines.append(INTENT_END)
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def inject_intent(prompt: str, intent: UserIntent) -> str:
    """Prepend the block; an earlier block is replaced, so retries never stack them."""
    return f"{intent_block(intent)}\n\n{_BLOCK.sub('', prompt)}"
