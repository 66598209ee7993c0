"""The one check of a new task, whoever proposes it: `worker.py add`, the panel's form or
the planner behind `/plan`.

It runs before the store sees the task and says what is wrong in the words of the field
the user filled in, never as a pydantic dump; the store's own validation only guards the
file format. A dependency on an id the queue does not hold yet is allowed, since tasks
may be added in any order, but it is said aloud: until that id is added, the task waits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

from pydantic import ValidationError

from swarm_runtime.contract import (
    DEFAULT_MAX_BUDGET,
    DEFAULT_MIN_BUDGET,
    MAX_TASK_LABELS,
    PLACE_NAME_PATTERN,
    PLACE_NAME_RULE,
    Mode,
    QueueDocument,
    Task,
    comma_list,
    implied_mode,
    is_valid_task_id,
    normalize_task,
)
from swarm_runtime.errors import TaskInputError

MAX_PROMPT_CHARS = 100_000
MAX_COMMAND_CHARS = 10_000
MAX_MODEL_CHARS = 200
TEXT_LIMITS = {"prompt": MAX_PROMPT_CHARS, "command": MAX_COMMAND_CHARS, "model": MAX_MODEL_CHARS}
INTENSITIES = ("low", "medium", "high")
BUDGET_DEFAULTS = {"min_budget": DEFAULT_MIN_BUDGET, "max_budget": DEFAULT_MAX_BUDGET}
ID_RULE = "may only contain letters, digits, '.', '_' and '-' (1 to 128 of them, not '.' or '..')"


class CheckedTask(NamedTuple):
    """The task as the store takes it, and what the user should hear about it."""

    record: dict[str, Any]
    warnings: list[str]


def validate_new_task(
    record: Mapping[str, Any], known_ids: Collection[str] = frozenset()
) -> CheckedTask:
    """Raise TaskInputError naming the first field at fault; `known_ids` are the ids the
    queue holds (live or archived), against which dependencies are checked."""
    task = dict(record)
    task["id"] = checked_id(task.get("id"))
    for name, limit in TEXT_LIMITS.items():
        task[name] = checked_text(name, task.get(name), limit)
    mode = checked_mode(task.get("mode"), task["prompt"], task["command"])
    task["mode"] = mode.value
    required = "command" if mode == Mode.LOCAL else "prompt"
    if task[required] is None:
        article = "an" if mode == "llm" else "a"
        raise TaskInputError(
            required, f"{required} must not be blank: {article} {mode} task runs one"
        )
    for name in BUDGET_DEFAULTS:
        task[name] = checked_budget(name, task.get(name))
    check_budget_order(task["min_budget"], task["max_budget"])
    task["intensity"] = checked_intensity(task.get("intensity"))
    task["depends_on"] = checked_dependencies(task["id"], task.get("depends_on"))
    task["host"] = checked_place("host", task.get("host"))
    task["worker_labels"] = checked_labels(task.get("worker_labels"))
    checked = {key: value for key, value in task.items() if value is not None}
    check_task_format(checked)
    return CheckedTask(checked, unknown_dependencies(task["depends_on"], known_ids))


def checked_id(value: object) -> str:
    if value is None or value == "":
        raise TaskInputError("id", "id must not be empty")
    if not isinstance(value, str) or not is_valid_task_id(value):
        raise TaskInputError("id", f"id {shown(value)} {ID_RULE}")
    return value


def checked_text(name: str, value: object, limit: int) -> str | None:
    """Blank text counts as absent; text over `limit` characters is refused, not cut."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TaskInputError(name, f"{name} must be text")
    if len(value) > limit:
        raise TaskInputError(
            name, f"{name} is {len(value):,} characters long; at most {limit:,} are allowed"
        )
    return value if value.strip() else None


def checked_mode(value: object, prompt: str | None, command: str | None) -> Mode:
    """The mode asked for; without one, a task with only a command runs locally."""
    if value is None or value == "":
        return implied_mode(prompt, command)
    try:
        return Mode(str(value))
    except ValueError:
        choices = " or ".join(mode.value for mode in Mode)
        raise TaskInputError("mode", f"mode must be {choices}, not {shown(value)}") from None


def checked_budget(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TaskInputError(name, f"{name} must be a number of dollars, not {shown(value)}")
    if not math.isfinite(value) or value < 0:
        raise TaskInputError(name, f"{name} must be a finite amount, 0 or more, not {value}")
    return float(value)


def check_budget_order(low: float | None, high: float | None) -> None:
    """Compared with the default the worker will use for the one left out."""
    if low is None and high is None:
        return
    low_name = "min_budget" if low is not None else "the default min_budget"
    high_name = "max_budget" if high is not None else "the default max_budget"
    low = DEFAULT_MIN_BUDGET if low is None else low
    high = DEFAULT_MAX_BUDGET if high is None else high
    if low > high:
        raise TaskInputError("min_budget", f"{low_name} ({low}) is above {high_name} ({high})")


def checked_intensity(value: object) -> str | None:
    if value is None or value in INTENSITIES:
        return value
    choices = ", ".join(INTENSITIES)
    raise TaskInputError("intensity", f"intensity must be one of {choices}, not {shown(value)}")


def checked_dependencies(task_id: str, value: object) -> list[str]:
    """A list of ids, or one comma-separated string of them; repeats are dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise TaskInputError("depends_on", "depends_on must be a list of task ids")
    for index, dependency in enumerate(value):
        if not is_valid_task_id(dependency):
            message = f"depends_on: {shown(dependency)} is not a task id; it {ID_RULE}"
            raise TaskInputError(f"depends_on.{index}", message)
        if dependency == task_id:
            raise TaskInputError("depends_on", f"task {task_id!r} cannot depend on itself")
    return list(dict.fromkeys(value))


def checked_place(name: str, value: object) -> str | None:
    """A host or label name, as `SWARM_HOST` and `SWARM_WORKER_LABELS` spell them."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or re.fullmatch(PLACE_NAME_PATTERN, value) is None:
        raise TaskInputError(name, f"{name} {shown(value)} is not a name: {PLACE_NAME_RULE}")
    return value


def checked_labels(value: object) -> list[str] | None:
    """Labels a worker must serve to run the task: a list, or one comma-separated string."""
    labels = comma_list(value)
    if not isinstance(labels, list | tuple):
        raise TaskInputError("worker_labels", "worker_labels must be a list of label names")
    if len(labels) > MAX_TASK_LABELS:
        raise TaskInputError("worker_labels", f"at most {MAX_TASK_LABELS} worker_labels")
    names = [checked_place("worker_labels", label) for label in labels]
    return list(dict.fromkeys(name for name in names if name)) or None


def unknown_dependencies(depends_on: list[str], known_ids: Collection[str]) -> list[str]:
    return [
        f"depends_on: task {dependency!r} is not in the queue: add it before a worker"
        " reaches this task, or this task fails"
        for dependency in depends_on
        if dependency not in known_ids
    ]


def check_task_format(record: dict[str, Any]) -> None:
    """Any other field still has to fit queue.json's task format."""
    try:
        Task.model_validate(normalize_task(record))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "task"
        raise TaskInputError(field, f"{field}: {error['msg']}") from None


def known_ids(doc: QueueDocument) -> set[str]:
    """Ids a dependency may name: the live tasks and those archived as finished."""
    return {task.id for task in doc.tasks} | set(doc.completed) | set(doc.failed)


def shown(value: object, limit: int = 60) -> str:
    """A user's value quoted for a message, cut short and with control characters escaped."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
