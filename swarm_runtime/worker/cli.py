"""Running the worker from the command line: its options, and `run_worker`.

The command line (swarm_runtime.cli) reads the settings from the environment and hands
them here; the worker and the store are built with them and handed what they need."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import threading
from typing import Any

from swarm_runtime.contract import (
    PLACE_NAME_PATTERN,
    PLACE_NAME_RULE,
    TASK_ID_PATTERN,
    comma_list,
    is_valid_task_id,
)
from swarm_runtime.processes import exit_with_supervisor
from swarm_runtime.queue.overview import named_endpoint
from swarm_runtime.queue.store import WorkerIdentity
from swarm_runtime.safety.gateway import SafetyGateway
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.store.token import resolve_token
from swarm_runtime.worker.cycle_client import CycleClient
from swarm_runtime.worker.loop import Worker

log = logging.getLogger("worker")

WORKER_OPTION_DEFAULTS: dict[str, Any] = {
    "once": False,
    "worker_id": None,
    "identity": None,
    "labels": None,
}


def add_worker_options(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """--once, --worker-id, --identity and --labels. Without `defaults` an option left out leaves
    what the parent parser set (a subcommand must not reset an option given before it)."""
    kept: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("--once", action="store_true", help="exit when nothing is runnable", **kept)
    parser.add_argument(
        "--worker-id",
        type=worker_id,
        help="name in leases and events, [A-Za-z0-9._-]{1,128} (default: host-pid)",
        **kept,
    )
    parser.add_argument(
        "--identity", help="identity rewarded for approved work (default: SWARM_IDENTITY)", **kept
    )
    parser.add_argument(
        "--labels",
        type=label_list,
        help="labels this worker serves, comma-separated: it runs tasks needing only these"
        " (default: SWARM_WORKER_LABELS)",
        **kept,
    )


def worker_id(value: str) -> str:
    """Worker ids land in leases, presence file names and every event, so they follow
    the task-id rule."""
    if not is_valid_task_id(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a valid worker id: it must match {TASK_ID_PATTERN.pattern}"
            " and not be . or .."
        )
    return value


def label_list(value: str) -> tuple[str, ...]:
    labels = comma_list(value)
    assert isinstance(labels, list)
    for label in labels:
        if re.fullmatch(PLACE_NAME_PATTERN, label) is None:
            raise argparse.ArgumentTypeError(f"{label!r} is not a label ({PLACE_NAME_RULE})")
    return tuple(labels)


def install_stop_handlers(stop: threading.Event) -> None:
    """Flag-only handlers: the loop finishes the task in hand, then exits 0."""

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s; finishing the current task", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Poll queue.json and run its tasks, until stopped (or drained, with --once)."""
    if args.identity:
        settings = settings.model_copy(update={"identity": args.identity})
    if args.labels is not None:
        settings = settings.model_copy(update={"worker_labels": args.labels})
    workspace = Workspace(settings.workspace)
    workspace.ensure_layout()
    exit_with_supervisor()
    identity = WorkerIdentity(
        args.worker_id or default_worker_id(settings.host),
        host=settings.host,
        labels=frozenset(settings.worker_labels),
    )
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
    log.info(
        "worker %s on host %s%s: workspace %s, execution API %s",
        identity.worker_id,
        identity.host,
        f" serving {', '.join(sorted(identity.labels))}" if identity.labels else "",
        workspace.root,
        worker.configured_endpoint or named_endpoint(settings, workspace, worker.store),
    )
    return worker.run(once=args.once, stop=stop)


def default_worker_id(host: str) -> str:
    return f"{host}-{os.getpid()}"
