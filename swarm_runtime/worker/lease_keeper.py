"""Renewing the lease of the task in hand, from one thread that outlives the tasks.

A thread started for each task and joined after it cost every task a thread's start and
join: two hand-offs between threads, each a wait for the scheduler on a busy machine.
One thread now serves task after task, and stops by itself once the worker has had no
task for a renewal interval (so a worker object that is dropped leaves no thread).

When `keep` ends, no renewal of that task is under way or will start: a renewal runs
holding the keeper's lock, and the task is let go under the same lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# renew(task_id) -> False when another worker has taken the task over.
Renew = Callable[[str], bool]


class LeaseKeeper:
    def __init__(self, renew: Renew, interval: float, retry_after_error: float):
        self._renew = renew
        self._interval = interval
        self._retry = min(interval, retry_after_error)
        self._changed = threading.Condition()
        self._task_id: str | None = None
        self._generation = 0
        self._thread: threading.Thread | None = None

    @contextmanager
    def keep(self, task_id: str) -> Iterator[None]:
        """Renew `task_id`'s lease every interval while the block runs."""
        with self._changed:
            self._task_id = task_id
            self._generation += 1
            self._changed.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="lease", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._changed:
                self._task_id = None
                self._generation += 1
                self._changed.notify()

    def _serve(self) -> None:
        with self._changed:
            while self._changed.wait_for(self._has_task, timeout=self._interval):
                self._keep_current()
            self._thread = None

    def _has_task(self) -> bool:
        return self._task_id is not None

    def _keep_current(self) -> None:
        """Renew the current task each interval until it is let go (the lock is held,
        except while waiting)."""
        task_id, generation = self._task_id, self._generation
        assert task_id is not None
        wait: float | None = self._interval
        while not self._changed.wait_for(lambda: self._generation != generation, timeout=wait):
            wait = self._renew_once(task_id)
            if wait is None:
                self._changed.wait_for(lambda: self._generation != generation)

    def _renew_once(self, task_id: str) -> float | None:
        """The wait before the next renewal; None once the lease is lost."""
        try:
            renewed = self._renew(task_id)
        except Exception as exc:  # the thread's boundary: one failure ends no renewal
            log.warning("could not renew the lease on task %s: %s", task_id, exc)
            return self._retry
        if not renewed:
            log.warning("lost the lease on task %s", task_id)
            return None
        return self._interval
