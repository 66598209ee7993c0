"""worker.py: polls queue.json and drives each task through its lifecycle.

    claim (lease) -> in_progress -> phase 4: gut check --complex--> queued (split into
                                       |                           dependent subtasks)
                                       v
                     phase 3: tool routing, intent and feedback wrapped into the prompt
                                       v
                     phase 1: preflight safety --refused--> safety_blocked (no HTTP call)
                                       v
                     POST /cycle -> completed | failed
                                       v
                     phase 2: critic -> pending_review -> quality gate
                                       v
                     phase 5: reward -> approved | requeue (backoff) | failed

Every transition is an event in execution_log.jsonl and a status in queue.json. The
execution is recorded before its review, so a crash during review resumes the review
and never runs the task again. One task can never stop the worker: `Worker.process`
is the single place that catches broadly; before the execution it records the
failure, after it parks the task in pending_review (never approving by default).
While the loop runs, a task's execution record (or, unreviewed, its last transition)
also claims the worker's next task, in one commit (`Worker._commit_record`,
`Worker._commit_finish`). A task claimed with an execution record is sent to swarm.py
at once, and its answer read after the review before it (`Worker._start_ahead`): the
review and swarm.py's run of the next task overlap. While a request is in flight, a step
may claim one more task, which the store grants only with work to spare for every other
worker at work (`Worker._claims_with_step`); it is preflighted at once and sent the
moment the answer in flight is read (`Worker._send_ready`), so the API never waits for
the worker's transactions between two tasks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from swarm_runtime.contract import (
    DEFAULT_INTENSITY,
    DEFAULT_MAX_BUDGET,
    DEFAULT_MIN_BUDGET,
    ApiRetryEvent,
    CycleRequest,
    DiscardedEvent,
    ExecutionFacts,
    ExecutionRecord,
    Mode,
    PlanEvent,
    QualityGateStatus,
    ReviewEvent,
    ReviewRecord,
    Status,
    Task,
    Verdict,
    iso,
    utc_now,
)
from swarm_runtime.errors import (
    LeaseLostError,
    QueueFileError,
    ReviewUnavailable,
    StateFileError,
    StoreUnavailable,
    SwarmError,
)
from swarm_runtime.phases.critic import (
    Review,
    decide,
    requeue_backoff,
    review_fields,
    review_record,
)
from swarm_runtime.phases.decomposition import (
    GutCheck,
    break_into_features,
    gut_check,
    plan_decomposition,
    plan_event_fields,
    should_plan,
)
from swarm_runtime.phases.intent import intent_from_task, with_intent
from swarm_runtime.phases.prompt import compose_prompt, routing_text, subtask_results
from swarm_runtime.phases.quality_gate import QualityGate
from swarm_runtime.phases.rewards import RewardBook, not_approved_fields
from swarm_runtime.phases.routing import ToolRouter, decision_fields, load_router
from swarm_runtime.phases.vouched import effect_appliers
from swarm_runtime.queue.endpoint import endpoint_for
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.leases import owned_by
from swarm_runtime.queue.presence import PresenceBeacon
from swarm_runtime.queue.rules import awaits_review
from swarm_runtime.queue.select import store_for
from swarm_runtime.queue.store import ClaimOutcome, WorkerIdentity
from swarm_runtime.queue.transition_events import Effect, EffectResult, Outstanding
from swarm_runtime.safety.gateway import SafetyGateway
from swarm_runtime.safety.inserted import InsertedTextScreen
from swarm_runtime.settings import Settings
from swarm_runtime.store.documents import documents_for
from swarm_runtime.store.events import ENVELOPE, EventLog, cap_text
from swarm_runtime.store.failpoints import failpoint
from swarm_runtime.store.pause import pause_message, read_pause
from swarm_runtime.store.state_files import Workspace, file_version
from swarm_runtime.worker.cycle_client import CycleClient, Dispatch, EndpointRefused
from swarm_runtime.worker.lease_keeper import LeaseKeeper
from swarm_runtime.worker.review import Critic

log = logging.getLogger("worker")
LOCAL_COMMAND_TIMEOUT = 30.0
DISPATCH_GRACE_SECONDS = 30.0
SUMMARY_CHARS = 2000
RECORDED_OUTPUT_BYTES = 32 * 1024
# A finished result is committed this many times in all while queue.json's lock stays busy
# past its timeout, waiting twice as long after each refusal (capped), before giving up.
COMMIT_BACKOFF_SECONDS = 0.5
COMMIT_BACKOFF_MAX_SECONDS = 2.0
# A result waits this long at least for its store to come back (three leases, if longer):
# while the store is away nobody can take the task, and when it is back the first write
# should be the holder's, not another worker's reclaim.
COMMIT_PATIENCE_SECONDS = 60.0
# A renewal that failed is tried again this soon, so a lease is renewed as soon as the
# store is back, before another host's claim can find it expired.
RENEW_RETRY_SECONDS = 1.0

R = TypeVar("R")


@dataclass
class Outcome:
    """A task's result as the worker records it: a status and the event's fields."""

    status: Status
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.fields.get("errors")


@dataclass(frozen=True)
class Prepared:
    """A request that passed its preflight, ready to send."""

    request: CycleRequest
    report: dict[str, Any]
    route_fields: dict[str, Any]


@dataclass(frozen=True)
class Running:
    """A task claimed ahead whose request went to the API before its turn;
    `outcome()` reads its answer."""

    task: Task
    outcome: Callable[[], Outcome]


@dataclass(frozen=True)
class Ready:
    """A task claimed ahead and preflighted while another's request is in flight: sent
    the moment that answer is read, so that the API never waits for the worker."""

    task: Task
    prepared: Prepared | Outcome
    endpoint: str


@dataclass
class Progress:
    """How far the task in hand got: once `execution` is set it must never run again."""

    task: Task
    started_at: str
    execution: ExecutionRecord | None = None


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
        self.workspace = workspace
        self.documents = documents_for(settings, workspace)
        self.quality_gate = QualityGate(workspace, self.documents.quality_gate)
        self.rewards = RewardBook(workspace, self.documents.reward_ledger, self.documents.balances)
        appliers = effect_appliers(self.quality_gate, self.rewards)
        self.store: TaskQueue = store_for(settings, workspace, worker=True, appliers=appliers)
        self.events = EventLog(identity.worker_id, host=identity.host)
        self.client = client
        self.gateway = gateway
        self.critic = Critic(workspace.sandbox, client, settings.critic_model)
        self._pause_reported: str | None = None
        self._router: tuple[tuple[int, int, int] | None, ToolRouter] | None = None
        self.beacon = PresenceBeacon(workspace, identity, self.documents.database)
        self.commit_backoff = COMMIT_BACKOFF_SECONDS
        self._claim_in_doubt = False
        # The claims committed with earlier tasks' steps, for the next steps in order (at
        # most two tasks: the one in flight and one ready); the claim committed with this
        # step, to start at once; and the loop's stop, without which (a step or task run
        # on its own) nothing claims ahead.
        self._ahead: deque[ClaimOutcome] = deque()
        self._fresh: ClaimOutcome | None = None
        self._stop: threading.Event | None = None
        # The task claimed ahead whose request is in flight, its answer read in its turn;
        # and the one claimed beside it, prepared, sent as soon as that answer is read.
        self._running: Running | None = None
        self._ready: Ready | None = None
        self.configured_endpoint = configured_endpoint(settings)
        renew_every = settings.lease_seconds / 3
        self.lease_keeper = LeaseKeeper(self._renew_lease, renew_every, RENEW_RETRY_SECONDS)

    # --- the loop ----------------------------------------------------------------------

    def run(self, *, once: bool, stop: threading.Event) -> int:
        """Work until stopped, or with `once` until nothing is runnable. Returns an exit code."""
        self._stop = stop
        try:
            return self._loop(once=once, stop=stop)
        finally:
            self._stop = None
            self.beacon.withdraw()
            self.leave_queue_current(leaving=True)
            self.store.close()
            self.documents.close()

    def leave_queue_current(self, *, leaving: bool = False) -> None:
        """Fold the queue journal into queue.json as work stops, so that queue.json shows
        what this worker did to anyone reading it directly; on the way out, unless
        another worker at work will (`QueueStore.flush`)."""
        try:
            self.store.flush(self.identity if leaving else None)
        except (OSError, StateFileError) as exc:
            log.warning("queue.json may lag behind its journal: %s", exc)

    def _loop(self, *, once: bool, stop: threading.Event) -> int:
        reported: str | None = None
        was_paused = False
        while self._holds_next() or not stop.is_set():
            paused = not self._holds_next() and self.paused()
            self.announce(paused)
            if paused:
                if once:
                    return 0
                if not was_paused:  # its last steps durable, queue.json current
                    self.leave_queue_current()
                was_paused = True
                stop.wait(self.settings.poll_interval)
                continue
            was_paused = False
            try:
                outcome = self.step()
            except (QueueFileError, OSError) as exc:
                if str(exc) != reported:
                    log.error("%s", stalled_message(exc))
                    reported = str(exc)
                if once:
                    return 2
                stop.wait(self.settings.poll_interval)
                continue
            if reported is not None:
                log.info("state files are writable again; claiming tasks")
            reported = None
            if outcome.task is None:
                if once and outcome.drained:
                    return 0
                self.wait_for_work(stop)
        return 0

    def wait_for_work(self, stop: threading.Event) -> None:
        """Wait out the poll interval, but claim again as soon as the queue changes, so new
        work starts at once instead of up to a whole interval later."""
        self.store.wait_for_change(self.settings.poll_interval, stop)

    def announce(self, paused: bool) -> None:
        """Presence is a courtesy to the panel: a failed write (a full disk) must not stop work."""
        try:
            self.beacon.announce(paused=paused)
        except OSError as exc:
            log.warning("could not update this worker's presence file: %s", exc)

    def paused(self) -> bool:
        """The kill switch is read before every claim, the fleet's and this host's; a
        broken switch counts as on."""
        try:
            message = pause_message(read_pause(self.documents.pause), self.identity.host)
        except (StateFileError, StoreUnavailable) as exc:
            message = f"pause switch unreadable, claiming nothing: {exc}"
        if message != self._pause_reported:
            if message:
                log.warning("%s", message)
            else:
                log.info("resumed: claiming tasks again")
            self._pause_reported = message
        return message is not None

    def _holds_next(self) -> bool:
        """A task claimed with the last task's step is run next, even if a pause or a
        stop came after its claim: it is this worker's, as a task in hand is."""
        return bool(self._ahead)

    def step(self) -> ClaimOutcome:
        """Claim one task (or take the one claimed with the last task's step) and see
        it through; reports what the claim found."""
        self._fresh = None
        if self._ahead:
            claim = self._ahead.popleft()
        else:
            claim = self._claim()
            self._report_cleanup(claim)
        if claim.task is not None:
            started_at = claim.started_at or iso(utc_now())
            self.process(claim.task, self.endpoint(claim.api_endpoint), started_at)
        return claim

    def _claim(self) -> ClaimOutcome:
        """A claim whose answer was lost (the database went away during its commit) may
        have leased a task all the same. Until a claim is answered, the next one first
        takes back a task this worker holds, in the same attempt: left alone, it would
        wait out its lease leased to nobody and then run again as a second attempt."""
        if self._claim_in_doubt:
            document = self.store.load()
            self._claim_in_doubt = False
            held = next((t for t in document.tasks if owned_by(t, self.identity)), None)
            if held is not None:
                log.warning("task %s: its claim was committed after all; running it", held.id)
                return ClaimOutcome(task=held, api_endpoint=document.api_endpoint)
        self._claim_in_doubt = True
        claim = self.store.claim(self.identity, self.settings.lease_seconds)
        self._claim_in_doubt = False
        return claim

    def endpoint(self, named_by_queue: str) -> str:
        """SWARM_API_PORT's API, else this host's own (`queue.endpoint`)."""
        own = endpoint_for(self.settings, self.workspace, named_by_queue)
        return self.configured_endpoint or own

    def _report_cleanup(self, claim: ClaimOutcome) -> None:
        """The claim committed its events; the worker's log says what it cleaned up."""
        for item in claim.reclaimed:
            log.warning("reclaimed task %s: %s", item.task_id, item.reason)
        for failed in claim.propagated:
            log.warning("task %s cannot run: %s", failed.task_id, failed.reason)

    # --- one task ----------------------------------------------------------------------

    def process(self, task: Task, endpoint: str, started_at: str) -> Outcome:
        progress = Progress(task, started_at)
        with self.lease_keeper.keep(task.id):
            try:
                return self._advance(progress, endpoint)
            except LeaseLostError as exc:
                log.warning("%s; its new holder will see it through", exc)
                return Outcome(Status.FAILED, {"errors": str(exc)})
            except Exception as exc:  # the per-task error boundary
                log.exception("task %s crashed the worker path", task.id)
                error = f"{type(exc).__name__}: {exc}"
                if progress.execution is not None:
                    return self._park(progress.task, progress.execution, error)
                return self._fail(progress.task, error)

    def _advance(self, progress: Progress, endpoint: str) -> Outcome:
        task = progress.task
        if task.status == Status.PENDING_REVIEW and task.execution is not None:
            log.info("task %s: resuming its review; the execution is on record", task.id)
            progress.execution = task.execution
            return self.review(task, task.execution, endpoint)
        running = self._take_running(task.id)
        if running is None:
            log.info("task %s started (attempt %d)", task.id, task.attempts)
            if self.plan(task):
                return Outcome(Status.QUEUED)
            running = self._start_in_turn(with_intent(task), endpoint)
        task = progress.task = running.task
        outcome = running.outcome()
        self._send_ready()
        intent: dict[str, Any] = {"phase4_intent": task.phase4_intent}
        outcome.fields.setdefault("started_at", progress.started_at)
        outcome.fields["completed_at"] = iso(utc_now())
        event = self._outcome_event(task, outcome)
        if outcome.status != Status.COMPLETED or not self.settings.review:
            self._finish(task, outcome, [event], **intent)
            return outcome
        execution = execution_record(task, outcome, self.identity.host)
        progress.task = self._transition(
            task,
            [event],
            lambda: self._commit_record(task.id, execution, [event], intent),
            lambda stored: stored.execution == execution and owned_by(stored, self.identity),
        )
        progress.execution = execution
        self._start_ahead()
        return self.review(progress.task, execution, endpoint)

    def _outcome_event(self, task: Task, outcome: Outcome) -> dict[str, Any]:
        return self.events.build(
            task.id,
            outcome.status,
            mode=task.effective_mode,
            attempt=task.attempts,
            **outcome.fields,
        )

    def _fail(self, task: Task, error: str) -> Outcome:
        outcome = Outcome(Status.FAILED, {"errors": error, "completed_at": iso(utc_now())})
        self._finish(task, outcome, [self._outcome_event(task, outcome)])
        return outcome

    def _finish(
        self,
        task: Task,
        outcome: Outcome,
        events: list[dict[str, Any]],
        effects: Sequence[Effect] = (),
        **fields: Any,
    ) -> None:
        """Commit the task's new status with its events and effects; a lost lease commits
        none of them."""
        error = outcome.error
        fields["last_error"] = cap_text(error, SUMMARY_CHARS) if error else None
        try:
            self._transition(
                task,
                events,
                lambda: self._commit_finish(task.id, outcome.status, events, effects, fields),
                lambda stored: finished_as(stored, task, outcome.status),
            )
        except LeaseLostError as exc:
            log.warning("%s; its new holder will run it again", exc)
        log.info("task %s -> %s", task.id, outcome.status.value)
        self._start_ahead()

    def _commit_finish(
        self,
        task_id: str,
        status: Status,
        events: list[dict[str, Any]],
        effects: Sequence[Effect],
        fields: dict[str, Any],
    ) -> Task:
        """The finish, committed with the worker's next claim while it may claim one
        (`_claims_with_step`): one transaction and one fsync where two took two."""
        if not self._claims_with_step():
            return self.store.finish(
                task_id, self.identity, status, events=events, effects=effects, **fields
            )
        return self._with_claim(
            lambda: self.store.finish_and_claim(
                task_id,
                self.identity,
                status,
                self.settings.lease_seconds,
                events=events,
                effects=effects,
                ahead=self._running is not None,
                **fields,
            )
        )

    def _commit_record(
        self,
        task_id: str,
        execution: ExecutionRecord,
        events: list[dict[str, Any]],
        fields: dict[str, Any],
    ) -> Task:
        """The execution, committed with the worker's next claim while it may claim one
        (`_claims_with_step`), so that the next task runs while this one is reviewed."""
        if not self._claims_with_step():
            return self.store.record_execution(
                task_id, self.identity, execution, events=events, **fields
            )
        return self._with_claim(
            lambda: self.store.record_execution_and_claim(
                task_id,
                self.identity,
                execution,
                self.settings.lease_seconds,
                events=events,
                ahead=self._running is not None,
                **fields,
            )
        )

    def _goes_on(self) -> bool:
        """Claims ahead are for a worker running its loop, not stopping, not paused (the
        switch is read before this claim as before any other)."""
        return self._stop is not None and not self._stop.is_set() and not self.paused()

    def _with_claim(self, commit: Callable[[], tuple[R, ClaimOutcome]]) -> R:
        """A step committed with the next claim; until it is answered the claim is in
        doubt (`_claim`). A step refused whole for a lost lease claimed nothing. A claim
        that won no task is reported and dropped: the next step claims afresh."""
        self._claim_in_doubt = True
        try:
            stepped, claim = commit()
        except LeaseLostError:
            self._claim_in_doubt = False
            raise
        self._claim_in_doubt = False
        self._report_cleanup(claim)
        if claim.task is not None:
            self._ahead.append(claim)
            self._fresh = claim
        return stepped

    def _claims_with_step(self) -> bool:
        """A step claims the worker's next task while it goes on (`_goes_on`) and holds
        no task but the one in flight. With one in flight the claim is `ahead`: the
        store makes it only while the queue has work to spare for every other worker at
        work, so a worker never sits on a task another would run at once."""
        in_flight = self._running.task.id if self._running is not None else None
        holds_more = any(claim.task.id != in_flight for claim in self._ahead if claim.task)
        return not holds_more and self._goes_on()

    def _transition(
        self,
        task: Task,
        events: list[dict[str, Any]],
        write: Callable[[], Task],
        done: Callable[[Task], bool],
    ) -> Task:
        """Commit a transition of the task in hand; `done` tells the task as it stands
        after it. Refused for a lost lease (fenced by attempt), what this worker computed
        is kept as a discarded result instead, which no reader takes for the task's
        status; then the refusal goes on up."""
        try:
            return self._commit(task.id, write, lambda: self._stored(task.id, done))
        except LeaseLostError as exc:
            discarded = [self._discarded(task, event, str(exc)) for event in events]
            self._commit(task.id, lambda: self.store.log_events(discarded))
            raise

    def _stored(self, task_id: str, done: Callable[[Task], bool]) -> Task | None:
        found = self.store.load().find(task_id)
        return found if found is not None and done(found) else None

    def _discarded(self, task: Task, event: dict[str, Any], reason: str) -> dict[str, Any]:
        kept = {k: v for k, v in event.items() if k not in ENVELOPE}
        kept.update(kind=DiscardedEvent, discarded_status=event["status"], errors=reason)
        kept["attempt"] = kept.get("attempt") or task.attempts
        return self.events.build(task.id, Status.RESULT_DISCARDED, **kept)

    def _commit(
        self, task_id: str, write: Callable[[], R], stored: Callable[[], R | None] | None = None
    ) -> R:
        """Record a task's result, trying again while the queue's lock stays busy or its
        database cannot be reached.

        The result may be paid for and cannot be had again for free, so a lock timeout
        (readers never hold the lock, but a slow writer may) or a lost database is waited
        out with the result kept in memory, rather than recorded as the task's failure.
        A database that went away during a commit leaves it in doubt: before trying
        again, `stored` looks whether it committed after all, so that nothing is recorded
        twice and a committed step is not taken for a lease lost."""
        patience = max(COMMIT_PATIENCE_SECONDS, 3 * self.settings.lease_seconds)
        deadline = time.monotonic() + patience
        delay = self.commit_backoff
        attempt, in_doubt = 1, False
        while time.monotonic() < deadline:
            try:
                found = stored() if in_doubt and stored is not None else None
                return found if found is not None else write()
            except (TimeoutError, StoreUnavailable) as exc:
                in_doubt = in_doubt or isinstance(exc, StoreUnavailable)
                log.warning(
                    "task %s: could not record its result (attempt %d), again in %.1fs: %s",
                    task_id,
                    attempt,
                    delay,
                    exc,
                )
            time.sleep(delay)  # not cut short by a stop: the result must be kept
            delay = min(delay * 2, COMMIT_BACKOFF_MAX_SECONDS)
            attempt += 1
        return write()

    # --- phase 4 -------------------------------------------------------------------------

    def plan(self, task: Task) -> bool:
        """Split a complex prompt into dependent subtasks; the parent then waits for them."""
        planning = planning_for(task)
        if planning is None:
            return False
        check, features, reason = planning
        plan = plan_decomposition(task, intent_from_task(task), check, features)
        event = self.events.build(task.id, Status.QUEUED, PlanEvent, **plan_event_fields(plan))
        self.store.plan(task.id, self.identity, plan.subtasks, plan.parent_updates, events=[event])
        log.info("task %s split into %s (%s)", task.id, ", ".join(plan.subtask_ids), reason)
        return True

    # --- the task claimed ahead ----------------------------------------------------------

    def _start_ahead(self) -> None:
        """The task claimed with this step starts now: its lease kept from here, its
        request preflighted, and sent to the API at once if no other request is in
        flight, else the moment that one's answer is read (`_send_ready`); its own
        answer is read in its turn. A task to plan or to review starts in its turn, as
        does one whose start fails here, so that its error is its own, not this task's."""
        claim, self._fresh = self._fresh, None
        if claim is None or claim.task is None:
            return
        task = claim.task
        self.lease_keeper.hold(task.id)
        if awaits_review(task) or planning_for(task) is not None:
            return
        try:
            task = with_intent(task)
            log.info("task %s started (attempt %d)", task.id, task.attempts)
            ready = Ready(task, self.prepare(task), self.endpoint(claim.api_endpoint))
        except Exception as exc:  # left to its own turn, which will meet it again
            log.debug("task %s starts in its turn: %s", task.id, exc)
            return
        self._ready = ready
        if self._running is None:
            self._send_ready()

    def _send_ready(self) -> None:
        """Send the task made ready beside the one in flight, now that nothing else is."""
        ready, self._ready = self._ready, None
        if ready is None:
            return
        try:
            self._running = self._started(ready.task, ready.prepared, ready.endpoint)
        except Exception as exc:  # left to its own turn, which will meet it again
            log.debug("task %s starts in its turn: %s", ready.task.id, exc)

    def _take_running(self, task_id: str) -> Running | None:
        """The running task `task_id`, if it is the one started ahead; a ready one whose
        turn came first (the step before it failed) is sent now."""
        if self._ready is not None and self._ready.task.id == task_id and self._running is None:
            self._send_ready()
        running = self._running
        if running is None or running.task.id != task_id:
            return None
        self._running = None
        return running

    # --- execution -----------------------------------------------------------------------

    def _start_in_turn(self, task: Task, endpoint: str) -> Running:
        """Compose, preflight the exact text that will run, and send it; while it runs,
        claim one more task beside it (`_claim_beside`)."""
        prepared = self.prepare(task)
        running = self._started(task, prepared, endpoint)
        if isinstance(prepared, Outcome):  # stopped by its preflight: nothing in flight
            return running
        self._running = running
        try:
            self._claim_beside()
        finally:
            self._running = None
        return running

    def _started(self, task: Task, prepared: Prepared | Outcome, endpoint: str) -> Running:
        """The task's request sent now, or the outcome its preflight stopped it with."""
        if isinstance(prepared, Outcome):
            return Running(task, lambda: prepared)
        return Running(task, self.send(task, prepared, endpoint))

    def _claim_beside(self) -> None:
        """A claim of its own, beside a task started in its turn, so that the worker's
        next steps find a task ready to send (as `_claims_with_step`, then claiming with
        each step). A claim that fails is left for the next step, in doubt (`_claim`):
        it is no failure of the task in flight."""
        if not self._claims_with_step():
            return
        lease_seconds = self.settings.lease_seconds
        try:
            self._with_claim(lambda: (None, self.store.claim(self.identity, lease_seconds, True)))
        except (OSError, SwarmError) as exc:
            log.warning("could not claim a task beside the one in flight: %s", exc)
            return
        self._start_ahead()

    def prepare(self, task: Task) -> Prepared | Outcome:
        """The request, composed and preflighted on the exact text that will run; or the
        outcome that stops it here."""
        prompt, route_fields = self.compose(task)
        request = build_request(task, prompt)
        text = request.task if request.effective_mode == Mode.LOCAL else request.prompt
        if not text or not text.strip():
            return Outcome(Status.FAILED, {"errors": missing_input_error(task)})
        passed, report = self.gateway.pre_execute_safety_check(text, task.id)
        if not passed:
            return Outcome(
                Status.SAFETY_BLOCKED,
                {
                    "errors": f"Safety check failed: {report.get('blocked_reason')}",
                    "safety_passed": False,
                    "safety_report": report,
                    **route_fields,
                },
            )
        return Prepared(request, report, route_fields)

    def send(self, task: Task, prepared: Prepared, endpoint: str) -> Callable[[], Outcome]:
        """Send a preflighted request now; the call returned reads its outcome."""
        request, report = prepared.request, prepared.report
        try:
            pending = self.client.begin(
                endpoint,
                request.model_dump(mode="json", exclude_none=True),
                read_timeout=request.timeout + DISPATCH_GRACE_SECONDS,
                on_retry=self._retry_reporter(task),
            )
        except EndpointRefused as exc:
            refused = Outcome(
                Status.FAILED,
                {
                    "errors": str(exc),
                    "safety_passed": True,
                    "safety_report": report,
                    **prepared.route_fields,
                },
            )
            return lambda: refused

        def outcome() -> Outcome:
            answered = outcome_from_dispatch(pending.result(), report)
            answered.fields.update(prepared.route_fields)
            return answered

        return outcome

    def _retry_reporter(self, task: Task) -> Callable[[int, str, float], None]:
        """Each failed call to the API is an event, so an operator sees a dead API at once,
        not only when the retries run out."""

        def report(retry: int, error: str, delay: float) -> None:
            event = self.events.build(
                task.id,
                Status.IN_PROGRESS,
                kind=ApiRetryEvent,
                mode=task.effective_mode,
                attempt=task.attempts,
                errors=error,
                api_retry=retry,
                retry_in=round(delay, 2),
            )
            try:
                if not self.store.log_events([event], holder=self.identity):
                    log.warning("task %s: lost its lease; retry %d not logged", task.id, retry)
            except (OSError, StateFileError) as exc:  # a note, not a transition
                log.warning("task %s: could not log API retry %d: %s", task.id, retry, exc)

        return report

    def compose(self, task: Task) -> tuple[str | None, dict[str, Any]]:
        """Phase 3 routing and the prompt wrappers; local commands run exactly as written."""
        if task.effective_mode != Mode.LLM or not task.prompt:
            return None, {}
        decision = self.router().route(routing_text(task))
        if decision.tool is not None:
            log.info(
                "Tool router selected %s via %s for %s", decision.tool.name, decision.route, task.id
            )
        results = subtask_results(task, self.store.load()) if task.phase4_planned else []
        screen = InsertedTextScreen()
        prompt = compose_prompt(task, decision, results, screen)
        if screen.flags:
            log.warning(
                "task %s: text from earlier model output neutralised (%s)",
                task.id,
                ", ".join(screen.flags),
            )
        return prompt, decision_fields(decision)

    def router(self) -> ToolRouter:
        """Built again only when the tool store changes: indexing every tool's words cost
        about 5 ms of CPU per task."""
        signature = file_version(self.workspace.tool_store_path)
        if self._router is None or self._router[0] != signature:
            self._router = (signature, load_router(self.workspace))
        return self._router[1]

    # --- phase 2 and 5 -------------------------------------------------------------------

    def review(self, task: Task, execution: ExecutionRecord, endpoint: str) -> Outcome:
        """Critic, quality gate, reward, then exactly one of approved | requeue | failed."""
        previous = task.review or ReviewRecord()
        try:
            verdict = self.critic.review(task, execution, endpoint)
        except ReviewUnavailable as exc:
            return self._park(task, execution, str(exc))
        decision = decide(
            verdict,
            rejections_before=previous.attempt,
            max_attempts=self.settings.max_requeue_attempts,
            previous_issues=previous.issues if previous.verdict == Verdict.REJECT else None,
        )
        fields = execution_fields(execution) | review_fields(verdict, decision.rejections)
        reviewed = self.events.build(task.id, Status.PENDING_REVIEW, ReviewEvent, **fields)
        vote = self.quality_gate.vote(
            task.id,
            task.prompt or task.command or "",
            execution.model or self.identity.worker_id,
            verdict,
            decision.rejections,
        )
        reward = self._reward(task, execution, verdict, decision.outcome)
        approved = decision.outcome == Status.APPROVED
        fields.update(
            result_summary=execution.result_summary if approved else None,
            errors=decision.errors,
            completed_at=iso(utc_now()),
        )
        decided = self.events.build(task.id, decision.outcome, ReviewEvent, **fields)
        outcome = Outcome(decision.outcome, fields)
        not_before = None
        if decision.outcome == Status.REQUEUE:
            delay = requeue_backoff(self.settings.requeue_backoff, decision.rejections)
            not_before = time.time() + delay
            log.info("task %s rejected; due again in %.1fs", task.id, delay)
        self._finish(
            task,
            outcome,
            [reviewed, decided],
            effects=[vote, reward],
            review=review_record(verdict, decision.rejections),
            not_before=not_before,
        )
        return outcome

    def _reward(
        self, task: Task, execution: ExecutionRecord, verdict: Review, status: Status
    ) -> Effect:
        """The grant, made inside the verdict's transaction (so never by a worker that
        lost the lease), between the two crash points the reward tests kill it at."""
        identity = task.identity_id or self.settings.identity
        paying = self.rewards.paying(
            task.id,
            identity,
            max_budget=DEFAULT_MAX_BUDGET if task.max_budget is None else task.max_budget,
            budget_used=execution.budget_used,
            review_confidence=verdict.confidence,
        )

        def effect(outstanding: Outstanding | None) -> EffectResult:
            if status != Status.APPROVED:
                return EffectResult(not_approved_fields(identity))
            failpoint("worker.before_reward")
            made = paying(outstanding)
            failpoint("worker.after_reward")
            return made

        return effect

    def _park(self, task: Task, execution: ExecutionRecord, reason: str) -> Outcome:
        """Fail closed: a task the critic could not judge waits, visibly, for an operator."""
        previous = task.review or ReviewRecord()
        log.error("task %s stays pending_review: %s", task.id, reason)
        fields = execution_fields(execution) | {
            "review_error": reason,
            "review_attempt": previous.attempt,
            "quality_gate_status": QualityGateStatus.UNAVAILABLE,
            "errors": reason,
        }
        parked = self.events.build(task.id, Status.PENDING_REVIEW, ReviewEvent, **fields)
        outcome = Outcome(Status.PENDING_REVIEW, fields)
        self._finish(task, outcome, [parked], review=previous.model_copy(update={"error": reason}))
        return outcome

    def _renew_lease(self, task_id: str) -> bool:
        return self.store.heartbeat(task_id, self.identity, self.settings.lease_seconds)


