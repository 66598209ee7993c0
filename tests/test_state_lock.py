"""The state-file lock: exclusive across processes and threads, re-entrant in a thread,
and released by the kernel when its holder dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from swarm_runtime.store.state_files import FileLock

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
