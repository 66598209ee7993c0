"""Starting the whole runtime the way a user does (`run.py`), in the checkout or in a
committed copy of it, for the tests of the launcher, the workspace rule and the README."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

RUNNING = "swarm-runtime is running"
GIT = [
    *("git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"),
    *("-c", "init.defaultBranch=main"),
]


def plain_env() -> dict[str, str]:
    """Nothing of the runtime's set, as in a fresh terminal."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SWARM_", "GROQ_", "CONTROL_PANEL_"))
    }


def checkout_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def committed_copy(destination: Path) -> Path:
    """The checkout's files, committed into a repository of their own."""
    for name in checkout_files():
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "checkout"]):
        subprocess.run([*GIT, *args], cwd=destination, check=True, capture_output=True)
    return destination


def start_until_running(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start `args` in a session of its own and read its output until the runtime says
    it is running; fail with that output if it ends first."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if RUNNING in line:
            return proc
    proc.wait()
    pytest.fail(f"{' '.join(args)} did not start:\n" + "".join(seen))


def run_py(*options: str) -> list[str]:
    return [sys.executable, "run.py", *options]
