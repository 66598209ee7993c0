"""The queue and event contract: the one place that names statuses, files and fields,
and says which status may follow which.

Every other module imports its vocabulary from here, so a status or a file name is
spelled exactly once, and the store and the panel ask the same transition table. The
pydantic models are the wire and file formats; the plain functions (`normalize_*`,
`queue_problems`, `validate_queue_contract`) keep the design's semantics for callers
that handle raw dictionaries.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Literal, NamedTuple, Self, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

QUEUE_CONTRACT_VERSION = "1.1"
DEFAULT_API_ENDPOINT = "http://127.0.0.1:8420"
DEFAULT_API_PORT = 8420
DEFAULT_PANEL_PORT = 8421

# Files inside the workspace.
QUEUE_FILE = "queue.json"
EXECUTION_LOG_FILE = "execution_log.jsonl"
QUALITY_GATE_FILE = "quality_gate_queue.json"
STATE_DIR = ".swarm"
SANDBOX_DIR = "sandbox"
TOKEN_FILE = "internal_execution_token"
BUDGET_LEDGER_FILE = "budget_ledger.json"
API_AUDIT_FILE = "api_audit.jsonl"
SAFETY_AUDIT_FILE = "safety_audit.jsonl"
QUEUE_ARCHIVE_FILE = "queue_archive.jsonl"
QUEUE_JOURNAL_FILE = "queue_journal.jsonl"
REWARD_LEDGER_FILE = "phase5_reward_ledger.json"
BALANCES_FILE = "free_time_balances.json"
TOOL_STORE_FILE = "tool_store.json"
PAUSE_FILE = "pause.json"
API_ENDPOINT_FILE = "api_endpoint.json"
WORKERS_DIR = "workers"

TOKEN_HEADER = "X-Swarm-Internal-Token"
OFFLINE_MODEL = "offline"
PANEL_WORKER_ID = "control-panel"
CLI_WORKER_ID = "operator-cli"
LOCAL_MODEL = "local"

DEFAULT_MIN_BUDGET = 0.05
DEFAULT_MAX_BUDGET = 0.10
DEFAULT_INTENSITY = "medium"
DEFAULT_TASK_TYPE = "cycle"

TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
EVENT_FIELD_CAP_BYTES = 64 * 1024
TRUNCATION_MARKER = "…[truncated {dropped} bytes]"


class Status(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    PENDING_REVIEW = "pending_review"
    APPROVED = "approved"
    REQUEUE = "requeue"
    NEEDS_QA = "needs_qa"
    NEEDS_INTEGRATION = "needs_integration"
    NEEDS_E2E = "needs_e2e"
    READY_FOR_MERGE = "ready_for_merge"
    SUBTASK_STARTED = "subtask_started"
    SUBTASK_COMPLETED = "subtask_completed"
    SUBTASK_FAILED = "subtask_failed"
    SAFETY_BLOCKED = "safety_blocked"
    CANCELLED = "cancelled"
    LEASE_EXPIRED = "lease_expired"
    # Event only: a result its worker computed after losing the lease on that attempt.
    # It is kept for the record and is never the task's status.
    RESULT_DISCARDED = "result_discarded"


class Mode(StrEnum):
    LLM = "llm"
    LOCAL = "local"


class Verdict(StrEnum):
    """The critic's verdict; APPROVE and MINOR_ISSUES accept the work."""

    APPROVE = "APPROVE"
    MINOR_ISSUES = "MINOR_ISSUES"
    REJECT = "REJECT"


ACCEPTING_VERDICTS = frozenset({Verdict.APPROVE, Verdict.MINOR_ISSUES})


class QualityGateStatus(StrEnum):
    """A change's state in quality_gate_queue.json, echoed as `quality_gate_status`."""

    NEEDS_QA = "needs_qa"
    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"
    ERROR = "error"


