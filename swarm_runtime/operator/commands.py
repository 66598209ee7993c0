"""One function per command: do it through the shared operations, then say what it did.

Each prints one JSON document with `--json`, or readable lines, and returns the exit
code; a refusal is raised and turned into `error: ...` by the command line (cli).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from swarm_runtime.contract import QUEUE_FILE, Mode
from swarm_runtime.errors import StateFileError
from swarm_runtime.operator.events import EventFilter, EventFollower, event_line
from swarm_runtime.operator.listing import (
    TaskFilter,
    task_detail,
    task_detail_lines,
    task_list,
    task_list_lines,
)
from swarm_runtime.operator.status import (
    fleet_lines,
    fleet_report,
    pause_text,
    status_lines,
    status_of,
)
from swarm_runtime.operator.text import clean
from swarm_runtime.queue.operations import Acted, Operations
from swarm_runtime.queue.overview import task_summary
from swarm_runtime.queue.transfer import export_queue, import_queue_file
from swarm_runtime.settings import Settings
from swarm_runtime.store.database import installed_schema_version, redact
from swarm_runtime.store.event_source import EventSource
from swarm_runtime.store.events import DatabaseEvents, event_source
from swarm_runtime.store.schema import SCHEMA_VERSION
from swarm_runtime.store.state_files import atomic_write_bytes


class Command:
    """What a command needs: the operations on this workspace, the settings and its args."""

    def __init__(self, operations: Operations, settings: Settings, args: argparse.Namespace):
        self.operations = operations
        self.settings = settings
        self.args = args

    def say(self, payload: Any, lines: list[str]) -> int:
        print(
            json.dumps(payload, indent=2, ensure_ascii=False)
            if self.args.json
            else "\n".join(lines)
        )
        return 0


def status(command: Command) -> int:
    report = status_of(command.operations, command.settings, datetime.now(UTC))
    return command.say(report, status_lines(report))


def tasks(command: Command) -> int:
    args = command.args
    wanted = TaskFilter(args.status, args.mode, args.search, args.id_part, args.limit)
    listing = task_list(command.operations.store.load(), wanted)
    return command.say(listing, task_list_lines(listing))


def show(command: Command) -> int:
    doc = command.operations.store.load()
    with closing(events_of(command)) as source:
        detail = task_detail(doc, source, command.args.id)
    return command.say(detail, task_detail_lines(detail))


def events_of(command: Command) -> EventSource:
    """Every host's events with a database, else this workspace's log (store.events)."""
    operations = command.operations
    return event_source(operations.workspace, operations.database, summaries=False)


def add(command: Command) -> int:
    added = command.operations.add(task_record(command.args))
    for warning in added.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    task = added.acted.task
    _flush(command)
    payload = acted_payload(added.acted) | {"warnings": added.warnings}
    return command.say(payload, [f"added task {task.id} ({task.effective_mode.value})"])


def task_record(args: argparse.Namespace) -> dict[str, Any]:
    """The positional text is the prompt, or the command of a local task without --command."""
    record: dict[str, Any] = {"id": args.id, "depends_on": args.depends_on}
    given = ("model", "min_budget", "max_budget", "host", "worker_labels")
    record |= {name: getattr(args, name) for name in given if getattr(args, name) is not None}
    if args.command is not None:
        return record | {"mode": Mode.LOCAL.value, "command": args.command, "prompt": args.prompt}
    if args.mode == Mode.LOCAL:
        return record | {"mode": Mode.LOCAL.value, "command": args.prompt}
    return record | {"mode": args.mode or Mode.LLM.value, "prompt": args.prompt}


def _flush(command: Command) -> None:
    """The operator may read queue.json next: fold the journal of a large queue now."""
    try:
        command.operations.store.flush()
    except (OSError, StateFileError) as exc:
        print(f"warning: {QUEUE_FILE} does not show it yet: {exc}", file=sys.stderr)


def requeue(command: Command) -> int:
    return _acted(command, command.operations.requeue(command.args.id), "requeued")


def cancel(command: Command) -> int:
    return _acted(command, command.operations.cancel(command.args.id), "cancelled")


def _acted(command: Command, acted: Acted, verb: str) -> int:
    _unlogged([acted])
    line = f"{verb} task {acted.task.id}: now {acted.task.status.value}"
    return command.say(acted_payload(acted), [line])


def requeue_failed(command: Command) -> int:
    results = command.operations.requeue_failed()
    _unlogged(results)
    ids = [acted.task.id for acted in results]
    payload = {"requeued": ids, "event_logged": all(acted.logged for acted in results)}
    line = f"requeued {len(ids)} failed tasks: {', '.join(ids)}" if ids else "no failed tasks"
    return command.say(payload, [line])


def acted_payload(acted: Acted) -> dict[str, Any]:
    return {"task": task_summary(acted.task), "event_logged": acted.logged}


def _unlogged(results: list[Acted]) -> None:
    if not all(acted.logged for acted in results):
        print("warning: the change stands, but the event log could not be written", file=sys.stderr)


def pause(command: Command) -> int:
    host = command.args.host
    state = command.operations.pause(command.args.reason, host)
    entry = state if host is None else state.hosts[host]
    line = pause_text(entry.model_dump(mode="json"))
    if host is not None:
        line = f"host {clean(host)}: {line}; its workers finish the task in hand"
    else:
        line += "; workers finish the task in hand"
    return command.say(state.model_dump(mode="json") | {"host": host}, [line])


def resume(command: Command) -> int:
    host = command.args.host
    state = command.operations.resume(host)
    payload = state.model_dump(mode="json") | {"host": host}
    if host is None:
        return command.say(payload, ["running: workers claim tasks again"])
    line = f"host {clean(host)} resumed: its workers claim tasks again"
    if state.paused:
        line = f"host {clean(host)} resumed, but every host is still paused (resume without --host)"
    return command.say(payload, [line])


def fleet(command: Command) -> int:
    report = fleet_report(command.operations, datetime.now(UTC))
    return command.say(report.model_dump(mode="json"), fleet_lines(report))


def export(command: Command) -> int:
    """The queue as queue.json's bytes, from whichever store holds it."""
    data = export_queue(command.operations.store, command.settings.review)
    if command.args.out is None:
        sys.stdout.buffer.write(data + b"\n")
        return 0
    atomic_write_bytes(Path(command.args.out), data)
    print(f"wrote the queue to {command.args.out}", file=sys.stderr)
    return 0