# --- pure helpers -----------------------------------------------------------------------


def finished_as(stored: Task, task: Task, status: Status) -> bool:
    """The task as a finish of this attempt left it: its status set, its lease released."""
    return stored.status == status and stored.lease is None and stored.attempts == task.attempts


def stalled_message(exc: Exception) -> str:
    """Why the worker claims nothing: a queue.json to fix, or a state file it cannot write."""
    if isinstance(exc, QueueFileError):
        return f"{exc.path.name} is malformed and will not be touched: {exc}"
    return f"cannot write runtime state, claiming nothing until it can: {exc}"


def planning_for(task: Task) -> tuple[GutCheck, list[str], str] | None:
    """Phase 4's decision to split `task`, with what the split is made from and why;
    None to run it whole."""
    if task.effective_mode != Mode.LLM or not task.prompt:
        return None
    check = gut_check(task.prompt)
    features = break_into_features(task.prompt, task.max_subtasks)
    wanted, reason = should_plan(task, check, features)
    return (check, features, reason) if wanted else None


def build_request(task: Task, prompt: str | None = None) -> CycleRequest:
    """The /cycle body for a task: the command for local work, the (composed) prompt for llm."""
    mode = task.effective_mode
    return CycleRequest(
        prompt=(prompt or task.prompt) if mode == Mode.LLM else None,
        task=(task.command or task.prompt) if mode == Mode.LOCAL else None,
        mode=mode,
        model=task.model,
        min_budget=DEFAULT_MIN_BUDGET if task.min_budget is None else task.min_budget,
        max_budget=DEFAULT_MAX_BUDGET if task.max_budget is None else task.max_budget,
        intensity=task.intensity or DEFAULT_INTENSITY,
        task_id=task.id,
        timeout=LOCAL_COMMAND_TIMEOUT,
    )


