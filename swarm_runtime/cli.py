"""The runtime's command line: `worker.py` (and `swarm-worker`), and `swarm`.

`worker.py` with no command runs a worker, as it always has; `swarm` needs a command,
and `work` runs a worker under both. The other commands operate the runtime as the
control panel does: status, fleet, tasks, show, events, add, requeue, cancel,
requeue-failed, pause, resume.

This module sits above the layers: it joins the worker and the operator, which never
import each other. Settings come from the environment here and only here.
"""

from __future__ import annotations

import argparse
import logging
import sys

from swarm_runtime.errors import SwarmError
from swarm_runtime.operator import add_operator_commands, run_command
from swarm_runtime.settings import Settings
from swarm_runtime.worker import WORKER_OPTION_DEFAULTS, add_worker_options, run_worker

WORK = "work"
DESCRIPTION = (
    "Run a worker (worker.py without a command, or `work`), or operate the runtime as the"
    " control panel does. Every command but `work` takes --json."
)
EXIT_STATUS = (
    "workspace: SWARM_WORKSPACE, or ./workspace in the current folder. "
    "exit status: 0 done, 1 refused by the runtime, 2 bad input or unusable state"
)


def build_parser(*, work_by_default: bool) -> argparse.ArgumentParser:
    """With `work_by_default` (worker.py), the worker's options also come before any command."""
    parser = argparse.ArgumentParser(description=DESCRIPTION, epilog=EXIT_STATUS)
    parser.set_defaults(subcommand=None, **WORKER_OPTION_DEFAULTS)
    if work_by_default:
        add_worker_options(parser)
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    work = commands.add_parser(WORK, help="run a worker: claim and run tasks until stopped")
    add_worker_options(work, defaults=False)
    add_operator_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """worker.py and swarm-worker: a worker unless a command says otherwise."""
    return run(argv, work_by_default=True)


def swarm_main(argv: list[str] | None = None) -> int:
    """swarm: a command is required."""
    return run(argv, work_by_default=False)


def run(argv: list[str] | None, *, work_by_default: bool) -> int:
    parser = build_parser(work_by_default=work_by_default)
    args = parser.parse_args(argv)
    if args.subcommand is None and not work_by_default:
        parser.print_help(sys.stderr)
        return 2
    working = args.subcommand in (None, WORK)
    configure_logging(working)
    try:
        settings = Settings.from_env()
        return run_worker(args, settings) if working else run_command(args, settings)
    except SwarmError as exc:  # settings, or a workspace that cannot be used safely
        print(f"error: {exc}", file=sys.stderr)
        return 2


def configure_logging(working: bool) -> None:
    """A worker logs its progress on stdout; a command keeps stdout for its answer."""
    if working:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s worker: %(message)s",
            stream=sys.stdout,
        )
    else:
        logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")
