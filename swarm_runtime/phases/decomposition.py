"""Phase 4: whether a prompt is really several tasks, and how to turn it into a chain of them.

Everything here is a pure decision over plain values, so a plan can be tested without a queue:
`gut_check` scores the prompt, `break_into_features` finds its actions, `should_plan` decides,
and `plan_decomposition` writes the subtask records and the parent's changes for the queue
store to apply in one locked write. The parent runs last and gets its subtasks' results
through `parent_prompt_with_results`.

Splitting is deliberately conservative: a new feature starts only where a clause opens with
an imperative verb, so descriptive tails ("with OAuth2 support") and noun lists ("logging,
metrics, and alerts") stay in one piece.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from swarm_runtime.contract import (
    DEFAULT_MAX_BUDGET,
    DEFAULT_MIN_BUDGET,
    Mode,
    PlanFields,
    Status,
    Task,
    is_valid_task_id,
)
from swarm_runtime.phases.intent import FILLER, UserIntent, dedupe, logical_lines, tidy, whole_words
from swarm_runtime.store.events import cap_text

LONG_PROMPT_CHARS = 220
MIN_LINES = 2
MIN_ENUMERATION_MARKS = 2
MIN_IMPERATIVE_CLAUSES = 2
DECOMPOSE_AT_SCORE = 2
DEFAULT_MAX_FEATURES = 6
RESULT_CAP_BYTES = 4000
MAX_TASK_ID_CHARS = 128
SUBTASK_INFIX = "__phase4_"
RESULTS_HEADING = "## RESULTS OF SUBTASKS"
RESULTS_END = "## END RESULTS OF SUBTASKS"
NO_RESULT = "(no result recorded)"

SIGNALS = (
    "long_prompt",
    "multi_line",
    "sequencing_connectors",
    "comma_enumeration",
    "compound_clauses",
)
CONNECTORS = ("and then", "then", "also", "plus", "after that", "next", "finally")
# Verbs that open a task. Words that are as often nouns in a list ("log", "cache", "export")
# are left out on purpose: a false split costs more than a missed one.
IMPERATIVE_VERBS = (
    "add",
    "adjust",
    "analyze",
    "analyse",
    "audit",
    "benchmark",
    "build",
    "bump",
    "calculate",
    "change",
    "check",
    "clean",
    "compare",
    "compute",
    "configure",
    "convert",
    "create",
    "debug",
    "define",
    "delete",
    "deploy",
    "describe",
    "design",
    "disable",
    "document",
    "draft",
    "enable",
    "ensure",
    "evaluate",
    "explain",
    "expose",
    "extend",
    "extract",
    "fetch",
    "find",
    "fix",
    "generate",
    "handle",
    "harden",
    "identify",
    "implement",
    "improve",
    "install",
    "integrate",
    "introduce",
    "investigate",
    "make",
    "measure",
    "migrate",
    "modify",
    "monitor",
    "move",
    "optimize",
    "optimise",
    "parse",
    "polish",
    "prepare",
    "publish",
    "refactor",
    "remove",
    "rename",
    "render",
    "replace",
    "reproduce",
    "research",
    "resolve",
    "restructure",
    "review",
    "rewrite",
    "run",
    "sanitize",
    "secure",
    "set",
    "ship",
    "simplify",
    "summarize",
    "summarise",
    "switch",
    "test",
    "train",
    "translate",
    "tune",
    "update",
    "upgrade",
    "validate",
    "verify",
    "wire",
    "write",
)

_CONNECTOR = whole_words(*CONNECTORS)
_VERB = whole_words(*IMPERATIVE_VERBS)
# A verb opens a clause only with something after it: "run" alone is a list item.
_VERB_WITH_OBJECT = re.compile(rf"{_VERB.pattern}\s+[^\s,;.]", re.IGNORECASE)
# Each round must eat a whole word, so the repetition cannot backtrack badly.
_LEAD = re.compile(
    rf"^(?:[\s,:]*{whole_words('and', *CONNECTORS, *FILLER).pattern})*[\s,:]*", re.IGNORECASE
)
_CLAUSE_OPENER = re.compile(
    r"(?:[\n.!?;,:]|(?:^|\n)\s*(?:[-*+•]|\d{1,3}[.)])|"
    r"(?<![\w'’-])(?:and|then|also|plus|next|finally|after\s+that|please))$",
    re.IGNORECASE,
)
# `(?<!\s)` makes a long run of spaces cost one attempt, not one per space.
_SENTENCE_SEP = re.compile(r"((?<=[.!?])\s+|(?<!\s)\s*;\s*)")
_COMMA_SEP = re.compile(r"(,\s*)")
_CONNECTOR_SEP = re.compile(
    rf"(?<!\s)(,?\s+(?:and\s+)?{_CONNECTOR.pattern},?)(?=\s)",
    re.IGNORECASE,
)
_RESULTS = re.compile(
    rf"(?<!\n)\n*^{re.escape(RESULTS_HEADING)}$.*?^{re.escape(RESULTS_END)}$\n?",
    re.DOTALL | re.MULTILINE,
)


# --- the gut check ----------------------------------------------------------------------


class GutCheck(BaseModel):
    """How many complexity signals a prompt shows; the decision is `should_plan`'s."""

    score: int
    signals: list[str] = Field(default_factory=list)


