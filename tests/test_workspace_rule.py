"""One workspace rule: after `python3 run.py`, a command typed in the same folder with
nothing set reaches the running runtime, and running never changes a tracked file of the
checkout nor leaves state or lock files in its source tree."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from launched import committed_copy, plain_env, run_py, start_until_running

DEADLINE_SECONDS = 60.0


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    copy = committed_copy(tmp_path / "checkout")
    (copy / ".venv").symlink_to(Path(sys.prefix))  # the environment is installed already
    return copy


@pytest.fixture
def running(checkout: Path) -> Iterator[subprocess.Popen[str]]:
    proc = start_until_running(
        run_py("--api-port", "0", "--panel-port", "0"), checkout, plain_env()
    )
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=DEADLINE_SECONDS)


def task_status(queue: Path, task_id: str) -> str | None:
    try:
        tasks = json.loads(queue.read_text())["tasks"]
    except (OSError, ValueError):
        return None
    return next((t.get("status") for t in tasks if t["id"] == task_id), None)


def test_a_task_added_in_the_same_folder_reaches_the_running_runtime(
    checkout: Path, running: subprocess.Popen[str]
) -> None:
    added = subprocess.run(
        [sys.executable, "worker.py", "add", "hello", "--mode", "local", "echo hello"],
        cwd=checkout,
        env=plain_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
    )
    assert added.returncode == 0, added.stderr
    queue = checkout / "workspace" / "queue.json"
    wait_until(lambda: task_status(queue, "hello") == "approved", DEADLINE_SECONDS)
    running.send_signal(signal.SIGINT)
    assert running.wait(timeout=DEADLINE_SECONDS) == 0
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    mine = ("?? .venv", "!! .venv")  # the test's link to the installed environment
    changed = [line for line in status if not line.startswith("!!") and line not in mine]
    assert changed == [], "running changed the checkout"
    stray = [
        line[3:]
        for line in status
        if line.startswith("!!") and "__pycache__/" not in line and line not in mine
    ]
    assert all(path.startswith("workspace/") for path in stray), stray
