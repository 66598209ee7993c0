"""State another account on the machine can neither redirect nor read.

Each test plants what such an account would (a symlink where a state file or folder
belongs, a folder or token opened to others, a file owned by someone else) and checks
that the runtime refuses it with an UnsafeStateError naming the path and the fix, writes
nothing through it, and creates its own files 0600 and `.swarm/` 0700 whatever the umask.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, child_env
from helpers.event_writer import LogWriter

from swarm_runtime.contract import Status, Verdict
from swarm_runtime.errors import UnsafeStateError
from swarm_runtime.phases.critic import Review
from swarm_runtime.phases.quality_gate import QualityGate
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.settings import Settings
from swarm_runtime.store import private, state_files
from swarm_runtime.store.documents import FileDocument
from swarm_runtime.store.pause import read_pause
from swarm_runtime.store.state_files import (
    FileLock,
    Workspace,
    append_line,
    atomic_write_bytes,
    file_version,
)
from swarm_runtime.store.token import resolve_token

SECRET = b"the victim's own file\n"
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def fresh(tmp_path: Path) -> Workspace:
    """A workspace whose folders do not exist yet."""
    return Workspace(tmp_path / "ws")


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """The file a planted link points at: it must come out of every test unchanged."""
    path = tmp_path / "victim.txt"
    path.write_bytes(SECRET)
    return path


def plant_link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def assert_refused(excinfo: pytest.ExceptionInfo[UnsafeStateError], path: Path) -> None:
    message = str(excinfo.value)
    assert excinfo.value.path == path
    assert message.startswith(f"{path}: is a symbolic link")
    assert f"rm {path}" in message


# --- a planted link is refused, never followed -------------------------------------------


def test_a_symlinked_queue_json_is_refused_on_read_and_write(
    workspace: Workspace, victim: Path
) -> None:
    plant_link(workspace.queue_path, victim)
    store = QueueStore(workspace)
    with pytest.raises(UnsafeStateError) as read:
        store.load()
    assert_refused(read, workspace.queue_path)
    with pytest.raises(UnsafeStateError):
        store.add({"id": "t1", "prompt": "hello"})
    assert victim.read_bytes() == SECRET and workspace.queue_path.is_symlink()


def test_a_symlinked_queue_journal_is_refused(workspace: Workspace, victim: Path) -> None:
    QueueStore(workspace).add_many([{"id": f"t{i}", "prompt": "hello"} for i in range(1, 20)])
    QueueStore(workspace, small_queue_bytes=0).add({"id": "t20", "prompt": "hello"})
    workspace.queue_journal_path.unlink()
    plant_link(workspace.queue_journal_path, victim)
    with pytest.raises(UnsafeStateError) as excinfo:
        QueueStore(workspace, small_queue_bytes=0).load()
    assert_refused(excinfo, workspace.queue_journal_path)
    assert victim.read_bytes() == SECRET


def test_a_symlinked_event_log_is_refused_and_not_appended_to(
    workspace: Workspace, victim: Path
) -> None:
    plant_link(workspace.log_path, victim)
    with pytest.raises(UnsafeStateError) as excinfo:
        LogWriter(workspace, "w1").emit("t1", Status.IN_PROGRESS)
    assert_refused(excinfo, workspace.log_path)
    assert victim.read_bytes() == SECRET


def test_a_symlinked_quality_gate_file_is_refused(workspace: Workspace, victim: Path) -> None:
    plant_link(workspace.quality_gate_path, victim)
    review = Review(verdict=Verdict.APPROVE, confidence=0.9)
    with pytest.raises(UnsafeStateError) as excinfo:
        QualityGate(workspace).record("t1", "text", "model", review, 0)
    assert_refused(excinfo, workspace.quality_gate_path)
    assert victim.read_bytes() == SECRET


def test_a_symlinked_pause_switch_is_refused(workspace: Workspace, victim: Path) -> None:
    plant_link(workspace.pause_path, victim)
    with pytest.raises(UnsafeStateError):
        read_pause(workspace)


def test_a_symlinked_lock_file_is_refused(workspace: Workspace, victim: Path) -> None:
    plant_link(Path(f"{workspace.queue_path}.lock"), victim)
    with pytest.raises(UnsafeStateError), workspace.lock(workspace.queue_path):
        pass
    assert victim.read_bytes() == SECRET


def test_a_dangling_link_is_not_created_through(workspace: Workspace, tmp_path: Path) -> None:
    """O_CREAT alone would create the link's target, wherever the link points."""
    target = tmp_path / "created-elsewhere"
    plant_link(workspace.safety_audit_path, target)
    with pytest.raises(UnsafeStateError):
        append_line(workspace, workspace.safety_audit_path, {"event": "x"})
    assert not target.exists()