def execution_record(task: Task, outcome: Outcome, host: str) -> ExecutionRecord:
    """What the critic reviews and a planned parent reads, kept in queue.json."""

    def recorded(value: Any) -> Any:
        return cap_text(value, RECORDED_OUTPUT_BYTES) if isinstance(value, str) else value

    facts = {name: recorded(outcome.fields.get(name)) for name in ExecutionFacts.model_fields}
    return ExecutionRecord(attempt=task.attempts, status=outcome.status, host=host, **facts)


# All but the output, long and already in the execution's own event, and the errors, which
# a review event states for itself.
EXECUTION_EVENT_FIELDS = tuple(
    name for name in ExecutionFacts.model_fields if name not in {"output", "errors"}
)


def execution_fields(execution: ExecutionRecord) -> dict[str, Any]:
    """The execution's facts repeated on review events, so each event reads on its own."""
    return {name: getattr(execution, name) for name in EXECUTION_EVENT_FIELDS}


def missing_input_error(task: Task) -> str:
    if task.effective_mode == Mode.LOCAL:
        return "local task has no command to run (set `command`)"
    return "task has neither a prompt nor a command"


def configured_endpoint(settings: Settings) -> str | None:
    """Where SWARM_API_PORT says the API listens, when it is set: the API and the worker
    read the same variable, so they cannot disagree. Unset, the queue's `api_endpoint`
    decides, which the API itself records when it starts."""
    if "api_port" not in settings.model_fields_set or settings.api_port == 0:
        return None
    return f"http://127.0.0.1:{settings.api_port}"


def outcome_from_dispatch(dispatch: Dispatch, report: dict[str, Any]) -> Outcome:
    """Success comes from the response body's status and exit code, never from HTTP 200 alone.
    A refusal by the API's gateway or local-command policy is a safety block, with its rule."""
    body = dispatch.response
    refused = dispatch.safety_report
    if body is None and refused is not None and refused.get("passed") is False:
        blocked = {"errors": dispatch.error, "safety_passed": False, "safety_report": refused}
        return Outcome(Status.SAFETY_BLOCKED, blocked)
    if body is None:
        return Outcome(
            Status.FAILED,
            {
                "errors": dispatch.error,
                "safety_passed": True,
                "safety_report": report,
            },
        )
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
