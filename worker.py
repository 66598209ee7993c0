"""worker.py: polls queue.json and drives each task through its lifecycle.

    claim (lease) -> in_progress -> preflight safety -> POST /cycle -> completed | failed
                                        \\-> safety_blocked (no HTTP call)

Every transition is an event in execution_log.jsonl and a status in queue.json.
One task can never stop the worker: `Worker.step` is the single place that catches
broadly, and records whatever went wrong as that task's failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cycle_client import CycleClient, Dispatch, EndpointRefused
from errors import DuplicateTaskError, LeaseLostError, QueueFileError, SwarmError
from event_log import EventLog, cap_text
from execution_token import resolve_token
from queue_store import HOST, ClaimOutcome, QueueStore, WorkerIdentity
from runtime_contract import (
    DEFAULT_INTENSITY,
    DEFAULT_MAX_BUDGET,
    DEFAULT_MIN_BUDGET,
    CycleRequest,
    Mode,
    Status,
    Task,
    iso,
    utc_now,
)
from safety_gateway import SafetyGateway
from settings import Settings
from state_store import Workspace

log = logging.getLogger("worker")
LOCAL_COMMAND_TIMEOUT = 30.0
DISPATCH_GRACE_SECONDS = 30.0
SUMMARY_CHARS = 2000


@dataclass
class Outcome:
    """A task's result as the worker records it: a status and the event's fields."""

    status: Status
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.fields.get("errors")


class Worker:
    def __init__(
        self,
        settings: Settings,
        workspace: Workspace,
        *,
        identity: WorkerIdentity,
        client: CycleClient,
        gateway: SafetyGateway,
    ):
        self.settings = settings
        self.identity = identity
        self.store = QueueStore(workspace, retain=settings.queue_retain)
        self.events = EventLog(workspace, identity.worker_id)
        self.client = client
        self.gateway = gateway

    # --- the loop ----------------------------------------------------------------------

    def run(self, *, once: bool, stop: threading.Event) -> int:
        """Work until stopped, or with `once` until nothing is runnable. Returns an exit code."""
        reported: str | None = None
        while not stop.is_set():
            try:
                outcome = self.step()
            except QueueFileError as exc:
                if str(exc) != reported:
                    log.error("queue.json is malformed and will not be touched: %s", exc)
                    reported = str(exc)
                if once:
                    return 2
                stop.wait(self.settings.poll_interval)
                continue
            reported = None
            if outcome.task is None:
                if once and outcome.drained:
                    return 0
                stop.wait(self.settings.poll_interval)
        return 0

    def step(self) -> ClaimOutcome:
        """Claim one task and see it through; reports what the claim found."""
        claim = self.store.claim(self.identity, self.settings.lease_seconds)
        self._report_cleanup(claim)
        if claim.task is not None:
            self.process(claim.task, claim.api_endpoint)
        return claim

    def _report_cleanup(self, claim: ClaimOutcome) -> None:
        for item in claim.reclaimed:
            log.warning("reclaimed task %s: %s", item.task_id, item.reason)
            self.events.emit(
                item.task_id, Status.LEASE_EXPIRED, previous_holder=item.previous, reason=item.reason
            )
        for item in claim.propagated:
            log.warning("task %s cannot run: %s", item.task_id, item.reason)
            self.events.emit(
                item.task_id, item.status, errors=item.reason, completed_at=iso(utc_now())
            )

    # --- one task ----------------------------------------------------------------------

    def process(self, task: Task, endpoint: str) -> Outcome:
        started = utc_now()
        self.events.emit(
            task.id, Status.IN_PROGRESS, started_at=iso(started),
            mode=task.effective_mode, attempt=task.attempts,
        )
        log.info("task %s started (attempt %d)", task.id, task.attempts)
        with self._keep_lease(task.id):
            try:
                outcome = self.execute(task, endpoint)
            except Exception as exc:  # the per-task error boundary
                log.exception("task %s crashed the worker path", task.id)
                outcome = Outcome(Status.FAILED, {"errors": f"{type(exc).__name__}: {exc}"})
        outcome.fields.setdefault("started_at", iso(started))
        outcome.fields["completed_at"] = iso(utc_now())
        self.events.emit(task.id, outcome.status, mode=task.effective_mode, **outcome.fields)
        self._finish(task, outcome)
        return outcome

    def _finish(self, task: Task, outcome: Outcome) -> None:
        try:
            self.store.finish(
                task.id, self.identity, outcome.status,
                last_error=cap_text(outcome.error, SUMMARY_CHARS) if outcome.error else None,
            )
        except LeaseLostError as exc:
            log.warning("%s; its new holder will run it again", exc)
        log.info("task %s -> %s", task.id, outcome.status.value)

    def execute(self, task: Task, endpoint: str) -> Outcome:
        """Preflight the exact text that will run, then dispatch it."""
        request = build_request(task)
        text = request.task if request.effective_mode == Mode.LOCAL else request.prompt
        if not text or not text.strip():
            return Outcome(Status.FAILED, {"errors": missing_input_error(task)})
        passed, report = self.gateway.pre_execute_safety_check(text, task.id)
        if not passed:
            return Outcome(Status.SAFETY_BLOCKED, {
                "errors": f"Safety check failed: {report.get('blocked_reason')}",
                "safety_passed": False, "safety_report": report,
            })
        try:
            dispatch = self.client.dispatch(
                endpoint, request.model_dump(mode="json", exclude_none=True),
                read_timeout=request.timeout + DISPATCH_GRACE_SECONDS,
            )
        except EndpointRefused as exc:
            return Outcome(Status.FAILED, {"errors": str(exc), "safety_passed": True,
                                           "safety_report": report})
        return outcome_from_dispatch(dispatch, report)

    @contextmanager
    def _keep_lease(self, task_id: str) -> Iterator[None]:
        """Renew the lease while the task runs, so no other worker reclaims it."""
        done = threading.Event()
        interval = self.settings.lease_seconds / 3

        def renew() -> None:
            while not done.wait(interval):
                try:
                    if not self.store.heartbeat(task_id, self.identity, self.settings.lease_seconds):
                        log.warning("lost the lease on task %s", task_id)
                        return
                except SwarmError as exc:
                    log.warning("could not renew the lease on task %s: %s", task_id, exc)

        thread = threading.Thread(target=renew, name=f"lease-{task_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


# --- pure helpers -----------------------------------------------------------------------


def build_request(task: Task) -> CycleRequest:
    """The /cycle body for a task: the command for local work, the prompt for llm work."""
    mode = task.effective_mode
    return CycleRequest(
        prompt=task.prompt if mode == Mode.LLM else None,
        task=(task.command or task.prompt) if mode == Mode.LOCAL else None,
        mode=mode,
        model=task.model,
        min_budget=DEFAULT_MIN_BUDGET if task.min_budget is None else task.min_budget,
        max_budget=DEFAULT_MAX_BUDGET if task.max_budget is None else task.max_budget,
        intensity=task.intensity or DEFAULT_INTENSITY,
        task_id=task.id,
        timeout=LOCAL_COMMAND_TIMEOUT,
    )


def missing_input_error(task: Task) -> str:
    if task.effective_mode == Mode.LOCAL:
        return "local task has no command to run (set `command`)"
    return "task has neither a prompt nor a command"


def outcome_from_dispatch(dispatch: Dispatch, report: dict[str, Any]) -> Outcome:
    """Success comes from the response body's status and exit code, never from HTTP 200 alone."""
    body = dispatch.response
    if body is None:
        return Outcome(Status.FAILED, {
            "errors": dispatch.error, "safety_passed": True, "safety_report": report,
        })
    succeeded = body.status == Status.COMPLETED and body.exit_code in (None, 0)
    fields: dict[str, Any] = {
        "result_summary": body.result,
        "model": body.model,
        "budget_used": body.budget_used,
        "safety_passed": bool((body.safety_report or report).get("passed", True)),
        "safety_report": body.safety_report or report,
        "exit_code": body.exit_code,
        "output": body.output,
    }
    if not succeeded:
        fields["errors"] = failure_reason(body)
    return Outcome(Status.COMPLETED if succeeded else Status.FAILED, fields)