def test_a_replace_over_a_link_replaces_the_link_not_its_target(
    workspace: Workspace, victim: Path
) -> None:
    plant_link(workspace.pause_path, victim)
    atomic_write_bytes(workspace.pause_path, b"{}\n")
    assert victim.read_bytes() == SECRET
    assert not workspace.pause_path.is_symlink() and mode_of(workspace.pause_path) == 0o600


def test_a_link_planted_under_the_temp_name_is_neither_followed_nor_replaced(
    workspace: Workspace, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(state_files.secrets, "token_hex", lambda _n: next(names))
    planted = workspace.root / f".{workspace.queue_path.name}.{os.getpid()}.planted.tmp"
    plant_link(planted, victim)
    atomic_write_bytes(workspace.queue_path, b"{}\n")
    assert victim.read_bytes() == SECRET and planted.is_symlink()
    assert workspace.queue_path.read_bytes() == b"{}\n"


def test_the_version_of_a_link_is_the_links_own(workspace: Workspace, victim: Path) -> None:
    plant_link(workspace.queue_path, victim)
    assert file_version(workspace.queue_path) == (
        os.lstat(workspace.queue_path).st_ino,
        os.lstat(workspace.queue_path).st_mtime_ns,
        os.lstat(workspace.queue_path).st_size,
    )


# --- folders and the token, checked when the workspace is opened ------------------------


@pytest.mark.parametrize("folder", ["state_dir", "sandbox"])
def test_a_symlinked_folder_is_refused_at_open(
    fresh: Workspace, tmp_path: Path, folder: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    path = getattr(fresh, folder)
    plant_link(path, elsewhere)
    with pytest.raises(UnsafeStateError) as excinfo:
        fresh.ensure_layout()
    assert_refused(excinfo, path)
    assert list(elsewhere.iterdir()) == []


def test_a_folder_turned_into_a_link_after_start_is_caught_by_check_folders(
    workspace: Workspace, tmp_path: Path
) -> None:
    workspace.sandbox.rmdir()
    plant_link(workspace.sandbox, tmp_path)
    with pytest.raises(UnsafeStateError):
        workspace.check_folders()


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o777], ids=oct)
def test_a_state_folder_open_to_others_is_refused_at_start(fresh: Workspace, mode: int) -> None:
    fresh.state_dir.mkdir(parents=True)
    fresh.state_dir.chmod(mode)
    with pytest.raises(UnsafeStateError) as excinfo:
        fresh.ensure_layout()
    assert f"is open to other users (mode {mode:04o}): run chmod 700 {fresh.state_dir}" in str(
        excinfo.value
    )


@as_root
def test_a_state_folder_owned_by_another_user_is_refused(fresh: Workspace) -> None:
    fresh.state_dir.mkdir(parents=True, mode=0o700)
    os.chown(fresh.state_dir, NOBODY, NOBODY)
    with pytest.raises(UnsafeStateError, match=f"is owned by uid {NOBODY}, not by this user"):
        fresh.ensure_layout()


def test_a_symlinked_token_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    stolen = tmp_path / "token-of-their-choosing"
    stolen.write_text("attacker-known-token\n")
    stolen.chmod(0o600)
    plant_link(workspace.token_path, stolen)
    with pytest.raises(UnsafeStateError) as excinfo:
        resolve_token(Settings(workspace=workspace.root), workspace)
    assert_refused(excinfo, workspace.token_path)


def test_a_dangling_token_link_is_refused_not_created_through(
    workspace: Workspace, tmp_path: Path
) -> None:
    target = tmp_path / "token-written-here"
    plant_link(workspace.token_path, target)
    with pytest.raises(UnsafeStateError):
        resolve_token(Settings(workspace=workspace.root), workspace)
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
def test_a_token_readable_by_others_is_refused(workspace: Workspace, mode: int) -> None:
    resolve_token(Settings(workspace=workspace.root), workspace)
    workspace.token_path.chmod(mode)
    with pytest.raises(UnsafeStateError) as excinfo:
        resolve_token(Settings(workspace=workspace.root), workspace)
    message = str(excinfo.value)
    assert f"is readable by other users (mode {mode:04o})" in message
    assert f"chmod 600 {workspace.token_path}" in message