def gut_check(prompt: str) -> GutCheck:
    """Deterministic: the same prompt always scores the same, so a plan can be replayed."""
    text = (prompt or "").strip()
    fired = {
        "long_prompt": len(text) >= LONG_PROMPT_CHARS,
        "multi_line": sum(1 for line in text.splitlines() if line.strip()) >= MIN_LINES,
        "sequencing_connectors": _CONNECTOR.search(text) is not None,
        "comma_enumeration": text.count(",") + text.count(";") >= MIN_ENUMERATION_MARKS,
        "compound_clauses": imperative_clauses(text) >= MIN_IMPERATIVE_CLAUSES,
    }
    signals = [name for name in SIGNALS if fired[name]]
    return GutCheck(score=len(signals), signals=signals)


def imperative_clauses(text: str) -> int:
    """Clauses that open with an imperative verb: at the start, after punctuation, a list
    marker, "and", or a connector. "Create X and add Y" has two; "with OAuth2 support" none."""
    first = len(text) - len(text.lstrip())
    count = 0
    for found in _VERB_WITH_OBJECT.finditer(text):
        window = text[max(first, found.start() - 40) : found.start()].rstrip(" \t")
        if found.start() <= first or _CLAUSE_OPENER.search(window):
            count += 1
    return count


def should_plan(task: Task, check: GutCheck, features: list[str]) -> tuple[bool, str]:
    """Whether to split the task, and why, in words fit for a log line."""
    refusal = _refusal(task, features)
    if refusal:
        return False, refusal
    if task.decompose is True:
        return True, "decomposition requested"
    described = f"complexity score {check.score} ({', '.join(check.signals) or 'no signals'})"
    if check.score >= DECOMPOSE_AT_SCORE:
        return True, described
    return False, f"{described} below {DECOMPOSE_AT_SCORE}"


def _refusal(task: Task, features: list[str]) -> str | None:
    if task.effective_mode == Mode.LOCAL:
        return "local commands run exactly as written"
    if not (task.prompt or "").strip():
        return "no prompt to split"
    for flag in ("phase4_planned", "phase4_generated", "phase4_skip"):
        if getattr(task, flag):
            return f"{flag} is set"
    if task.decompose is False:
        return "decompose is false"
    if len(features) < 2:
        return "fewer than two features"
    return None


# --- the feature breakdown --------------------------------------------------------------


def break_into_features(prompt: str, max_features: int | None = None) -> list[str]:
    """The prompt's separate actions in order; any beyond `max_features` (default 6) are
    merged into the last one, so no requested work is dropped."""
    items = logical_lines(prompt or "", _opens_clause)
    regular = [item for item in items if not item.endswith(":")] or items
    pieces = [piece for item in regular for piece in _split_item(item)]
    features = dedupe(tidy(_without_lead(piece)) for piece in pieces)
    return _merge_tail(features, max(1, max_features or DEFAULT_MAX_FEATURES))