class ChangeStatus(StrEnum):
    """A change's own state in quality_gate_queue.json. A vote leaves it needs_qa or
    rejected; the others belong to the QA flow of the design's reference implementation,
    which other tools drive."""

    PENDING_VOTE = "pending_vote"
    NEEDS_QA = "needs_qa"
    REJECTED = "rejected"
    QA_IN_PROGRESS = "qa_in_progress"
    NEEDS_INTEGRATION = "needs_integration"
    NEEDS_E2E = "needs_e2e"
    READY_FOR_MERGE = "ready_for_merge"
    BLOCKED = "blocked"


class ToolRoute(StrEnum):
    EXACT = "exact"
    SEMANTIC = "semantic"
    COMPOSED = "composed"
    GENERATE = "generate"


KNOWN_EXECUTION_STATUSES: frozenset[str] = frozenset(s.value for s in Status)

# A task in one of these is waiting for a worker (requeue only once it is due).
CLAIMABLE_STATUSES = frozenset({Status.PENDING, Status.REQUEUE, Status.QUEUED})
# Finished for good: nothing will run this task again without an operator.
FAILED_STATUSES = frozenset({Status.FAILED, Status.SAFETY_BLOCKED, Status.CANCELLED})
APPROVED_STATUSES = frozenset({Status.APPROVED, Status.READY_FOR_MERGE})


class OperatorAction(StrEnum):
    ADD = "add"
    REQUEUE = "requeue"
    CANCEL = "cancel"
    REQUEUE_FAILED = "requeue_failed"


# --- which status may follow which --------------------------------------------------

_WAITING_NEXT = frozenset({Status.IN_PROGRESS, Status.FAILED, Status.CANCELLED})
_ENDED_BADLY_NEXT = frozenset({Status.REQUEUE})

# The one transition table: the store refuses any other change of a task's status, and
# the panel offers only what it allows. A status may always stay as it is. A status with
# no entry (completed, approved, ready_for_merge, and those only events carry) is final.
TRANSITIONS: Mapping[Status, frozenset[Status]] = MappingProxyType(
    {
        # Waiting: claimed, failed behind a dependency that can never be met, or cancelled.
        Status.PENDING: _WAITING_NEXT,
        Status.QUEUED: _WAITING_NEXT,
        Status.REQUEUE: _WAITING_NEXT,
        # Running: ran (and, under review, awaits the verdict), was blocked or failed, was
        # split into subtasks it now waits for, or went back in line when its holder died.
        Status.IN_PROGRESS: frozenset(
            {
                Status.COMPLETED,
                Status.PENDING_REVIEW,
                Status.SAFETY_BLOCKED,
                Status.FAILED,
                Status.QUEUED,
                Status.PENDING,
            }
        ),
        # Under review: the critic's verdict.
        Status.PENDING_REVIEW: frozenset({Status.APPROVED, Status.REQUEUE, Status.FAILED}),
        # Ended badly: only an operator sends it back.
        Status.FAILED: _ENDED_BADLY_NEXT,
        Status.SAFETY_BLOCKED: _ENDED_BADLY_NEXT,
        Status.CANCELLED: _ENDED_BADLY_NEXT,
    }
)


class ActionRule(NamedTuple):
    """From which statuses an operator action applies, and the status it leads to."""

    allowed_from: frozenset[Status]
    leads_to: Status
    # Applied at once to every task it allows, rather than to one task.
    whole_queue: bool = False


OPERATOR_ACTIONS: Mapping[OperatorAction, ActionRule] = MappingProxyType(
    {
        OperatorAction.REQUEUE: ActionRule(
            FAILED_STATUSES | {Status.PENDING_REVIEW}, Status.REQUEUE
        ),
        OperatorAction.CANCEL: ActionRule(CLAIMABLE_STATUSES, Status.CANCELLED),
        OperatorAction.REQUEUE_FAILED: ActionRule(
            frozenset({Status.FAILED}), Status.REQUEUE, whole_queue=True
        ),
    }
)


def can_transition(old: Status, new: Status) -> bool:
    return new == old or new in TRANSITIONS.get(old, frozenset())


def statuses_leading_to(new: Status) -> list[Status]:
    return [old for old in Status if new in TRANSITIONS.get(old, frozenset())]


