"""swarm.py: the execution API (`/cycle`, `/plan`, `/status`) on 127.0.0.1.

Access control runs before any body is parsed: the socket peer must be loopback
(`X-Forwarded-For` is never consulted) and `/cycle` and `/plan` need the internal
execution token. The safety gateway runs again here on exactly the text that will
execute. LLM calls go through the SecureAPIWrapper (rate limit, budget, audit);
local commands through the allowlist + denylist policy, without a shell.
"""

from __future__ import annotations

import hmac
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, jsonify, request
from pydantic import ValidationError

from swarm_runtime.api.charges import local_charge
from swarm_runtime.api.plan import PlanError, plan_tasks
from swarm_runtime.api.provider_health import ProviderHealth
from swarm_runtime.contract import (
    LOCAL_MODEL,
    OFFLINE_MODEL,
    TOKEN_HEADER,
    CycleRequest,
    CycleResponse,
    ErrorBody,
    Mode,
    Status,
    Task,
    Usage,
)
from swarm_runtime.errors import (
    BudgetError,
    PolicyViolation,
    ProviderError,
    RateLimited,
    StateFileError,
    StoreUnavailable,
    SwarmError,
    UnpricedModelError,
)
from swarm_runtime.llm.wrapper import SecureAPIWrapper, from_settings
from swarm_runtime.phases.vouched import workspace_appliers
from swarm_runtime.queue.endpoint import record_endpoint
from swarm_runtime.queue.fleet import Fleet, read_placement
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.select import store_for
from swarm_runtime.queue.store import lease_is_live
from swarm_runtime.safety.gateway import SafetyGateway
from swarm_runtime.safety.local_commands import (
    ArgumentListTooLong,
    LocalCommandPolicy,
    prepare_sandbox,
    run_command,
)
from swarm_runtime.settings import Settings
from swarm_runtime.store.documents import SharedDocuments, documents_for
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.store.token import resolve_token
from swarm_runtime.web.hosts import check_host, served_port
from swarm_runtime.web.identity import (
    IDENTITY_PATH,
    NONCE_PATTERN,
    identity_proof,
    workspace_name,
)
from swarm_runtime.web.json_body import json_body
from swarm_runtime.web.json_errors import HttpError, install_json_fallbacks, json_error
from swarm_runtime.web.loopback import is_loopback_address
from swarm_runtime.web.server import serve_main

log = logging.getLogger("swarm")
TOKEN_PROTECTED = frozenset({"/cycle", "/plan"})
MAX_BODY_BYTES = 1024 * 1024
# Each /cycle holds a thread for as long as its llm call or command runs: room for 32
# workers calling at once. Idle connections hold no thread at all.
API_THREADS = 32


@dataclass
class ApiServices:
    """Everything the handlers use, built once per app."""

    settings: Settings
    workspace: Workspace
    token: str
    gateway: SafetyGateway
    policy: LocalCommandPolicy
    wrapper: SecureAPIWrapper
    store: TaskQueue
    provider_health: ProviderHealth
    # The pause switch and the workers' presence, for /status's fleet.
    documents: SharedDocuments | None = None

    @classmethod
    def build(cls, settings: Settings) -> ApiServices:
        workspace = Workspace(settings.workspace)
        workspace.ensure_layout()
        prepare_sandbox(workspace.sandbox)
        documents = documents_for(settings, workspace)
        wrapper = from_settings(settings, workspace, documents.budget)
        return cls(
            settings=settings,
            workspace=workspace,
            token=resolve_token(settings, workspace),
            gateway=SafetyGateway(workspace),
            policy=LocalCommandPolicy(
                workspace.sandbox,
                settings.local_allowlist,
                git_allow_write=settings.git_allow_write,
            ),
            wrapper=wrapper,
            store=store_for(settings, workspace, appliers=workspace_appliers(workspace)),
            provider_health=ProviderHealth(wrapper.provider),
            documents=documents,
        )

    def announce(self, url: str) -> None:
        """Record where this API listens in its workspace's queue, where workers look. A
        queue that cannot be written is reported and the API serves on: /cycle needs no
        queue, and the operator must be able to reach /status to see what is wrong."""
        log.info("serving the workspace %s", self.workspace.root)
        threading.Thread(target=self.report_provider, name="provider-probe", daemon=True).start()
        try:
            record_endpoint(self.settings, self.workspace, self.store, url)
        except (StateFileError, OSError) as exc:
            log.warning("could not record this API's address in the queue: %s", exc)

    def report_provider(self) -> None:
        """Say which provider and model answer llm tasks (never the key), and whether the
        provider is there: a wrong URL shows at start, not at the first task."""
        provider = self.wrapper.provider
        model = self.settings.default_model
        if provider.name == OFFLINE_MODEL:
            log.info("llm tasks: the offline model (no provider configured; costs nothing)")
            return
        error = self.provider_health.check()
        if error is None:
            log.info("llm tasks: model %s at %s, which answers", model, provider.name)
        else:
            log.warning(
                "llm tasks: model %s at %s, which does not answer: %s", model, provider.name, error
            )