@as_root
def test_a_token_owned_by_another_user_is_refused(workspace: Workspace) -> None:
    resolve_token(Settings(workspace=workspace.root), workspace)
    os.chown(workspace.token_path, NOBODY, NOBODY)
    with pytest.raises(UnsafeStateError, match=f"is owned by uid {NOBODY}"):
        resolve_token(Settings(workspace=workspace.root), workspace)


@as_root
def test_a_queue_owned_by_another_user_is_refused(workspace: Workspace) -> None:
    QueueStore(workspace).add({"id": "t1", "prompt": "hello"})
    os.chown(workspace.queue_path, NOBODY, NOBODY)
    with pytest.raises(UnsafeStateError, match="another user could rewrite it"):
        Workspace(workspace.root).ensure_layout()


# --- modes, whatever the umask ------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def write_everything(ws: Workspace) -> None:
    """Each kind of write the runtime makes, once."""
    ws.ensure_layout()
    resolve_token(Settings(workspace=ws.root), ws)
    QueueStore(ws).add_many([{"id": f"t{i}", "prompt": "hello"} for i in range(1, 20)])
    QueueStore(ws, small_queue_bytes=0).add({"id": "t20", "prompt": "hello"})  # the journal
    LogWriter(ws, "w1").emit("t1", Status.IN_PROGRESS)
    review = Review(verdict=Verdict.APPROVE, confidence=0.9)
    QualityGate(ws).record("t1", "text", "model", review, 0)
    FileDocument(ws, ws.budget_ledger_path).update(lambda doc: (doc, None), dict)
    append_line(ws, ws.safety_audit_path, {"event": "x"}, durable=False)


@pytest.mark.usefixtures("umask")
def test_created_files_are_0600_and_the_state_folder_0700(fresh: Workspace) -> None:
    write_everything(fresh)
    assert mode_of(fresh.state_dir) == 0o700
    files = [
        fresh.token_path,
        fresh.queue_path,
        fresh.queue_journal_path,
        fresh.log_path,
        fresh.quality_gate_path,
        fresh.budget_ledger_path,
        fresh.safety_audit_path,
        Path(f"{fresh.queue_path}.lock"),
    ]
    assert {path.name: mode_of(path) for path in files} == {path.name: 0o600 for path in files}


def test_a_hand_written_queue_json_is_tightened_at_open_with_a_log_line(
    workspace: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    workspace.queue_path.write_text('{"tasks": []}\n')
    workspace.queue_path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="swarm.store"):
        Workspace(workspace.root).ensure_layout()
    assert mode_of(workspace.queue_path) == 0o600
    assert f"{workspace.queue_path} was readable by other users (mode 0644)" in caplog.text
    assert QueueStore(workspace).load().tasks == []


def test_a_loose_log_is_tightened_by_the_next_append(workspace: Workspace) -> None:
    LogWriter(workspace, "w1").emit("t1", Status.IN_PROGRESS)
    workspace.log_path.chmod(0o666)
    LogWriter(workspace, "w1").emit("t1", Status.COMPLETED)
    assert mode_of(workspace.log_path) == 0o600
    assert len(workspace.log_path.read_text().splitlines()) == 2


def test_a_replace_leaves_the_file_0600_whatever_it_was(workspace: Workspace) -> None:
    workspace.queue_path.write_text('{"tasks": []}\n')
    workspace.queue_path.chmod(0o666)
    QueueStore(workspace).add({"id": "t1", "prompt": "hello"})
    assert mode_of(workspace.queue_path) == 0o600


# --- the decisions, as tables --------------------------------------------------------------

UID = 1000
FOLDER = Path("/ws/.swarm")


