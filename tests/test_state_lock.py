"""The state-file lock: exclusive across processes and threads, re-entrant in a thread,
released by the kernel when its holder dies, and honoured by tools using `filelock`."""

from __future__ import annotations

import fcntl
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import filelock
import pytest
from conftest import wait_until

from swarm_runtime.queue.store import QueueStore
from swarm_runtime.store import state_files
from swarm_runtime.store.state_files import FileLock, Workspace

HOLDER = """
import sys, time
from swarm_runtime.store.state_files import FileLock
with FileLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def lock_path(tmp_path: Path) -> str:
    return str(tmp_path / "queue.json.lock")


@pytest.fixture
def holder(lock_path: str):
    """A separate process holding the lock until the test kills it."""
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, lock_path, root], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_another_process_holding_the_lock_times_out(lock_path: str, holder) -> None:
    with pytest.raises(TimeoutError, match="could not lock .*queue.json.lock"):
        with FileLock(lock_path, timeout=0.2):
            pass


def test_a_killed_holder_releases_the_lock(lock_path: str, holder) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with FileLock(lock_path, timeout=5.0):
        pass


def test_the_same_thread_may_enter_again(lock_path: str) -> None:
    lock = FileLock(lock_path, timeout=0.2)
    with lock, lock, lock:
        pass
    with lock:  # fully released after the outermost exit
        pass


def test_threads_of_one_process_exclude_each_other(lock_path: str) -> None:
    lock = FileLock(lock_path, timeout=10.0)
    inside = 0
    most_inside = 0
    guard = threading.Lock()
    entered = threading.Event()

    def work() -> None:
        nonlocal inside, most_inside
        for _ in range(200):
            with lock:
                with guard:
                    inside += 1
                    most_inside = max(most_inside, inside)
                entered.set()
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert entered.is_set() and not any(thread.is_alive() for thread in threads)
    assert most_inside == 1


def test_a_held_lock_blocks_a_second_lock_object_in_the_same_thread(lock_path: str) -> None:
    """Two lock objects on one file are two descriptors: flock makes them exclude."""
    with FileLock(lock_path):
        with pytest.raises(TimeoutError):
            with FileLock(lock_path, timeout=0.1):
                pass


# --- tools that use the filelock package -------------------------------------------------

FILELOCK_HOLDER = """
import sys, filelock
with filelock.FileLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""
RUNTIME_HOLDER = """
import sys
from swarm_runtime.store.state_files import Workspace
workspace = Workspace(sys.argv[1])
with workspace.lock(workspace.queue_path):
    print("held", flush=True)
    sys.stdin.readline()
"""
HANDSHAKE_TIMEOUT = 10.0


class Holder:
    """A process that takes a lock, says "held", and lets go when told to."""

    def __init__(self, script: str, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], HANDSHAKE_TIMEOUT)
        assert ready and self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()
        assert self.proc.wait(timeout=HANDSHAKE_TIMEOUT) == 0


@pytest.fixture
def hold() -> Iterator[Callable[..., Holder]]:
    holders: list[Holder] = []

    def _hold(script: str, *args: str) -> Holder:
        holders.append(Holder(script, *args))
        return holders[-1]

    yield _hold
    for holder in holders:
        if holder.proc.poll() is None:
            holder.proc.kill()
            holder.proc.wait()


@pytest.fixture
def refusals(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each time the kernel refuses the runtime's flock: proof that it is waiting."""
    refused: list[int] = []

    def flock(fd: int, operation: int) -> None:
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            refused.append(fd)
            raise

    monkeypatch.setattr(state_files, "fcntl", SimpleNamespace(**{**vars(fcntl), "flock": flock}))
    return refused


def test_a_queue_transaction_waits_for_a_filelock_holder(
    workspace: Workspace, hold: Callable[..., Holder], refusals: list[int]
) -> None:
    holder = hold(FILELOCK_HOLDER, f"{workspace.queue_path}.lock")
    store = QueueStore(workspace)
    added = threading.Event()

    def add() -> None:
        store.add({"id": "after-the-tool", "prompt": "x"})
        added.set()

    threading.Thread(target=add, daemon=True).start()
    wait_until(lambda: len(refusals) >= 3)
    assert not added.is_set()
    holder.release()
    wait_until(added.is_set)
    assert QueueStore(workspace).load().find("after-the-tool") is not None


def test_a_filelock_user_waits_for_the_runtimes_lock(
    workspace: Workspace, hold: Callable[..., Holder]
) -> None:
    holder = hold(RUNTIME_HOLDER, str(workspace.root))
    tool_lock = filelock.FileLock(f"{workspace.queue_path}.lock")
    with pytest.raises(filelock.Timeout):
        tool_lock.acquire(timeout=0.2)
    holder.release()
    with tool_lock.acquire(timeout=HANDSHAKE_TIMEOUT):
        assert tool_lock.is_locked