def action_allowed(action: OperatorAction, status: Status) -> bool:
    rule = OPERATOR_ACTIONS.get(action)
    return rule is not None and status in rule.allowed_from


def task_allows(task: Task, action: OperatorAction) -> bool:
    """The action table for one task. A task in review qualifies only once parked: until
    then a worker holds its review, or the next claim resumes it."""
    if task.status == Status.PENDING_REVIEW and not is_parked(task):
        return False
    return action_allowed(action, task.status)


def allowed_actions(task: Task) -> list[OperatorAction]:
    """The actions that apply to this one task now (not those over the whole queue)."""
    return [
        action
        for action, rule in OPERATOR_ACTIONS.items()
        if not rule.whole_queue and task_allows(task, action)
    ]


def is_parked(task: Task) -> bool:
    """Executed, but the critic could not judge it: it waits for an operator."""
    return task.status == Status.PENDING_REVIEW and bool(task.review and task.review.error)


def describe_statuses(statuses: Iterable[Status], *, parked: bool = False) -> str:
    """`a, b or c` in the contract's order; `parked`: a review counts only once parked."""
    chosen = set(statuses)
    names = [
        f"parked {s.value}" if parked and s == Status.PENDING_REVIEW else s.value
        for s in Status
        if s in chosen
    ]
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def is_known_execution_status(status: object) -> bool:
    return isinstance(status, str) and status in KNOWN_EXECUTION_STATUSES


def satisfying_statuses(review_enabled: bool) -> frozenset[str]:
    """Statuses that let a dependent run; `completed` counts only where no review applies."""
    if review_enabled:
        return APPROVED_STATUSES
    return APPROVED_STATUSES | {Status.COMPLETED}


def final_statuses(review_enabled: bool) -> frozenset[str]:
    return satisfying_statuses(review_enabled) | FAILED_STATUSES


def utc_now() -> datetime:
    return datetime.now(UTC)


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def is_valid_task_id(value: object) -> bool:
    """Ids become file names, so `.` and `..` are refused even though the pattern allows dots."""
    return (
        isinstance(value, str)
        and TASK_ID_PATTERN.fullmatch(value) is not None
        and value not in {".", ".."}
    )


def _checked_task_id(value: str) -> str:
    if not is_valid_task_id(value):
        raise ValueError("must match [A-Za-z0-9._-]{1,128} and not be '.' or '..'")
    return value


TaskId = Annotated[str, AfterValidator(_checked_task_id)]

# A host's or a label's name: what `SWARM_HOST` and `SWARM_WORKER_LABELS` say, and what a
# task pinned with `host` or `worker_labels` must match exactly.
PLACE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
PLACE_NAME_RULE = "letters, digits, '.', '_' or '-', at most 128, starting with a letter or digit"
MAX_TASK_LABELS = 16


def _checked_place_name(value: str) -> str:
    if re.fullmatch(PLACE_NAME_PATTERN, value) is None:
        raise ValueError(f"{value[:80]!r} is not a host or label name ({PLACE_NAME_RULE})")
    return value


PlaceName = Annotated[str, AfterValidator(_checked_place_name)]


