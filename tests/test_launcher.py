"""run.py as a launcher: its children never outlive it, however it ends, and `--help`
answers without installing anything."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, child_env, wait_until
from launched import run_py, start_until_running

from swarm_runtime.processes import process_exists
from swarm_runtime.store.state_files import Workspace

STOP_DEADLINE_SECONDS = 30.0


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


@pytest.fixture
def launcher(workspace: Workspace) -> Iterator[subprocess.Popen[str]]:
    """`python3 run.py` on free ports, up with all three children."""
    options = ("--workspace", str(workspace.root), "--api-port", "0", "--panel-port", "0")
    proc = start_until_running(run_py(*options), ROOT, child_env(workspace))
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def all_gone(pids: set[int]) -> bool:
    return not any(process_exists(pid) for pid in pids)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_closing_the_terminal_stops_every_child(
    launcher: subprocess.Popen[str], signum: int
) -> None:
    children = children_of(launcher.pid)
    assert len(children) == 3
    launcher.send_signal(signum)
    assert launcher.wait(timeout=STOP_DEADLINE_SECONDS) == 0
    wait_until(lambda: all_gone(children), STOP_DEADLINE_SECONDS)


def test_children_notice_when_the_launcher_is_killed(launcher: subprocess.Popen[str]) -> None:
    children = children_of(launcher.pid)
    assert len(children) == 3
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    wait_until(lambda: all_gone(children), STOP_DEADLINE_SECONDS)


def test_help_answers_without_installing_anything(tmp_path: Path) -> None:
    """Run by the interpreter outside .venv, where an install would start first."""
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    copy = tmp_path / "checkout"
    copy.mkdir()
    (copy / "run.py").write_bytes((ROOT / "run.py").read_bytes())
    (copy / "swarm_runtime").mkdir()
    for name in ("__init__.py", "processes.py"):
        (copy / "swarm_runtime" / name).write_bytes((ROOT / "swarm_runtime" / name).read_bytes())
    result = subprocess.run(
        [str(base_python), "run.py", "--help"], cwd=copy, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--api-port" in result.stdout
    assert "(default: 8420)" in result.stdout and "SWARM_WORKSPACE" in result.stdout
    assert not (copy / ".venv").exists()
    unknown = subprocess.run([str(base_python), "run.py", "serve"], cwd=copy, capture_output=True)
    assert unknown.returncode == 2 and b"unknown command 'serve'" in unknown.stderr


@pytest.mark.parametrize(
    "stamp, with_test_extras, needed",
    [
        ("", False, True),
        ("v1 run", False, False),  # running needs only what running needs
        ("v1 run", True, True),  # check and test add the test extras
        ("v1 test", False, False),
        ("v1 test", True, False),
        ("v0 test", False, True),  # pyproject.toml changed
        ("v1", True, True),  # a stamp that does not say
    ],
)
def test_running_installs_only_what_running_needs(
    stamp: str, with_test_extras: bool, needed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    import run

    assert run.needs_install(stamp, "v1", with_test_extras=with_test_extras) is needed
    assert run.install_target(with_test_extras=False) == (str(ROOT), "run")
    assert run.install_target(with_test_extras=True)[0].endswith("[test]")


def test_nothing_is_seeded_before_every_server_is_up(workspace: Workspace) -> None:
    """With the panel's port taken, run.py stops and says which option to change, and the
    workspace holds no demo task."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "run.py", "--workspace", str(workspace.root), "--api-port", "0"]
            + ["--panel-port", str(port)],
            cwd=ROOT,
            env=child_env(workspace),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1 and "--panel-port" in result.stderr
    assert f"port {port} on 127.0.0.1 is in use" in result.stdout
    queue = workspace.queue_path
    assert not queue.exists() or '"demo-' not in queue.read_text()
