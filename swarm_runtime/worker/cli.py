"""`python worker.py`: run the worker, or `worker.py add` a task to queue.json.

Settings come from the environment here and only here; the worker and the store are
built with them and handed what they need."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from swarm_runtime.contract import TASK_ID_PATTERN, Mode, is_valid_task_id
from swarm_runtime.errors import DuplicateTaskError, QueueFileError, StateFileError, SwarmError
from swarm_runtime.processes import exit_with_supervisor
from swarm_runtime.queue.store import HOST, QueueStore, WorkerIdentity
from swarm_runtime.safety.gateway import SafetyGateway
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.store.token import resolve_token
from swarm_runtime.worker.cycle_client import CycleClient
from swarm_runtime.worker.loop import Worker

log = logging.getLogger("worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="worker.py", description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="exit when nothing is runnable")
    parser.add_argument(
        "--worker-id",
        type=worker_id,
        help="name in leases and events, [A-Za-z0-9._-]{1,128} (default: host-pid)",
    )
    parser.add_argument(
        "--identity", help="identity rewarded for approved work (default: SWARM_IDENTITY)"
    )
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


def worker_id(value: str) -> str:
    """Worker ids land in leases, presence file names and every event, so they follow
    the task-id rule."""
    if not is_valid_task_id(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a valid worker id: it must match {TASK_ID_PATTERN.pattern}"
            " and not be . or .."
        )
    return value


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
    store = QueueStore.for_settings(workspace, settings)
    try:
        task = store.add(task_record(args))
    except DuplicateTaskError as exc:
        print(f"error: {exc}; choose another id", file=sys.stderr)
        return 1
    except QueueFileError as exc:
        print(f"error: {exc.path.name} is malformed, nothing was added: {exc}", file=sys.stderr)
        return 2
    except (SwarmError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: nothing was added, the queue could not be written: {exc}", file=sys.stderr)
        return 2
    print(f"added task {task.id} ({task.effective_mode.value})")
    try:
        store.flush()  # the operator may look at queue.json next
    except (OSError, StateFileError) as exc:
        print(f"warning: queue.json does not show it yet: {exc}", file=sys.stderr)
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
        level=logging.INFO,
        format="%(asctime)s %(levelname)s worker: %(message)s",
        stream=sys.stdout,
    )
    args = parse_args(argv)
    try:
        settings = Settings.from_env()
    except SwarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.identity:
        settings = settings.model_copy(update={"identity": args.identity})
    workspace = Workspace(settings.workspace)
    workspace.ensure_layout()
    if args.action == "add":
        return add_task(args, workspace, settings)
    exit_with_supervisor()
    identity = WorkerIdentity(args.worker_id or default_worker_id())
    worker = Worker(
        settings,
        workspace,
        identity=identity,
        client=CycleClient(
            resolve_token(settings, workspace), workspace.root, retries=settings.api_retries
        ),
        gateway=SafetyGateway(workspace),
    )
    stop = threading.Event()
    install_stop_handlers(stop)
    log.info("worker %s polling %s", identity.worker_id, workspace.queue_path)
    return worker.run(once=args.once, stop=stop)


def default_worker_id() -> str:
    return f"{HOST}-{os.getpid()}"
