"""worker.py's command line: what it accepts before anything is written, and that it
still runs a worker with no command while `swarm` needs one."""

from __future__ import annotations

import argparse

import pytest
from conftest import run_worker

from swarm_runtime.cli import build_parser, swarm_main
from swarm_runtime.store.state_files import Workspace


def parse_args(argv: list[str], *, work_by_default: bool = True) -> argparse.Namespace:
    return build_parser(work_by_default=work_by_default).parse_args(argv)


BAD_WORKER_IDS = [
    "",
    ".",
    "..",
    "../escape",
    "a/b",
    "a b",
    "w\n1",
    "w\x1b[31mred",
    "w\x9b31m",
    "wörker",
    "x" * 129,
]


@pytest.mark.parametrize("worker_id", BAD_WORKER_IDS)
def test_a_worker_id_that_is_not_a_valid_task_id_is_refused(
    worker_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Worker ids land in leases, presence file names and every event line."""
    with pytest.raises(SystemExit) as exited:
        parse_args(["--worker-id", worker_id])
    assert exited.value.code == 2
    assert "[A-Za-z0-9._-]{1,128}" in capsys.readouterr().err


@pytest.mark.parametrize("worker_id", ["w1", "host-4242", "a.b_c-D", "x" * 128])
def test_a_worker_id_like_a_task_id_is_accepted(worker_id: str) -> None:
    assert parse_args(["--worker-id", worker_id]).worker_id == worker_id


def test_the_worker_exits_2_before_writing_anything(workspace: Workspace) -> None:
    result = run_worker(workspace, "--once", "--worker-id", "../../etc/w")
    assert result.returncode == 2
    assert "not a valid worker id" in result.stderr
    assert not workspace.log_path.exists()


@pytest.mark.parametrize(
    ("argv", "work_by_default"),
    [
        (["--once", "--worker-id", "w1"], True),
        (["work", "--once", "--worker-id", "w1"], True),
        (["--once", "--worker-id", "w1", "work"], True),
        (["work", "--once", "--worker-id", "w1"], False),
    ],
)
def test_the_worker_options_come_before_or_after_work(
    argv: list[str], work_by_default: bool
) -> None:
    args = parse_args(argv, work_by_default=work_by_default)
    assert (args.once, args.worker_id, args.subcommand in (None, "work")) == (True, "w1", True)


def test_no_command_runs_no_worker_under_swarm(capsys: pytest.CaptureFixture[str]) -> None:
    assert swarm_main([]) == 2
    assert "work" in capsys.readouterr().err


def test_swarm_has_no_worker_options_before_a_command() -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--once"], work_by_default=False)
    assert exited.value.code == 2