def _split_item(item: str) -> list[str]:
    """Sentences, then commas, then bare connectors; each piece loses its leading connector
    before the next cut, so "and then update" is one piece, not "and" plus "update"."""
    pieces = [_without_lead(p) for p in _split_at(item, _SENTENCE_SEP, _opens_clause)]
    pieces = [_without_lead(part) for piece in pieces for part in _split_commas(piece)]
    return [part for piece in pieces for part in _split_at(piece, _CONNECTOR_SEP, _opens_clause)]


def _split_commas(text: str) -> list[str]:
    """A comma list with a one-word entry ("build, test, and deploy steps") is a list of
    nouns, not of actions, so it is never split."""
    parts = text.split(",")[1:]
    if any(len(_without_and(part).split()) <= 1 for part in parts):
        return [text]
    return _split_at(text, _COMMA_SEP, _opens_clause)


def _split_at(text: str, separator: re.Pattern[str], opens: Callable[[str], bool]) -> list[str]:
    """Cut at `separator` only where the next part opens a clause; elsewhere the separator
    and the part are glued back exactly as written."""
    parts = separator.split(text)
    pieces = [[parts[0]]]
    for sep, part in zip(parts[1::2], parts[2::2], strict=True):
        if opens(part):
            pieces.append([part])
        else:
            pieces[-1] += [sep, part]
    return ["".join(piece) for piece in pieces]


def _opens_clause(text: str) -> bool:
    return _VERB_WITH_OBJECT.match(_without_lead(text)) is not None


def _without_lead(text: str) -> str:
    """Drop leading "and", connectors and filler, but only in front of a verb: "Next steps"
    and "Next.js" keep their first word."""
    rest = _LEAD.sub("", text.strip(), count=1)
    return rest if _VERB_WITH_OBJECT.match(rest) else text.strip()


def _without_and(text: str) -> str:
    return re.sub(r"^\s*and\s+", "", text, flags=re.IGNORECASE)


def _merge_tail(features: list[str], limit: int) -> list[str]:
    if len(features) <= limit:
        return features
    return [*features[: limit - 1], "; ".join(features[limit - 1 :])]


# --- the plan ---------------------------------------------------------------------------


class Plan(BaseModel):
    """Subtask records and parent changes, ready for the queue store's single write."""

    subtasks: list[dict[str, Any]]
    parent_updates: dict[str, Any]
    features: list[str]
    subtask_ids: list[str]
    check: GutCheck


def subtask_ids(parent_id: str, count: int) -> list[str]:
    """`<parent>__phase4_01`, … kept within the id limit. A long parent id is cut and tagged
    with a hash of the whole id, so two long parents sharing a prefix never collide."""
    suffixes = [f"{SUBTASK_INFIX}{index:02d}" for index in range(1, count + 1)]
    room = MAX_TASK_ID_CHARS - max((len(s) for s in suffixes), default=0)
    stem = parent_id
    if len(parent_id) > room:
        digest = hashlib.sha256(parent_id.encode("utf-8")).hexdigest()[:8]
        stem = f"{parent_id[: room - len(digest) - 1]}-{digest}"
    ids = [stem + suffix for suffix in suffixes]
    if not all(is_valid_task_id(task_id) for task_id in ids):
        raise ValueError(f"cannot derive valid subtask ids from {parent_id!r}")
    return ids