def failure_reason(body: Any) -> str:
    if body.exit_code not in (None, 0):
        tail = (body.output or "").strip()[-500:]
        return f"command exited with code {body.exit_code}" + (f": {tail}" if tail else "")
    return body.result or "the execution API reported a failure"


# --- command line -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="worker.py", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="exit when nothing is runnable")
    parser.add_argument("--worker-id", help="name in leases and events (default: host-pid)")
    commands = parser.add_subparsers(dest="action")
    add = commands.add_parser("add", help="append a task to queue.json")
    add.add_argument("id")
    add.add_argument("prompt", help="the llm prompt (or the command, with --mode local)")
    add.add_argument("--depends-on", default="", help="comma-separated task ids")
    add.add_argument("--mode", choices=[m.value for m in Mode])
    add.add_argument("--command", help="a local command to run in the sandbox")
    add.add_argument("--model")
    add.add_argument("--min-budget", type=float)
    add.add_argument("--max-budget", type=float)
    return parser.parse_args(argv)


def task_record(args: argparse.Namespace) -> dict[str, Any]:
    depends_on = [dep.strip() for dep in args.depends_on.split(",") if dep.strip()]
    record: dict[str, Any] = {"id": args.id, "depends_on": depends_on}
    if args.command or args.mode == Mode.LOCAL:
        record.update(mode=Mode.LOCAL.value, command=args.command or args.prompt)
        if args.command:
            record["prompt"] = args.prompt
    else:
        record.update(mode=Mode.LLM.value, prompt=args.prompt)
    for name in ("model", "min_budget", "max_budget"):
        if getattr(args, name) is not None:
            record[name] = getattr(args, name)
    return record


def add_task(args: argparse.Namespace, workspace: Workspace, settings: Settings) -> int:
    store = QueueStore(workspace, retain=settings.queue_retain)
    try:
        task = store.add(task_record(args))
    except DuplicateTaskError as exc:
        print(f"error: {exc}; choose another id", file=sys.stderr)
        return 1
    except QueueFileError as exc:
        print(f"error: queue.json is malformed, nothing was added: {exc}", file=sys.stderr)
        return 2
    except (SwarmError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"added task {task.id} ({task.effective_mode.value})")
    return 0


def install_stop_handlers(stop: threading.Event) -> None:
    """Flag-only handlers: the loop finishes the task in hand, then exits 0."""

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s; finishing the current task", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s worker: %(message)s", stream=sys.stdout
    )
    args = parse_args(argv)
    try:
        settings = Settings.from_env()
    except SwarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workspace = Workspace(settings.workspace)
    workspace.ensure_layout()
    if args.action == "add":
        return add_task(args, workspace, settings)
    identity = WorkerIdentity(args.worker_id or default_worker_id())
    worker = Worker(
        settings, workspace, identity=identity,
        client=CycleClient(resolve_token(settings, workspace), retries=settings.api_retries),
        gateway=SafetyGateway(workspace),
    )
    stop = threading.Event()
    install_stop_handlers(stop)
    log.info("worker %s polling %s", identity.worker_id, workspace.queue_path)
    return worker.run(once=args.once, stop=stop)


def default_worker_id() -> str:
    return f"{HOST}-{os.getpid()}"


if __name__ == "__main__":
    sys.exit(main())
