"""One workspace rule: after `python3 run.py`, a command typed in the same folder with
nothing set reaches the running runtime, and running never changes a tracked file of the
checkout nor leaves state or lock files in its source tree."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, wait_until

DEADLINE_SECONDS = 60.0
GIT = [
    "git",
    "-c",
    "user.name=t",
    "-c",
    "user.email=t@example.invalid",
    "-c",
    "init.defaultBranch=main",
]


def checkout_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of this checkout, committed into a repository of its own."""
    copy = tmp_path / "checkout"
    for name in checkout_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "checkout"]):
        subprocess.run([*GIT, *args], cwd=copy, check=True, capture_output=True)
    (copy / ".venv").symlink_to(Path(sys.prefix))  # the environment is installed already
    return copy


def plain_env() -> dict[str, str]:
    """Nothing of the runtime's set, as in a fresh terminal."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SWARM_", "GROQ_", "CONTROL_PANEL_"))
    }


@pytest.fixture
def running(checkout: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "run.py", "--api-port", "0", "--panel-port", "0"],
        cwd=checkout,
        env=plain_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "swarm-runtime is running" in line:
            break
    else:
        pytest.fail("run.py did not start:\n" + "".join(seen))
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