def fake_stat(kind: int, mode: int, uid: int = UID) -> os.stat_result:
    return os.stat_result((kind | mode, 1, 1, 1, uid, uid, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("info", "private_folder", "expected"),
    [
        (fake_stat(stat.S_IFDIR, 0o700), True, []),
        (fake_stat(stat.S_IFDIR, 0o755), False, []),
        (fake_stat(stat.S_IFDIR, 0o750), True, ["open to other users (mode 0750)"]),
        (fake_stat(stat.S_IFLNK, 0o777), True, ["is a symbolic link"]),
        (fake_stat(stat.S_IFREG, 0o600), True, ["is not a folder"]),
        (fake_stat(stat.S_IFDIR, 0o700, uid=0), True, ["owned by uid 0"]),
        (fake_stat(stat.S_IFDIR, 0o777, uid=0), True, ["owned by uid 0", "mode 0777"]),
    ],
)
def test_folder_problems(info: os.stat_result, private_folder: bool, expected: list[str]) -> None:
    problems = private.folder_problems(FOLDER, info, UID, private=private_folder)
    assert len(problems) == len(expected)
    assert all(part in problem for part, problem in zip(expected, problems, strict=True))


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (fake_stat(stat.S_IFREG, 0o600), []),
        (fake_stat(stat.S_IFREG, 0o400), []),
        (fake_stat(stat.S_IFREG, 0o644), ["readable by other users (mode 0644)"]),
        (fake_stat(stat.S_IFREG, 0o600, uid=0), ["owned by uid 0"]),
        (fake_stat(stat.S_IFIFO, 0o600), ["not a regular file"]),
    ],
)
def test_secret_problems(info: os.stat_result, expected: list[str]) -> None:
    problems = private.secret_problems(FOLDER / "token", info, UID)
    assert len(problems) == len(expected)
    assert all(part in problem for part, problem in zip(expected, problems, strict=True))


@pytest.mark.parametrize(
    ("info", "problems", "loose"),
    [
        (fake_stat(stat.S_IFREG, 0o600), 0, False),
        (fake_stat(stat.S_IFREG, 0o644), 0, True),
        (fake_stat(stat.S_IFREG, 0o644, uid=0), 1, True),
        (fake_stat(stat.S_IFDIR, 0o700), 1, False),
    ],
)
def test_file_problems_and_looseness(info: os.stat_result, problems: int, loose: bool) -> None:
    assert len(private.file_problems(info, UID)) == problems
    assert private.is_loose(info) is loose


def test_a_lock_file_is_not_followed_by_a_lock_object_made_by_hand(
    tmp_path: Path, victim: Path
) -> None:
    lock_path = tmp_path / "x.lock"
    plant_link(lock_path, victim)
    with pytest.raises(UnsafeStateError), FileLock(str(lock_path)):
        pass


# --- through the real entry points ----------------------------------------------------------

Plant = Callable[[Workspace, Path], Any]


def link_state_dir(ws: Workspace, tmp_path: Path) -> None:
    ws.state_dir.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    ws.state_dir.symlink_to(elsewhere)


def link_queue(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "victim.txt").write_bytes(SECRET)
    ws.queue_path.symlink_to(tmp_path / "victim.txt")


def open_state_dir(ws: Workspace, _tmp_path: Path) -> None:
    ws.state_dir.chmod(0o755)


def open_token(ws: Workspace, _tmp_path: Path) -> None:
    resolve_token(Settings(workspace=ws.root), ws)
    ws.token_path.chmod(0o644)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "plant", "says"),
    [
        ("swarm.py", link_state_dir, "is a symbolic link"),
        ("swarm.py", link_queue, "is a symbolic link"),
        ("swarm.py", open_state_dir, "is open to other users (mode 0755): run chmod 700"),
        ("swarm.py", open_token, "is readable by other users (mode 0644)"),
        ("control_panel.py", open_state_dir, "run chmod 700"),
    ],
)
def test_a_server_refuses_to_start_with_one_line_saying_why(
    tmp_path: Path, script: str, plant: Plant, says: str
) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.state_dir.mkdir(mode=0o700)
    plant(ws, tmp_path)
    result = subprocess.run(
        [sys.executable, script, "--port", "0"],
        cwd=ROOT,
        env=child_env(ws),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_worker_refuses_to_start_with_one_line_saying_why(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.state_dir.mkdir(mode=0o700)
    link_queue(ws, tmp_path)
    result = subprocess.run(
        [sys.executable, "worker.py", "--once"],
        cwd=ROOT,
        env=child_env(ws),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "is a symbolic link" in result.stderr
    assert (tmp_path / "victim.txt").read_bytes() == SECRET
