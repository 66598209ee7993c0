"""The runtime's one error tree.

    SwarmError
    ├── StateFileError            a state file is unreadable or breaks its schema
    │   ├── QueueFileError        ... and that file is queue.json or its journal
    │   └── UnsafeStateError      ... or another user could redirect or read it (a link,
    │                             a loose mode, a foreign owner): the process refuses it
    ├── DuplicateTaskError        `add` met an id that is already queued
    ├── QueueNotEmpty             an import into a queue that already holds tasks
    ├── UnknownTaskError          an operation named a task the queue does not hold
    ├── TaskInputError            a new task breaks a rule (carries the field at fault)
    ├── LeaseLostError            a worker tried to finish a task it no longer owns
    ├── InvalidTransition         an operator action does not apply to the task's status
    ├── SettingsError             an environment variable cannot be parsed
    ├── PolicyViolation           a local command was refused (carries the rule)
    ├── BudgetError               a spend was refused
    │   ├── TaskBudgetExceeded    ... by the task's own max_budget
    │   └── GlobalBudgetExceeded  ... by SWARM_BUDGET_LIMIT
    ├── UnpricedModelError        a model with no price on a paid provider
    ├── RateLimited               the token bucket is empty (carries Retry-After)
    ├── ProviderError             the LLM provider failed after its retries
    ├── ReviewUnavailable         the critic could not reach a verdict (fail closed)
    ├── StoreUnavailable          the database named by SWARM_DATABASE_URL cannot be used
                                  (also a ConnectionError: like a state file that cannot be
                                  written, the work waits and is tried again)
    └── HttpError                 a server refuses a request (web.json_errors: it carries
                                  the status code and the JSON body that explains it)

Every error carries what an operator needs to act (a path, a task id, a field),
so messages can be shown as they are. Only the worker's per-task boundary and
the HTTP error handlers catch broadly.
"""

from __future__ import annotations

from pathlib import Path


class SwarmError(Exception):
    """Base of every error the runtime raises on purpose."""


class StateFileError(SwarmError):
    """A state file cannot be used; it is left untouched until an operator fixes it."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = Path(path)
        self.problems = list(problems)
        super().__init__(f"{self.path}: " + "; ".join(self.problems))


class QueueFileError(StateFileError):
    """queue.json, or the journal of its recent changes, is malformed."""


class UnsafeStateError(StateFileError):
    """A state file or folder is a symbolic link, open to other users or owned by another
    user: nothing is read or written through it, and the problems say how to fix it."""


class DuplicateTaskError(SwarmError):
    def __init__(self, task_id: str):
        self.task_id = task_id
        super().__init__(f"task id {task_id!r} is already in the queue")


class QueueNotEmpty(SwarmError):
    def __init__(self, tasks: int, outcomes: int):
        super().__init__(
            f"the queue is not empty ({tasks} tasks, {outcomes} finished ids): "
            "a queue.json is imported only into an empty one"
        )


class UnknownTaskError(SwarmError):
    def __init__(self, task_id: str):
        self.task_id = task_id
        super().__init__(f"no task with id {task_id!r} in the queue")


class TaskInputError(SwarmError):
    """A proposed task was refused before the queue saw it; the message names the field
    as the user wrote it, so every front end can show it as it is."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class LeaseLostError(SwarmError):
    def __init__(self, task_id: str, worker_id: str, holder: str | None):
        self.task_id = task_id
        super().__init__(
            f"worker {worker_id} no longer holds the lease on task {task_id!r}"
            f" (holder: {holder or 'nobody'})"
        )


class InvalidTransition(SwarmError):
    def __init__(self, task_id: str, status: str, action: str, allowed: str):
        self.task_id = task_id
        self.status = status
        super().__init__(
            f"cannot {action} task {task_id!r}: it is {status}; only {allowed} tasks can be"
        )


class SettingsError(SwarmError):
    """An environment variable holds a value the runtime cannot use."""


class PolicyViolation(SwarmError):
    """A local command broke a rule; `rule` names it for the operator."""

    def __init__(self, rule: str, reason: str):
        self.rule = rule
        self.reason = reason
        super().__init__(f"Local command blocked: {reason} (rule: {rule})")


class BudgetError(SwarmError):
    audit_event = "BUDGET_EXCEEDED"


class TaskBudgetExceeded(BudgetError):
    audit_event = "TASK_BUDGET_EXCEEDED"

    def __init__(self, task_id: str | None, estimate: float, max_budget: float):
        self.estimate = estimate
        self.max_budget = max_budget
        super().__init__(
            f"task budget exceeded for task {task_id!r}: estimated worst-case cost "
            f"${estimate:.6f} is above the task's max_budget ${max_budget:.6f}"
        )


class GlobalBudgetExceeded(BudgetError):
    def __init__(self, limit: float, spent: float, reserved: float, requested: float):
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        super().__init__(
            f"global budget exceeded (SWARM_BUDGET_LIMIT): limit ${limit:.6f}, "
            f"spent ${spent:.6f}, reserved ${reserved:.6f}, this call needs ${requested:.6f}"
        )


class UnpricedModelError(SwarmError):
    def __init__(self, model: str):
        self.model = model
        super().__init__(
            f"model {model!r} has no price; add it to a JSON file named by "
            'SWARM_PRICES_FILE as {"' + model + '": {"input": <USD per 1M tokens>, '
            '"output": <USD per 1M tokens>}}'
        )


class RateLimited(SwarmError):
    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"rate limit reached (SWARM_RATE_LIMIT); retry after {retry_after:.1f}s")


class ProviderError(SwarmError):
    """The provider could not answer usefully; `retryable` says whether trying later may help,
    and `maybe_billed` whether the request reached the provider, which may have charged for
    it (a read timeout, a connection lost mid-answer, an answer that could not be read)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        status_code: int | None = None,
        maybe_billed: bool = False,
    ):
        self.retryable = retryable
        self.status_code = status_code
        self.maybe_billed = maybe_billed
        super().__init__(message)


class ReviewUnavailable(SwarmError):
    """The critic could not run; the task stays pending_review rather than being approved."""


class StoreUnavailable(SwarmError, ConnectionError):
    """The database cannot be reached or refuses us; `url` never holds the password, and
    the message says what to check."""

    def __init__(self, url: str, problem: str, hint: str):
        self.url = url
        self.problem = problem
        super().__init__(f"database {url}: {problem}; {hint}")