def comma_list(value: object) -> object:
    """A list, or one string of comma-separated names, as a list (None as empty)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def placement_refusal(task: Task, host: str, labels: Iterable[str]) -> str | None:
    """Why a worker on `host` serving `labels` may not run `task` (None when it may): a
    task whose sandbox is on one host says so with `host`, one that needs what only some
    workers have (a GPU, a checkout) with `worker_labels`."""
    if task.host is not None and task.host != host:
        return f"pinned to host {task.host!r}"
    served = set(labels)
    missing = [label for label in task.worker_labels if label not in served]
    if not missing:
        return None
    return f"needs label{'s' if len(missing) > 1 else ''} " + ", ".join(map(repr, missing))


# --- queue.json -------------------------------------------------------------------

TASK_DEFAULTS: dict[str, Any] = {
    "type": DEFAULT_TASK_TYPE,
    "depends_on": [],
    "parallel_safe": True,
    "status": Status.PENDING.value,
}
REQUIRED_QUEUE_KEYS = ("version", "api_endpoint", "tasks", "completed", "failed")
# The reference's other names for a task's text, in the order it tries them: a blank
# canonical field takes the first of them that holds text.
TASK_SPELLINGS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "prompt": ("instruction", "description", "atomic_instruction", "task"),
        "command": ("shell",),
    }
)

_OTHER_SPELLINGS = frozenset(name for names in TASK_SPELLINGS.values() for name in names)


def _has_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def spelled_fields(task: Mapping[str, Any]) -> dict[str, str]:
    """Canonical fields the task gives only under another name: field -> that name.

    A canonical key holding text, or a value of the wrong type (which validation then
    reports), stands as it is."""
    if _OTHER_SPELLINGS.isdisjoint(task):
        return {}
    spelled = {}
    for name, others in TASK_SPELLINGS.items():
        value = task.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            source = next((other for other in others if _has_text(task.get(other))), None)
            if source is not None:
                spelled[name] = source
    return spelled


def with_spellings(task: Mapping[str, Any], spelled: Mapping[str, str]) -> dict[str, Any]:
    """The task with each spelled field given its value under the canonical name too."""
    return {**task, **{name: task[source] for name, source in spelled.items()}}


def implied_mode(prompt: object, command: object) -> Mode:
    """A task without a mode runs its command locally when it has no prompt."""
    return Mode.LOCAL if command and not prompt else Mode.LLM


def normalize_task(task: dict[str, Any]) -> dict[str, Any]:
    """Fill the design's defaults where a key is absent; a present null stays null."""
    normalized = dict(task)
    for key, default in TASK_DEFAULTS.items():
        if key not in normalized:
            normalized[key] = list(default) if isinstance(default, list) else default
    if "mode" not in normalized:
        spelled = spelled_fields(task)
        prompt, command = (task.get(spelled.get(name, name)) for name in ("prompt", "command"))
        if implied_mode(prompt, command) == Mode.LOCAL:
            normalized["mode"] = Mode.LOCAL.value
    return normalized


def normalize_queue(queue: dict[str, Any]) -> dict[str, Any]:
    """Canonical keys first, unknown keys kept after them, every task normalized."""
    normalized: dict[str, Any] = {
        "version": str(queue.get("version") or QUEUE_CONTRACT_VERSION),
        "api_endpoint": queue.get("api_endpoint") or DEFAULT_API_ENDPOINT,
        "tasks": [normalize_task(t) for t in queue.get("tasks") or [] if isinstance(t, dict)],
        "completed": list(queue.get("completed") or []),
        "failed": list(queue.get("failed") or []),
    }
    for key, value in queue.items():
        normalized.setdefault(key, value)
    return normalized


def empty_queue() -> dict[str, Any]:
    return normalize_queue({})


def validate_queue_contract(queue: object) -> list[str]:
    """The design's check of a queue document as the runtime writes it: every canonical
    key present, plus `queue_problems`. An empty list means it is valid."""
    if not isinstance(queue, dict):
        return queue_problems(queue)
    missing = [f"missing key: {key}" for key in REQUIRED_QUEUE_KEYS if key not in queue]
    return missing + queue_problems(queue)


def queue_problems(queue: object) -> list[str]:
    """What makes a queue.json unusable: not an object, a value of the wrong type, a task
    without a valid id, a duplicate id. A missing or null key is no problem:
    `normalize_queue` fills in its default, as the reference does."""
    if not isinstance(queue, dict):
        return ["queue must be a JSON object"]
    errors = []
    if not isinstance(queue.get("version") or "", str | int | float):
        errors.append("version must be a string or a number")
    tasks = queue.get("tasks")
    if tasks is None:
        tasks = []
    elif not isinstance(tasks, list):
        return [*errors, "tasks must be a list"]
    for name in ("completed", "failed"):
        if queue.get(name) is not None and not isinstance(queue[name], list):
            errors.append(f"{name} must be a list of task ids")
    seen: dict[str, int] = {}
    for index, task in enumerate(tasks):
        errors.extend(_task_problems(index, task, seen))
    return errors


