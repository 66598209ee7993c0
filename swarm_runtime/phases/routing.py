"""Tool-first routing (phase 3): decide whether a known tool should shape a prompt.

Before a prompt task goes to the model, the router looks for a tool whose code is worth
reusing: a small set of built-in skills plus the operator's tools in the workspace's tool
store. The decision is pure and deterministic (no model call, no spend), so the same prompt
and the same tools always give the same route:

    exact     a tool's name appears in the task as a whole identifier     confidence 1.0
    semantic  one tool's name, description and keywords cover the task    its score
    composed  two or three tools each cover a distinct part of the task   mean of theirs
    generate  nothing fits well enough; the prompt goes out unchanged     -

Precision matters more than recall: injecting unrelated code into a prompt costs tokens and
misleads the model, so a semantic match needs two meaningful words in common (or one keyword
phrase) and must explain a fair share of the task.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from swarm_runtime.contract import ExecutionFields, ToolRoute, describe_validation_error
from swarm_runtime.errors import StateFileError
from swarm_runtime.phases.text import key_words
from swarm_runtime.store.state_files import Workspace, read_json

SEMANTIC_THRESHOLD = 0.6
COMPONENT_THRESHOLD = 0.45
MAX_COMPONENTS = 3
STRONG_WEIGHT = 1.0
WEAK_WEIGHT = 0.5
PHRASE_BONUS = 1.0
FULL_EVIDENCE = 3.0

CONTEXT_HEADING = "RELEVANT TOOL CONTEXT (reuse before new generation)"
TASK_HEADING = "TASK:"
SKILL_HEADER = "# --- Skill: {name} ---"
STORE_FIELDS = frozenset({"description", "keywords", "code"})
TOOL_EVENT_FIELDS = tuple(name for name in ExecutionFields.model_fields if name.startswith("tool_"))

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


class Tool(BaseModel):
    """A reusable piece of code and the words that say when it applies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    keywords: tuple[str, ...] = ()
    code: str
    source: Literal["builtin", "store"] = "store"

    @field_validator("name", mode="before")
    @classmethod
    def _identifier(cls, value: object) -> object:
        """Names are matched as identifiers in prompts, so they must be identifiers."""
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            raise PydanticCustomError(
                "tool_name",
                "must be an identifier (letters, digits and underscores, "
                "not starting with a digit, at most 200 characters)",
            )
        return value

    @field_validator("description", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        if not isinstance(value, str):
            raise PydanticCustomError("tool_description", "must be a string")
        return value

    @field_validator("keywords", mode="before")
    @classmethod
    def _keywords(cls, value: object) -> object:
        """A bare string would otherwise be read as a list of one-letter keywords."""
        if not isinstance(value, list | tuple) or not all(
            isinstance(item, str) and item.strip() for item in value
        ):
            raise PydanticCustomError("tool_keywords", "must be a list of strings")
        return tuple(item.strip() for item in value)

    @field_validator("code", mode="before")
    @classmethod
    def _code(cls, value: object) -> object:
        """A tool without code has nothing to reuse, so it could only mislead a prompt."""
        if not isinstance(value, str) or not value.strip():
            raise PydanticCustomError("tool_code", "must be a non-empty string")
        return value


class RouteDecision(BaseModel):
    """What the router chose; `tool` is None exactly when the route is `generate`."""

    model_config = ConfigDict(frozen=True)

    route: ToolRoute
    tool: Tool | None = None
    confidence: float = 0.0
    components: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _tool_iff_not_generate(self) -> RouteDecision:
        if (self.route == ToolRoute.GENERATE) != (self.tool is None):
            raise ValueError("a tool is required for every route but generate")
        return self


NO_TOOL = RouteDecision(route=ToolRoute.GENERATE)


# --- built-in skills ---------------------------------------------------------------

READ_JSON_SAFE = '''\
import json
from pathlib import Path
from typing import Any


def read_json_safe(path: str | Path, default: Any = None) -> Any:
    """Parse a JSON file. A missing file gives `default`; malformed JSON raises a
    ValueError naming the file, line and column instead of a bare decoder error."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
'''

WRITE_JSON_ATOMIC = '''\
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, document: Any) -> None:
    """Write to a temp file in the same folder, fsync it, then rename it over the
    target: a reader or a crash sees the old file or the new one, never half of one."""
    target = Path(path)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, ensure_ascii=False)
            handle.write("\\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
'''

RETRY_WITH_BACKOFF = '''\
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retry_with_backoff(
    call: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 0.5,
    max_delay: float = 30.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """Call `call` until it succeeds. Sleeps up to base_delay * 2**n between tries (capped,
    with full jitter so many clients do not retry in step) and re-raises the last error."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(attempts - 1):
        try:
            return call()
        except retry_on:
            time.sleep(random.uniform(0, min(max_delay, base_delay * 2**attempt)))
    return call()
'''

PARSE_CSV_ROWS = '''\
import csv
import io


def parse_csv_rows(text: str, *, delimiter: str = ",") -> list[dict[str, str]]:
    """Rows as dicts keyed by the header row. A row with the wrong number of fields is an
    error naming its line, rather than silently shifted columns."""
    reader = csv.reader(io.StringIO(text.lstrip("\\ufeff")), delimiter=delimiter)
    header = [name.strip() for name in next(reader, [])]
    rows = []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(
                f"line {reader.line_num}: expected {len(header)} fields, got {len(row)}"
            )
        rows.append(dict(zip(header, row)))
    return rows
'''

SLUGIFY = '''\
import re
import unicodedata


def slugify(text: str, *, max_length: int = 80) -> str:
    """A lowercase ASCII slug for URLs and file names: accents are folded to their base
    letters and every other run of characters becomes a single hyphen."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")
    return slug[:max_length].rstrip("-")
'''

HTTP_GET_JSON = '''\
from typing import Any

import requests


def http_get_json(url: str, *, params: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """GET a URL and decode its JSON body. Every call has a timeout, and a non-2xx status
    or a body that is not JSON raises instead of returning something half-right."""
    response = requests.get(
        url, params=params, timeout=timeout, headers={"Accept": "application/json"}
    )
    response.raise_for_status()
    try:
        return response.json()
    except ValueError:
        raise ValueError(f"{url}: response body is not JSON") from None
'''


def _builtin(name: str, description: str, keywords: list[str], code: str) -> Tool:
    return Tool(name=name, description=description, keywords=keywords, code=code, source="builtin")


BUILTIN_TOOLS: tuple[Tool, ...] = (
    _builtin(
        "read_json_safe",
        "Read and parse a JSON file: a default when it is missing, and an error naming the "
        "file, line and column when the JSON is malformed.",
        [
            "json",
            "malformed",
            "invalid json",
            "decode error",
            "load config",
            "load settings",
            "read config",
            "read settings",
        ],
        READ_JSON_SAFE,
    ),
    _builtin(
        "write_json_atomic",
        "Write a JSON document atomically: temp file in the same folder, fsync, then rename "
        "over the target, so readers and crashes never see a half-written file.",
        [
            "atomic",
            "atomically",
            "fsync",
            "crash",
            "corrupt",
            "corruption",
            "atomic write",
            "save json",
            "persist json",
        ],
        WRITE_JSON_ATOMIC,
    ),
    _builtin(
        "retry_with_backoff",
        "Call a function again after transient failures, sleeping with exponential backoff "
        "and jitter between attempts, and re-raise the last error.",
        [
            "retry",
            "retries",
            "backoff",
            "exponential",
            "jitter",
            "transient",
            "flaky",
            "exponential backoff",
        ],
        RETRY_WITH_BACKOFF,
    ),
    _builtin(
        "parse_csv_rows",
        "Parse CSV text into dicts keyed by the header row, with an error naming the line "
        "when a row has the wrong number of fields.",
        ["csv", "tsv", "spreadsheet", "comma separated", "header", "rows"],
        PARSE_CSV_ROWS,
    ),
    _builtin(
        "slugify",
        "Turn a title into a lowercase ASCII slug for URLs and file names: accents folded, "
        "other characters collapsed to single hyphens.",
        ["slug", "slugs", "permalink", "title", "accents", "hyphens", "url friendly"],
        SLUGIFY,
    ),
    _builtin(
        "http_get_json",
        "Fetch a URL over HTTP with a timeout and decode the JSON body, raising on non-2xx "
        "statuses and bodies that are not JSON.",
        [
            "http",
            "https",
            "api",
            "endpoint",
            "fetch",
            "download",
            "rest",
            "timeout",
            "requests",
            "get json",
        ],
        HTTP_GET_JSON,
    ),
)


# --- the tool store ----------------------------------------------------------------


def load_tool_store(path: Path) -> list[Tool]:
    """The operator's tools. A missing store is empty; a broken one is an error naming every
    fault, because silently routing without the operator's tools hides the mistake."""
    document = read_json(path, dict)
    if not isinstance(document, dict):
        raise StateFileError(
            path, ["must be a JSON object mapping tool names to {description, keywords, code}"]
        )
    problems: list[str] = []
    tools = [_store_tool(name, entry, problems) for name, entry in document.items()]
    if problems:
        raise StateFileError(path, problems)
    return [tool for tool in tools if tool is not None]


def _store_tool(name: str, entry: object, problems: list[str]) -> Tool | None:
    where = f"tools.{name}"
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be an object with description, keywords and code")
        return None
    unknown = sorted(set(entry) - STORE_FIELDS)
    problems.extend(
        f"{where}.{key}: unknown field (expected description, keywords, code)" for key in unknown
    )
    fields = {key: value for key, value in entry.items() if key in STORE_FIELDS}
    try:
        tool = Tool.model_validate({**fields, "name": name, "source": "store"})
    except ValidationError as exc:
        problems.extend(f"{where}.{describe_validation_error(err)}" for err in exc.errors())
        return None
    return None if unknown else tool


def load_router(workspace: Workspace) -> ToolRouter:
    """Built-ins plus the store; a store tool replaces the built-in of the same name."""
    tools = {tool.name: tool for tool in BUILTIN_TOOLS}
    tools.update((tool.name, tool) for tool in load_tool_store(workspace.tool_store_path))
    return ToolRouter(tools.values())


def _token_set(text: str) -> frozenset[str]:
    return frozenset(token for token, _ in key_words(text))


# --- matching ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Profile:
    """A tool's vocabulary: its name and one-word keywords are strong evidence; its
    description and the words of its keyword phrases are weak unless a whole phrase shows."""

    tool: Tool
    pattern: re.Pattern[str]
    strong: frozenset[str]
    weak: frozenset[str]
    phrases: tuple[frozenset[str], ...]

    @classmethod
    def of(cls, tool: Tool) -> _Profile:
        keyword_sets = [_token_set(keyword) for keyword in tool.keywords]
        phrases = tuple(words for words in keyword_sets if len(words) > 1)
        strong = _token_set(tool.name).union(*(w for w in keyword_sets if len(w) == 1))
        weak = _token_set(tool.description).union(*phrases) - strong
        pattern = re.compile(rf"(?<!\w){re.escape(tool.name)}(?!\w)", re.IGNORECASE)
        return cls(tool, pattern, strong, weak, phrases)

    def match(self, tokens: frozenset[str], task: _Task) -> _Match:
        """Score the tool against `tokens`: all of the task's words, or those no tool chosen
        so far explains."""
        strong = tokens & self.strong
        weak = tokens & self.weak
        phrases = [p for p in self.phrases if p <= tokens and task.has_phrase(p)]
        explained = len(strong) * STRONG_WEIGHT + len(weak) * WEAK_WEIGHT
        evidence = explained + len(phrases) * PHRASE_BONUS
        strength = min(1.0, evidence / FULL_EVIDENCE)
        coverage = min(1.0, explained / len(task.words)) if task.words else 0.0
        return _Match(
            self.tool,
            round((strength + coverage) / 2, 2),
            strong | weak,
            len(strong) >= 2 or bool(phrases),
        )


@dataclass(frozen=True)
class _Task:
    """A task's content words in order, with where each starts in the prompt."""

    tokens: tuple[tuple[str, int], ...]

    @cached_property
    def words(self) -> frozenset[str]:
        return frozenset(token for token, _ in self.tokens)

    def has_phrase(self, phrase: frozenset[str]) -> bool:
        """A keyword phrase counts only as neighbouring words, in any order: "read the
        README and the config" is not "read config"."""
        sequence = [token for token, _ in self.tokens]
        size = len(phrase)
        return any(
            frozenset(sequence[i : i + size]) == phrase for i in range(len(sequence) - size + 1)
        )

    def first(self, words: frozenset[str]) -> int:
        return min((start for token, start in self.tokens if token in words), default=0)


@dataclass(frozen=True)
class _Match:
    tool: Tool
    score: float
    tokens: frozenset[str]
    convincing: bool


@dataclass(frozen=True)
class _Pick:
    tool: Tool
    confidence: float
    covered: frozenset[str]
    position: int
    exact: bool


class ToolRouter:
    """Routes prompts over a fixed set of tools; build one per tool set and reuse it."""

    def __init__(self, tools: Iterable[Tool]):
        self.profiles = tuple(_Profile.of(tool) for tool in tools)
        self._by_name = {profile.tool.name: profile for profile in self.profiles}
        if len(self._by_name) != len(self.profiles):
            raise ValueError("tool names must be unique")

    @property
    def tools(self) -> tuple[Tool, ...]:
        return tuple(profile.tool for profile in self.profiles)

    def route(self, prompt: str) -> RouteDecision:
        """Route the task itself: a prompt that already carries tool context is routed by
        the task under it, or the injected code would pick its own tool again."""
        text = task_text(prompt)
        task = _Task(tuple(key_words(text)))
        matches = [profile.match(task.words, task) for profile in self.profiles]
        picks = self._exact_picks(text, matches) or _best_semantic(matches, task)
        picks = self._add_components(picks, matches, task)
        return _decision(sorted(picks, key=lambda pick: (not pick.exact, pick.position)))

    def _exact_picks(self, text: str, matches: list[_Match]) -> list[_Pick]:
        found = []
        for profile, match in zip(self.profiles, matches, strict=True):
            hit = profile.pattern.search(text)
            if hit:
                found.append(_Pick(profile.tool, 1.0, match.tokens, hit.start(), exact=True))
        return sorted(found, key=lambda pick: pick.position)[:MAX_COMPONENTS]

    def _add_components(
        self, picks: list[_Pick], matches: list[_Match], task: _Task
    ) -> list[_Pick]:
        """Add tools that convincingly explain a part of the task no chosen tool explains."""
        for match in _candidates(matches):
            if not picks or len(picks) >= MAX_COMPONENTS:
                break
            if any(pick.tool.name == match.tool.name for pick in picks):
                continue
            uncovered = match.tokens - frozenset().union(*(pick.covered for pick in picks))
            if self._by_name[match.tool.name].match(uncovered, task).convincing:
                picks = [
                    *picks,
                    _Pick(
                        match.tool, match.score, match.tokens, task.first(uncovered), exact=False
                    ),
                ]
        return picks


def _best_semantic(matches: list[_Match], task: _Task) -> list[_Pick]:
    best = next(iter(_candidates(matches)), None)
    if best is None:
        return []
    return [_Pick(best.tool, best.score, best.tokens, task.first(best.tokens), exact=False)]


def _candidates(matches: list[_Match]) -> list[_Match]:
    """Convincing matches, best first; ties keep the order the tools were given in."""
    passing = [m for m in matches if m.convincing and m.score >= COMPONENT_THRESHOLD]
    return sorted(passing, key=lambda match: -match.score)


def _decision(picks: list[_Pick]) -> RouteDecision:
    if not picks:
        return NO_TOOL
    if len(picks) > 1:
        confidence = round(sum(pick.confidence for pick in picks) / len(picks), 2)
        return RouteDecision(
            route=ToolRoute.COMPOSED,
            tool=compose([p.tool for p in picks]),
            confidence=confidence,
            components=tuple(pick.tool.name for pick in picks),
        )
    pick = picks[0]
    if pick.exact:
        route = ToolRoute.EXACT
    elif pick.confidence >= SEMANTIC_THRESHOLD:
        route = ToolRoute.SEMANTIC
    else:
        return NO_TOOL
    return RouteDecision(
        route=route, tool=pick.tool, confidence=pick.confidence, components=(pick.tool.name,)
    )


def compose(tools: list[Tool]) -> Tool:
    """One tool whose code runs the parts in order. It counts as a store tool if any part
    is one, so operator code is never presented as built-in."""
    names = [tool.name for tool in tools]
    code = "\n\n".join(
        SKILL_HEADER.format(name=tool.name) + "\n" + tool.code.strip("\n") for tool in tools
    )
    keywords = tuple(dict.fromkeys(word for tool in tools for word in tool.keywords))
    return Tool(
        name="composed_" + "_".join(names),
        description="Composed skill pipeline: " + " -> ".join(names),
        keywords=keywords,
        code=code,
        source="builtin" if all(tool.source == "builtin" for tool in tools) else "store",
    )


# --- the prompt and the event ------------------------------------------------------


def task_text(prompt: str) -> str:
    """The task under a tool-context block, or the prompt itself when it has none."""
    if not prompt.startswith(CONTEXT_HEADING):
        return prompt
    _, marker, task = prompt.partition(f"\n\n{TASK_HEADING}\n")
    return task if marker else prompt


def inject_tool_context(
    prompt: str, decision: RouteDecision, screen: Callable[[str], str] = str
) -> str:
    """Put the tool's code before the task so the model reuses it instead of rewriting it.

    A prompt that already starts with a tool-context block is returned as it is, so a
    retried task is never wrapped twice. The tool was written by a model: its description
    and code pass through `screen` first."""
    if decision.tool is None or prompt.startswith(CONTEXT_HEADING):
        return prompt
    tool = decision.tool
    description = screen(" ".join(tool.description.split())) or "n/a"
    return "\n".join(
        [
            CONTEXT_HEADING,
            f"TOOL_NAME: {tool.name}",
            f"TOOL_ROUTE: {decision.route.value}",
            f"TOOL_CONFIDENCE: {decision.confidence:.2f}",
            f"TOOL_DESCRIPTION: {description}",
            "",
            screen(tool.code.strip("\n")),
            "",
            TASK_HEADING,
            prompt,
        ]
    )


def decision_fields(decision: RouteDecision) -> dict[str, Any]:
    """The event fields of a decision; a prompt that found no tool records only its route."""
    fields = ExecutionFields(
        tool_route=decision.route.value,
        tool_name=decision.tool.name if decision.tool else None,
        tool_confidence=decision.confidence if decision.tool else None,
    )
    return fields.model_dump(include=set(TOOL_EVENT_FIELDS))
