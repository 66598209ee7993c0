"""worker.py's command line: what it accepts before anything is written."""

from __future__ import annotations

import pytest
from conftest import run_worker

from swarm_runtime.store.state_files import Workspace
from swarm_runtime.worker.cli import parse_args

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