def _task_problems(index: int, task: object, seen: dict[str, int]) -> list[str]:
    where = f"tasks[{index}]"
    if not isinstance(task, dict):
        return [f"{where} must be an object"]
    task_id = task.get("id")
    if not task_id:
        return [f"{where} is missing non-empty id"]
    if not is_valid_task_id(task_id):
        return [f"{where}.id {task_id!r} must match [A-Za-z0-9._-]{{1,128}}"]
    problems = []
    if task_id in seen:
        problems.append(f"{where} duplicates the id {task_id!r} of tasks[{seen[task_id]}]")
    seen.setdefault(task_id, index)
    try:
        Task.model_validate(task)
    except ValidationError as exc:
        problems.extend(
            f"{where} (id {task_id!r}).{describe_validation_error(err)}" for err in exc.errors()
        )
    return problems


def describe_validation_error(error: Mapping[str, Any]) -> str:
    """One pydantic error as `field.path: message`."""
    path = ".".join(str(part) for part in error.get("loc", ()))
    return f"{path}: {error.get('msg', 'invalid')}"


class Lease(BaseModel):
    """Who is running a task, until when; renewed by the holder's heartbeat."""

    model_config = ConfigDict(extra="allow")

    worker_id: str
    pid: int
    host: str
    pid_started: float | None = None
    claimed_at: float
    expires_at: float


class ExecutionFacts(BaseModel):
    """What one execution came to, spelled once: queue.json keeps the latest
    (ExecutionRecord) and the execution events carry them (ExecutionFields)."""

    started_at: str | None = None
    completed_at: str | None = None
    result_summary: str | None = None
    errors: str | None = None
    model: str | None = None
    budget_used: float | None = None
    safety_passed: bool | None = None
    tool_route: str | None = None
    tool_name: str | None = None
    tool_confidence: float | None = None
    exit_code: int | None = None
    output: str | None = None


class ExecutionRecord(ExecutionFacts):
    """The latest execution of a task, kept in queue.json so that a review interrupted by a
    crash resumes without running the task again, and a parent can read its subtasks' results."""

    attempt: int
    status: Status
    host: str | None = None  # where it ran, for the fleet's view once the lease is gone


class ReviewRecord(BaseModel):
    """The critic's latest word on a task. `attempt` counts rejections so far, durably."""

    verdict: Verdict | None = None
    confidence: float | None = None
    issues: list[str] = Field(default_factory=list)
    suggestions: list[str] = Field(default_factory=list)
    attempt: int = Field(default=0, ge=0)
    error: str | None = None


