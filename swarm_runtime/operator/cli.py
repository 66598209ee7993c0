"""The operator's commands on the command line: their arguments, and their exit codes.

0 when done, 1 when the runtime refused (a duplicate id, an action the task's status
does not allow), 2 for bad input or a state file that cannot be used. An error is one
line, `error: ...`, on stderr; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

from swarm_runtime.contract import (
    CLI_WORKER_ID,
    PLACE_NAME_PATTERN,
    PLACE_NAME_RULE,
    QUEUE_FILE,
    Mode,
    Status,
)
from swarm_runtime.errors import (
    DuplicateTaskError,
    InvalidTransition,
    QueueFileError,
    SwarmError,
)
from swarm_runtime.operator import commands
from swarm_runtime.operator.commands import Command
from swarm_runtime.phases.vouched import workspace_appliers
from swarm_runtime.queue.operations import Operations
from swarm_runtime.queue.select import store_for
from swarm_runtime.settings import Settings
from swarm_runtime.store.documents import documents_for
from swarm_runtime.store.state_files import Workspace

Handler = Callable[[Command], int]

DEFAULT_TASKS_SHOWN = 50
DEFAULT_BACKLOG = 20


def add_operator_commands(
    commands_: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Every operator command, each with `--json`, bound to its handler."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    def command(name: str, handler: Handler, text: str) -> argparse.ArgumentParser:
        parser = commands_.add_parser(name, parents=[common], help=text, description=text)
        parser.set_defaults(handler=handler)
        return parser

    _add_task_command(command("add", commands.add, "append a task to the queue"))
    command("status", commands.status, "API, workers alive, pause, budget and task counts")
    _add_tasks_command(command("tasks", commands.tasks, "list tasks, newest first"))
    command("show", commands.show, "one task and its timeline of events").add_argument("id")
    command("requeue", commands.requeue, "send a failed or parked task back").add_argument("id")
    command("cancel", commands.cancel, "withdraw a task that has not started").add_argument("id")
    command("requeue-failed", commands.requeue_failed, "send every failed task back")
    command("fleet", commands.fleet, "every host: its pause, its workers and their tasks")
    pause = command("pause", commands.pause, "workers claim nothing new until resumed")
    pause.add_argument("--reason", help="shown with the pause on the panel and in status")
    host_option(pause, "pause only this host's workers (default: every host)")
    resume = command("resume", commands.resume, "let workers claim tasks again")
    host_option(resume, "resume only this host's workers (default: every host)")
    _add_events_command(command("events", commands.events, "the event log, one line an event"))
    export = command("export", commands.export, f"write the queue as a {QUEUE_FILE} document")
    export.add_argument("--out", help=f"write to this file (default: stdout), like {QUEUE_FILE}")
    imported = command("import", commands.import_queue, f"fill an empty queue from a {QUEUE_FILE}")
    imported.add_argument("file")
    command("schema-version", commands.schema_version, "the database schema's version")
    export_events = command(
        "export-events", commands.export_events, "write the database's events as JSON lines"
    )
    export_events.add_argument("--out", help="write to this file (default: stdout)")


def _add_task_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id")
    parser.add_argument("prompt", help="the llm prompt (or the command, with --mode local)")
    parser.add_argument("--depends-on", type=id_list, default=[], help="comma-separated task ids")
    parser.add_argument("--mode", choices=[m.value for m in Mode])
    parser.add_argument("--command", help="a local command to run in the sandbox")
    parser.add_argument("--model")
    parser.add_argument("--min-budget", type=float, help="dollars")
    parser.add_argument("--max-budget", type=float, help="dollars")
    parser.add_argument("--host", help="run it only on a worker of this host (SWARM_HOST there)")
    parser.add_argument(
        "--worker-labels", help="run it only on a worker serving all of these, comma-separated"
    )


def status_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--status",
        choices=[s.value for s in Status],
        metavar="STATUS",
        help=f"only {what} with this status: pending, in_progress, failed, approved, ...",
    )


def _add_tasks_command(parser: argparse.ArgumentParser) -> None:
    status_option(parser, "tasks")
    parser.add_argument("--mode", choices=[m.value for m in Mode])
    parser.add_argument("--search", default="", help="text in the id, prompt, command or error")
    parser.add_argument("--id", dest="id_part", default="", help="text in the id")
    parser.add_argument(
        "--limit", type=count, default=DEFAULT_TASKS_SHOWN, help="at most this many (0: all)"
    )


def _add_events_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help="only this task's events")
    status_option(parser, "events")
    parser.add_argument("--worker", help="only this worker's events")
    parser.add_argument(
        "-n",
        "--since",
        dest="lines",
        metavar="N",
        type=count,
        default=DEFAULT_BACKLOG,
        help="show the latest N events first (default %(default)s)",
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="then print each new event until Ctrl-C"
    )


def host_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--host", metavar="NAME", type=host_name, help=text)


def host_name(value: str) -> str:
    """A name a host can have (SWARM_HOST's rule): any other is refused before anything
    is written, so a typo of that kind never pauses a host that cannot exist."""
    if re.fullmatch(PLACE_NAME_PATTERN, value) is None:
        raise argparse.ArgumentTypeError(f"{value[:80]!r} is not a host name ({PLACE_NAME_RULE})")
    return value


def id_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{number} is below 0")
    return number


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run the command `args` names; every refusal becomes one line and an exit code."""
    try:
        workspace = Workspace(settings.workspace)
        workspace.ensure_layout()
        store = store_for(settings, workspace, appliers=workspace_appliers(workspace))
        operations = Operations(workspace, store, CLI_WORKER_ID, documents_for(settings, workspace))
        handler: Handler = args.handler
        return handler(Command(operations, settings, args))
    except BrokenPipeError:  # the reader left (`| head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (SwarmError, OSError) as exc:
        print(f"error: {error_text(args.subcommand, exc)}", file=sys.stderr)
        return exit_code(exc)


def exit_code(exc: SwarmError | OSError) -> int:
    return 1 if isinstance(exc, DuplicateTaskError | InvalidTransition) else 2


def error_text(subcommand: str, exc: SwarmError | OSError) -> str:
    if isinstance(exc, DuplicateTaskError):
        return f"{exc}; choose another id"
    if isinstance(exc, QueueFileError):
        return f"{QUEUE_FILE} is malformed and was left as it is: {exc}"
    if isinstance(exc, OSError) and subcommand == "add":
        return f"nothing was added, the queue could not be written: {exc}"
    return str(exc)