def plan_decomposition(
    parent: Task, intent: UserIntent, check: GutCheck, features: list[str]
) -> Plan:
    """A strict chain: the first subtask inherits the parent's dependencies, each next one
    waits for the one before, and the parent waits for all of them."""
    if not features:
        raise ValueError(f"task {parent.id}: a plan needs at least one feature")
    ids = subtask_ids(parent.id, len(features))
    inherited = intent.model_copy(update={"source": "inherited"}).model_dump(mode="json")
    parent_deps = list(dict.fromkeys(parent.depends_on))
    subtasks = [
        _subtask_record(parent, intent.goal, inherited, features, ids, index)
        for index in range(len(features))
    ]
    for index, record in enumerate(subtasks):
        record["depends_on"] = list(parent_deps) if index == 0 else [ids[index - 1]]
    updates = {
        "depends_on": list(dict.fromkeys([*parent_deps, *ids])),
        "phase4_planned": True,
        "phase4_intent": intent.model_dump(mode="json"),
        "phase4_plan": {
            "gut_check": check.model_dump(mode="json"),
            "features": list(features),
            "subtasks": ids,
        },
    }
    return Plan(
        subtasks=[_validated(r) for r in subtasks],
        parent_updates=updates,
        features=list(features),
        subtask_ids=ids,
        check=check,
    )


def _subtask_record(
    parent: Task,
    goal: str,
    intent: dict[str, Any],
    features: list[str],
    ids: list[str],
    index: int,
) -> dict[str, Any]:
    count = len(features)
    context = f"Context: step {index + 1} of {count} of task {parent.id}"
    context += f", whose goal is: {goal}" if goal else "."
    min_budget, max_budget = _budget_share(parent, count)
    return {
        "id": ids[index],
        "prompt": f"{features[index]}\n\n{context}",
        "mode": Mode.LLM.value,
        "model": parent.model,
        "intensity": parent.intensity,
        "identity_id": parent.identity_id,
        **placement_of(parent),
        "min_budget": min_budget,
        "max_budget": max_budget,
        "phase4_generated": True,
        "phase4_parent_task": parent.id,
        "phase4_intent": intent,
        "phase4_feature": features[index],
        "status": Status.PENDING.value,
    }


def placement_of(parent: Task) -> dict[str, Any]:
    """A step needs what its parent needed: the same host's sandbox, the same labels."""
    return parent.model_dump(include={"host", "worker_labels"}, exclude_defaults=True)


def _budget_share(parent: Task, count: int) -> tuple[float, float]:
    """Each subtask gets an equal share of the parent's budget (its default when unset), so
    splitting a task never multiplies what it may spend."""
    high = (DEFAULT_MAX_BUDGET if parent.max_budget is None else parent.max_budget) / count
    low = (DEFAULT_MIN_BUDGET if parent.min_budget is None else parent.min_budget) / count
    return min(low, high), high


def _validated(record: dict[str, Any]) -> dict[str, Any]:
    """Checked against the contract now, so a bad record fails before the queue is touched;
    unset fields are left out so the store's own defaults (created_at) apply."""
    return Task.model_validate(record).model_dump(mode="json", exclude_none=True)


def plan_event_fields(plan: Plan) -> dict[str, Any]:
    """The `queued` event's phase 4 keys, spelled by the contract."""
    fields = PlanFields(
        phase4_plan_generated=True,
        phase4_complexity_score=plan.check.score,
        phase4_features=list(plan.features),
        phase4_subtasks=list(plan.subtask_ids),
        phase4_subtasks_added=len(plan.subtasks),
    )
    return fields.model_dump(mode="json")


# --- the parent's final prompt ----------------------------------------------------------


def parent_prompt_with_results(
    parent_prompt: str, results: list[tuple[str, str, str | None]]
) -> str:
    """The parent's own prompt, then each subtask's (capped) result and a closing instruction
    to integrate them. An earlier results section is replaced, never stacked."""
    base = _RESULTS.sub("", parent_prompt)
    if not results:
        return base
    lines = [
        base.rstrip(),
        "",
        RESULTS_HEADING,
        "These subtasks of this task have already run, in this order:",
    ]
    for subtask_id, feature, result in results:
        lines += [
            "",
            f"### {subtask_id}: {feature}",
            cap_text(result or NO_RESULT, RESULT_CAP_BYTES),
        ]
    lines += [
        "",
        "Integrate these results into one complete answer to the task above; "
        "build on them rather than redoing them.",
        RESULTS_END,
    ]
    return "\n".join(lines)