def export_events(command: Command) -> int:
    """Every host's events, as lines of execution_log.jsonl; without a database, this
    workspace's log is already that file."""
    database = command.operations.database
    if database is None:
        print(
            f"no database: the events are {command.operations.workspace.log_path}", file=sys.stderr
        )
        return 0
    lines = DatabaseEvents(database).lines()
    if command.args.out is None:
        for line in lines:
            sys.stdout.write(line)
        return 0
    atomic_write_bytes(Path(command.args.out), "".join(lines).encode("utf-8"))
    print(f"wrote the events to {command.args.out}", file=sys.stderr)
    return 0


def import_queue(command: Command) -> int:
    count = import_queue_file(command.operations.store, Path(command.args.file))
    return command.say({"imported": count}, [f"imported {count} tasks from {command.args.file}"])


def schema_version(command: Command) -> int:
    url = command.settings.database_url
    if url is None:
        payload: dict[str, Any] = {"store": "files", "schema_version": None}
        return command.say(payload, [f"no database: the queue is the workspace's {QUEUE_FILE}"])
    found = installed_schema_version(url.get_secret_value())
    shown = redact(url.get_secret_value())
    payload = {"store": shown, "schema_version": found, "runtime_schema_version": SCHEMA_VERSION}
    return command.say(
        payload, [f"{shown}: schema version {found} (this runtime: {SCHEMA_VERSION})"]
    )


def events(command: Command) -> int:
    args = command.args
    wanted = EventFilter(args.task, args.status, args.worker)
    # Before the first line: whoever reads it may press Ctrl-C at once.
    stop = stop_on_signals() if args.follow else None
    with closing(events_of(command)) as source:
        follower = EventFollower(source, wanted, _event_printer(args.json))
        page = follower.backlog(args.lines)
        if stop is not None:
            follower.follow(page, stop)
    return 0


def _event_printer(as_json: bool) -> Callable[[dict[str, Any]], None]:
    def show_event(event: dict[str, Any]) -> None:
        text = json.dumps(event, ensure_ascii=False) if as_json else event_line(event)
        print(text, flush=True)

    return show_event


def stop_on_signals() -> threading.Event:
    """Flag-only handlers: Ctrl-C or SIGTERM ends the follow loop, which exits 0."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    return stop
