"""Renewing the leases of the tasks in hand, from one thread that outlives the tasks.

A thread started for each task and joined after it cost every task a thread's start and
join: two hand-offs between threads, each a wait for the scheduler on a busy machine.
One thread now serves task after task, and stops by itself once the worker has had no
task for a renewal interval (so a worker object that is dropped leaves no thread).

A worker holds two tasks at a time while the one it claimed ahead runs during the
review of the one before it; each is renewed on its own schedule.

When a task is let go, no renewal of it is under way or will start: a renewal runs
holding the keeper's lock, and the task is let go under the same lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# renew(task_id) -> False when another worker has taken the task over.
Renew = Callable[[str], bool]


class LeaseKeeper:
    def __init__(
        self,
        renew: Renew,
        interval: float,
        retry_after_error: float,
        changed: threading.Condition | None = None,
    ):
        """`changed` guards the held tasks and wakes the thread (a test counts its wakes)."""
        self._renew = renew
        self._interval = interval
        self._retry = min(interval, retry_after_error)
        self._changed = changed or threading.Condition()
        # When each held task's next renewal is due (monotonic); inf once it is lost.
        self._due: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._wakes_at = math.inf  # when the thread's wait ends unless woken (`hold`)

    @contextmanager
    def keep(self, task_id: str) -> Iterator[None]:
        """Renew `task_id`'s lease every interval while the block runs."""
        self.hold(task_id)
        try:
            yield
        finally:
            self.release(task_id)

    def hold(self, task_id: str) -> None:
        """Renew `task_id`'s lease every interval from now until `release`."""
        due = time.monotonic() + self._interval
        with self._changed:
            self._due[task_id] = due
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="lease", daemon=True)
                self._thread.start()
            elif due < self._wakes_at:
                self._changed.notify()

    def release(self, task_id: str) -> None:
        """Let go of `task_id`. The thread is not woken: a renewal it finds no longer due
        is none, and one it did not expect is of no task."""
        with self._changed:
            self._due.pop(task_id, None)

    def _serve(self) -> None:
        with self._changed:
            while self._sleep_until(time.monotonic() + self._interval, self._holds_any):
                self._sleep_until(min(self._due.values(), default=math.inf))
                self._renew_due()
            self._thread = None

    def _sleep_until(self, deadline: float, woken_by: Callable[[], bool] | None = None) -> bool:
        """Wait, the lock let go, until `deadline` (inf: until woken) or `woken_by` holds;
        returns whether it does. The deadline is kept for `hold`, which wakes the thread
        only for a renewal due before it: tasks held and let go task after task, each
        due an interval after the one before, never wake it. A wake costs a thread
        switch and two hand-offs of the interpreter lock, which a busy worker would pay
        about three times a task."""
        self._wakes_at = deadline
        timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        if woken_by is None:
            self._changed.wait(timeout)
            return True
        return self._changed.wait_for(woken_by, timeout)

    def _holds_any(self) -> bool:
        return bool(self._due)

    def _renew_due(self) -> None:
        """Renew each held task whose renewal is due (the lock is held)."""
        for task_id, due in list(self._due.items()):
            if due <= time.monotonic():
                wait = self._renew_once(task_id)
                self._due[task_id] = math.inf if wait is None else time.monotonic() + wait

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
