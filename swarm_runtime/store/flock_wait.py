"""Waiting for a busy `flock` that is handed over the moment its holder lets go.

`flock` either fails at once (`LOCK_NB`) or blocks with no deadline. Polling with
`LOCK_NB` gives a deadline but finds a freed lock up to a whole poll interval late, and
meanwhile the lock sits idle: with eight workers taking the queue's lock three times
a task, a 2 ms poll cost each worker 15-22 ms of waiting per task. So the blocking call
runs on a thread of its own, where the kernel wakes it as soon as the lock is free,
and the caller waits for that thread with its deadline.

A caller that gives up leaves the thread blocked until the holder lets go; the thread
then takes the lock and drops it at once, closing the descriptor. Only a holder stuck for
longer than a caller's whole patience leaves such threads behind, one per timed-out
attempt, and each ends when the holder does.
"""

from __future__ import annotations

import fcntl
import os
import threading


class _Waiter:
    """One blocking `flock` on `fd`, and who owns the descriptor once it returns."""

    def __init__(self, fd: int):
        self.fd = fd
        self.done = threading.Event()
        self.error: OSError | None = None
        self._settled = threading.Lock()
        self._abandoned = False

    def block(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            self.error = exc
        with self._settled:
            if self._abandoned:  # nobody waits for it any more: let it go
                os.close(self.fd)
                return
            self.done.set()

    def abandon(self) -> bool:
        """Stop waiting; False if the flock returned first, and the descriptor is ours."""
        with self._settled:
            if self.done.is_set():
                return False
            self._abandoned = True
            return True


def wait_for_flock(fd: int, timeout: float) -> bool:
    """Take the exclusive flock on `fd` within `timeout` seconds. True when taken; False
    when the time ran out, and then `fd` belongs to the waiting thread, which closes it.
    An error from flock itself is raised, `fd` still the caller's."""
    waiter = _Waiter(fd)
    threading.Thread(target=waiter.block, name="flock-wait", daemon=True).start()
    try:
        waiter.done.wait(timeout)
    finally:  # an interrupt while waiting abandons the wait too
        gave_up = waiter.abandon()
    if gave_up:
        return False
    if waiter.error is not None:
        raise waiter.error
    return True