def create_app(settings: Settings, services: ApiServices | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    services = services or ApiServices.build(settings)
    app.extensions["swarm"] = services
    app.extensions["on_listening"] = services.announce
    _install_access_control(app, services)
    _install_error_handlers(app)

    @app.post("/cycle")
    def cycle() -> Any:
        cycle_request = parse_cycle_request(json_body())
        report = check_safety(services.gateway, cycle_request)
        if cycle_request.effective_mode == Mode.LOCAL:
            response = run_local(services, cycle_request, report)
        else:
            response = run_llm(services, cycle_request, report)
        return jsonify(response.model_dump(mode="json"))

    @app.post("/plan")
    def plan() -> Any:
        try:
            planned = plan_tasks(services.wrapper, services.store, services.workspace)
        except PlanError as exc:
            raise HttpError(502, str(exc), retryable=False) from None
        except SwarmError as exc:
            raise llm_error(exc) from None
        return jsonify(planned)

    @app.get("/status")
    def status() -> Any:
        return jsonify(status_snapshot(services))

    @app.get(IDENTITY_PATH)
    def identity() -> Any:
        """Prove, without the token, that this process holds it: the worker sends its
        token nowhere else. The port is the socket's own, never the Host header's."""
        nonce = request.args.get("nonce", "")
        if not NONCE_PATTERN.fullmatch(nonce):
            raise HttpError(400, "nonce must be 32 to 128 lowercase hex digits", field="nonce")
        port = int(request.environ["SERVER_PORT"])
        served = workspace_name(services.workspace.root)
        proof = identity_proof(services.token, nonce, port, served)
        return jsonify({"workspace": served, "proof": proof})

    return app


def _install_access_control(app: Flask, services: ApiServices) -> None:
    @app.before_request
    def guard() -> None:
        if not is_loopback_address(request.remote_addr):
            raise HttpError(403, f"{request.path} is localhost-only")
        check_host(served_port(app, services.settings.api_port), "execution API")
        if request.path in TOKEN_PROTECTED:
            supplied = request.headers.get(TOKEN_HEADER, "")
            if not supplied:
                raise HttpError(401, f"missing internal execution token (header {TOKEN_HEADER})")
            if not hmac.compare_digest(supplied.encode(), services.token.encode()):
                raise HttpError(403, "invalid internal execution token")


def _install_error_handlers(app: Flask) -> None:
    unexpected = install_json_fallbacks(app, log)

    @app.errorhandler(StoreUnavailable)
    def database_unreachable(exc: StoreUnavailable) -> Any:
        log.error("%s: %s", request.path, exc)
        error = store_unreachable(exc)
        return json_error(error.status, error.body)

    @app.errorhandler(OSError)
    def state_unwritable(exc: OSError) -> Any:
        """A full disk or a read-only workspace: say which file, and that a retry may work."""
        if exc.filename is None:
            return unexpected(exc)
        log.error("%s could not write runtime state: %s", request.path, exc)
        return json_error(
            503, ErrorBody(error=f"cannot write runtime state: {exc}", retryable=True)
        )


# --- /cycle -----------------------------------------------------------------------------


def parse_cycle_request(body: Any) -> CycleRequest:
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object", field="body")
    try:
        cycle_request = CycleRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise HttpError(400, f"invalid field {field!r}: {first['msg']}", field=field) from None
    if not (cycle_request.prompt or "").strip() and not (cycle_request.task or "").strip():
        raise HttpError(400, "prompt or task must be provided", field="prompt")
    return cycle_request


def check_safety(gateway: SafetyGateway, cycle_request: CycleRequest) -> dict[str, Any]:
    """Check every text the request carries; the first block refuses the request."""
    report: dict[str, Any] = {}
    for name in ("task", "prompt"):
        text = getattr(cycle_request, name)
        if text is None:
            continue
        passed, report = gateway.pre_execute_safety_check(text, cycle_request.task_id)
        if not passed:
            reason, rule = report.get("blocked_reason"), blocked_rule(report)
            message = f"Safety check failed ({name}): {reason}"
            raise HttpError(403, message, field=name, rule=rule, safety_report=report)
    return report


def blocked_rule(report: dict[str, Any]) -> str | None:
    """The rule of the check that blocked, so a refusal names it as the events do."""
    checks = report.get("checks", {}).values()
    return next((check["rule"] for check in checks if not check["passed"]), None)


def run_local(
    services: ApiServices, cycle_request: CycleRequest, report: dict[str, Any]
) -> CycleResponse:
    command = cycle_request.task or ""
    if not command.strip():
        raise HttpError(400, "local mode requires task (the command to run)", field="task")
    try:
        plan = services.policy.check(command)
    except PolicyViolation as exc:
        blocked = services.gateway.record_policy_block(
            command, cycle_request.task_id, exc.rule, exc.reason
        )
        raise HttpError(403, str(exc), rule=exc.rule, field="task", safety_report=blocked) from None
    try:
        result = run_command(plan, timeout=cycle_request.timeout)
    except ArgumentListTooLong as exc:
        raise HttpError(400, str(exc), field="task") from None
    if result.timed_out:
        summary = f"command timed out after {cycle_request.timeout:g}s"
    else:
        summary = f"command exited with code {result.exit_code} in {result.duration:.2f}s"
    succeeded = not result.timed_out and result.exit_code == 0
    return CycleResponse(
        status=Status.COMPLETED if succeeded else Status.FAILED,
        result=summary,
        model=LOCAL_MODEL,
        task_id=cycle_request.task_id,
        output=result.output,
        budget_used=local_charge(
            result.duration,
            cycle_request.intensity,
            cycle_request.min_budget,
            cycle_request.max_budget,
        ),
        exit_code=result.exit_code,
        safety_report=report,
    )


def run_llm(
    services: ApiServices, cycle_request: CycleRequest, report: dict[str, Any]
) -> CycleResponse:
    prompt = cycle_request.prompt or ""
    if not prompt.strip():
        raise HttpError(400, "llm mode requires prompt", field="prompt")
    max_tokens = output_tokens(cycle_request, services.settings.max_output_tokens)
    try:
        call = services.wrapper.call_llm(
            prompt,
            model=cycle_request.model,
            max_tokens=max_tokens,
            temperature=cycle_request.temperature,
            task_id=cycle_request.task_id,
            max_budget=cycle_request.max_budget,
        )
    except SwarmError as exc:
        raise llm_error(exc) from None
    return CycleResponse(
        status=Status.COMPLETED,
        result=call.text,
        model=call.model,
        task_id=cycle_request.task_id,
        usage=Usage(prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens),
        budget_used=call.cost,
        safety_report=report,
    )


def output_tokens(cycle_request: CycleRequest, cap: int) -> int:
    """The request's max_tokens, or the default within SWARM_MAX_OUTPUT_TOKENS. A bound asked
    for above the cap is refused, not cut: a silently shortened answer reads as complete."""
    if "max_tokens" not in cycle_request.model_fields_set:
        return min(cycle_request.max_tokens, cap)
    if cycle_request.max_tokens > cap:
        message = f"max_tokens {cycle_request.max_tokens} is above SWARM_MAX_OUTPUT_TOKENS ({cap})"
        raise HttpError(400, message, field="max_tokens")
    return cycle_request.max_tokens


def llm_error(exc: SwarmError) -> HttpError:
    """Map the wrapper's refusals to HTTP; the message always says which limit and why."""
    if isinstance(exc, RateLimited):
        retry_after = str(max(1, round(exc.retry_after)))
        return HttpError(429, str(exc), retryable=True, headers={"Retry-After": retry_after})
    if isinstance(exc, BudgetError | UnpricedModelError):
        return HttpError(403, str(exc))
    if isinstance(exc, ProviderError):
        return HttpError(502, f"LLM provider failed: {exc}", retryable=False)
    if isinstance(exc, StoreUnavailable):
        return store_unreachable(exc)
    return HttpError(500, str(exc))


def store_unreachable(exc: StoreUnavailable) -> HttpError:
    """The database is down or cut off: nothing was changed, and a retry may work."""
    return HttpError(503, f"the queue's store is unreachable: {exc}", retryable=True)


# --- /status ----------------------------------------------------------------------------


def status_snapshot(services: ApiServices) -> dict[str, Any]:
    """Read without queue.json's lock, so no flood of /status calls can delay a worker."""
    try:
        doc = services.store.load()
    except StateFileError as exc:
        raise HttpError(503, f"{exc.path.name} is malformed: {exc}", field=str(exc.path)) from None
    except StoreUnavailable as exc:
        raise store_unreachable(exc) from None
    counts: dict[str, int] = {}
    for task in doc.tasks:
        counts[task.status.value] = counts.get(task.status.value, 0) + 1
    now = time.time()
    workers = sorted({t.lease.worker_id for t in doc.tasks if lease_is_live(t.lease, now)})
    budget = services.wrapper.budget_snapshot()
    return {
        "tasks": len(doc.tasks),
        "by_status": counts,
        "completed": len(doc.completed),
        "failed": len(doc.failed),
        "workers_with_live_leases": workers,
        "fleet": fleet_snapshot(services, doc.tasks, now).model_dump(mode="json"),
        "budget": {"limit": budget.limit, "spent": budget.spent, "reserved": budget.reserved},
        "provider": services.settings.default_model,
        "provider_name": services.wrapper.provider.name,
        **services.provider_health.snapshot(),
    }


def fleet_snapshot(services: ApiServices, tasks: list[Task], now: float) -> Fleet:
    """Every host sharing this runtime: each one's pause, workers and tasks (queue.fleet)."""
    documents = services.documents
    database = documents.database if documents else None
    switch = documents.pause if documents else services.workspace
    return read_placement(services.workspace, database, switch, now).fleet(tasks, now)


# --- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    return serve_main(
        argv,
        prog="swarm.py",
        doc=__doc__,
        name="swarm API",
        port_setting="api_port",
        create_app=create_app,
        threads=API_THREADS,
    )


if __name__ == "__main__":
    sys.exit(main())