class Task(BaseModel):
    """One queue entry. Unknown fields are kept so operators can annotate tasks freely.

    Parsing and writing tasks is the hot path of every queue transaction (each worker
    reads the others' changes), so the model carries no serializer and no private state;
    a change the runtime makes is checked where it is made (`QueueState.update`)."""

    model_config = ConfigDict(extra="allow")

    id: TaskId
    type: str | None = DEFAULT_TASK_TYPE
    prompt: str | None = None
    command: str | None = None
    mode: Mode | None = None
    model: str | None = None
    min_budget: float | None = Field(default=None, ge=0)
    max_budget: float | None = Field(default=None, ge=0)
    intensity: Literal["low", "medium", "high"] | None = None
    depends_on: list[str] = Field(default_factory=list)
    parallel_safe: bool = True
    identity_id: str | None = None
    # Where it may run: only on this host / only on a worker serving all these labels.
    host: PlaceName | None = None
    worker_labels: list[PlaceName] = Field(default_factory=list, max_length=MAX_TASK_LABELS)
    status: Status = Status.PENDING
    attempts: int = Field(default=0, ge=0)
    lease: Lease | None = None
    not_before: float | None = None
    created_at: str | None = None
    updated_at: str | None = None
    last_error: str | None = None
    execution: ExecutionRecord | None = None
    review: ReviewRecord | None = None
    # Phase 4: requests from the operator, and the runtime's own plan bookkeeping.
    decompose: bool | None = None
    max_subtasks: int | None = Field(default=None, ge=1)
    phase4_skip: bool | None = None
    phase4_planned: bool | None = None
    phase4_generated: bool | None = None
    phase4_parent_task: str | None = None
    phase4_feature: str | None = None
    phase4_intent: dict[str, Any] | None = None
    phase4_plan: dict[str, Any] | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _read_spellings(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """`instruction` or `shell` (and the like) fill a blank `prompt` or `command`. A
        field filled from another name counts as unset when the file did not have it, so
        the queue, written with exclude_unset, keeps the user's spelling and only it."""
        spelled = spelled_fields(data) if isinstance(data, dict) else {}
        if not spelled:
            return handler(data)
        task = handler(with_spellings(data, spelled))
        task.__pydantic_fields_set__.difference_update(set(spelled) - data.keys())
        return task

    @field_validator("depends_on", "worker_labels", mode="before")
    @classmethod
    def _names_list(cls, value: object) -> object:
        return comma_list(value)

    @property
    def effective_mode(self) -> Mode:
        return self.mode or implied_mode(self.prompt, self.command)

    def to_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


def check_task_fields(task_id: str, names: Iterable[str]) -> None:
    """The runtime's own changes name only Task's fields: a misspelt one is an error,
    never a new key in queue.json (fields a user wrote there are kept as they are)."""
    for name in names:
        if name not in Task.model_fields:
            guess = difflib.get_close_matches(name, Task.model_fields, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            raise TypeError(f"task {task_id!r} has no field {name!r}{hint}")


class QueueDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str = QUEUE_CONTRACT_VERSION
    api_endpoint: str = DEFAULT_API_ENDPOINT
    tasks: list[Task] = Field(default_factory=list)
    completed: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)

    def find(self, task_id: str) -> Task | None:
        return next((t for t in self.tasks if t.id == task_id), None)


Outcome = Literal["completed", "failed"]


class QueueJournalRecord(BaseModel):
    """One queue transaction in `.swarm/queue_journal.jsonl`, appended instead of rewriting
    a large queue.json. It holds the new state of each task it changed, never a difference,
    so replaying a record that queue.json already contains changes nothing."""

    model_config = ConfigDict(extra="forbid")

    at: float
    tasks: list[Task] = Field(default_factory=list)
    # A new task's place: the id of the task it was inserted in front of (else it is last).
    before: dict[str, str] = Field(default_factory=dict)
    # Moved to the archive.
    removed: list[str] = Field(default_factory=list)
    # Which of queue.json's `completed` / `failed` lists a task id now belongs to, if any.
    outcomes: dict[str, Outcome | None] = Field(default_factory=dict)
    api_endpoint: str | None = None
    # The events committed with this transaction, as execution_log.jsonl holds them, and
    # the log's size before them: the log gets them once the record is durable, and a
    # record whose lines the log lacks (its writer died in between) is applied again.
    events: list[dict[str, Any]] = Field(default_factory=list)
    log_at: int | None = None
    # What redoes this transaction's effects beside the queue (a review's gate vote and
    # reward), by the name of the applier that does it: their files are written without
    # an fsync of their own, and made durable when the journal is folded.
    vouches: dict[str, Any] = Field(default_factory=dict)


# --- events -------------------------------------------------------------------------


class Event(BaseModel):
    """Envelope shared by every line of execution_log.jsonl."""

    model_config = ConfigDict(extra="allow")

    task_id: str
    worker_id: str
    status: Status
    timestamp: str = Field(default_factory=lambda: utc_now().isoformat())
    host: str | None = None  # of the process that wrote it: one log holds every host's


class ExecutionFields(ExecutionFacts):
    """Fields of the design's execution events; present with null when empty."""

    safety_report: dict[str, Any] | None = None


class ExecutionEvent(Event, ExecutionFields):
    """in_progress, completed, failed, safety_blocked, cancelled and the like."""

    mode: Mode | None = None
    attempt: int | None = None


class ReviewFields(BaseModel):
    """Phase 2: what the critic said about one attempt."""

    review_verdict: Verdict | None = None
    review_confidence: float | None = None
    review_issues: list[str] | None = None
    review_suggestions: list[str] | None = None
    review_attempt: int | None = None
    review_error: str | None = None


class QualityGateFields(BaseModel):
    quality_gate_status: QualityGateStatus | None = None
    quality_gate_decision: Literal["approved", "rejected"] | None = None
    quality_gate_change_id: str | None = None
    quality_gate_error: str | None = None


class RewardFields(BaseModel):
    """Phase 5: whether approved, under-budget work earned identity tokens."""

    phase5_reward_applied: bool | None = None
    phase5_reward_tokens_requested: int | None = None
    phase5_reward_tokens_awarded: int | None = None
    phase5_reward_identity: str | None = None
    phase5_reward_reason: str | None = None
    phase5_reward_granted_at: str | None = None
    phase5_reward_ledger_recorded: bool | None = None
    phase5_reward_error: str | None = None


class ReviewEvent(ExecutionEvent, ReviewFields, QualityGateFields, RewardFields):
    """pending_review, and the approved | requeue | failed that follows a review."""


class PlanFields(BaseModel):
    """Phase 4: the decomposition of a parent task."""

    phase4_plan_generated: bool | None = None
    phase4_complexity_score: int | None = None
    phase4_features: list[str] | None = None
    phase4_subtasks: list[str] | None = None
    phase4_subtasks_added: int | None = None


class PlanEvent(Event, PlanFields):
    """`queued`: a parent was split into subtasks and waits for them."""


class OperatorEvent(ExecutionEvent):
    """A change an operator made from the control panel, logged like any transition."""

    operator_action: OperatorAction | None = None


class ApiEndpointRecord(BaseModel):
    """`.swarm/api_endpoint.json`: where this host's API listens, when the queue is shared
    by many hosts and its one `api_endpoint` cannot name each host's own API."""

    url: str


class WorkerPresence(BaseModel):
    """`.swarm/workers/<id>.json`: an idle worker holds no lease, so it says it is alive here."""

    worker_id: str
    pid: int
    host: str
    labels: list[str] = Field(default_factory=list)
    started_at: str
    last_seen: float
    paused: bool = False


class DiscardedEvent(ExecutionEvent):
    """`result_discarded`: what a worker computed for an attempt whose lease it had lost.

    The attempt's new holder decides the task; `discarded_status` is what this one
    would have recorded. Readers never take it for the task's status."""

    discarded_status: Status | None = None


class LeaseEvent(Event):
    """A lease was reclaimed from a holder that stopped renewing it."""

    previous_holder: dict[str, Any] | None = None
    reason: str | None = None


class ApiRetryEvent(ExecutionEvent):
    """`in_progress` still: a call to the execution API failed and will be tried again.

    `errors` says what failed; the task keeps its lease and its attempt number."""

    api_retry: int | None = None
    retry_in: float | None = None


# --- the /cycle wire format ---------------------------------------------------------


class CycleRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str | None = None
    task: str | None = None
    mode: Mode | None = None
    model: str | None = Field(default=None, max_length=200)
    max_tokens: int = Field(default=1024, ge=1, le=65536)
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    timeout: float = Field(default=30.0, gt=0, le=3600)
    min_budget: float | None = Field(default=None, ge=0)
    max_budget: float | None = Field(default=None, ge=0)
    intensity: Literal["low", "medium", "high"] | None = None
    task_id: TaskId | None = None

    @property
    def effective_mode(self) -> Mode:
        return self.mode or implied_mode(self.prompt, self.task)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CycleResponse(BaseModel):
    status: Literal[Status.COMPLETED, Status.FAILED]
    result: str | None = None
    model: str | None = None
    task_id: str | None = None
    usage: Usage | None = None
    output: str | None = None
    budget_used: float | None = None
    exit_code: int | None = None
    safety_report: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """Every non-2xx answer of both servers: never an HTML page, never a traceback."""

    error: str
    field: str | None = None
    rule: str | None = None
    retryable: bool = False
    # A refusal by the safety gateway or the local-command policy carries its report, so
    # the worker records the task as safety_blocked with the rule, as if it had refused.
    safety_report: dict[str, Any] | None = None
