"""The lease keeper: one thread renews the task in hand, task after task."""

from __future__ import annotations

import threading
import time

import pytest

from swarm_runtime.worker.lease_keeper import LeaseKeeper

INTERVAL = 0.02


class Renewals:
    """Records every renewal; `answers` says what the next ones return (then True)."""

    def __init__(self, *answers: bool | Exception):
        self.renewed: list[str] = []
        self.threads: set[int] = set()
        self.answers = list(answers)
        self.seen = threading.Condition()

    def __call__(self, task_id: str) -> bool:
        with self.seen:
            self.renewed.append(task_id)
            self.threads.add(threading.get_ident())
            self.seen.notify_all()
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        return answer

    def wait_for(self, count: int, deadline: float = 5.0) -> None:
        with self.seen:
            assert self.seen.wait_for(lambda: len(self.renewed) >= count, timeout=deadline)


def test_one_thread_renews_task_after_task() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals, INTERVAL, 1.0)
    for task_id in ("a", "b", "c"):
        already = len(renewals.renewed)
        with keeper.keep(task_id):
            renewals.wait_for(already + 2)
    assert {"a", "b", "c"} <= set(renewals.renewed)
    assert len(renewals.threads) == 1


def test_no_renewal_of_a_task_runs_once_it_is_let_go() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals, INTERVAL, 1.0)
    with keeper.keep("a"):
        renewals.wait_for(1)
    after = len(renewals.renewed)
    with keeper.keep("b"):
        renewals.wait_for(after + 1)
    assert renewals.renewed[after:] and set(renewals.renewed[after:]) == {"b"}


def test_a_lost_lease_stops_the_renewals_until_the_next_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    renewals = Renewals(False)
    keeper = LeaseKeeper(renewals, INTERVAL, 1.0)
    with keeper.keep("a"):
        renewals.wait_for(1)
        with renewals.seen:  # several intervals pass: no renewal after the refusal
            assert not renewals.seen.wait_for(lambda: len(renewals.renewed) > 1, 10 * INTERVAL)
    assert "lost the lease on task a" in caplog.text
    with keeper.keep("b"):
        renewals.wait_for(2)
    assert renewals.renewed[:2] == ["a", "b"]


def test_a_failed_renewal_is_tried_again_and_the_renewals_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    renewals = Renewals(OSError("disk unplugged"))
    keeper = LeaseKeeper(renewals, INTERVAL, 1.0)
    with keeper.keep("a"):
        renewals.wait_for(3)
    assert "could not renew the lease on task a: disk unplugged" in caplog.text


def test_the_thread_ends_when_the_worker_has_no_task_for_an_interval() -> None:
    renewals = Renewals()
    keeper = LeaseKeeper(renewals, INTERVAL, 1.0)
    with keeper.keep("a"):
        renewals.wait_for(1)
    (first,) = renewals.threads
    deadline = time.monotonic() + 5
    while any(t.ident == first for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the idle keeper's thread is still alive"
        time.sleep(INTERVAL / 4)
    with keeper.keep("b"):  # a new thread takes up the next task
        renewals.wait_for(2)
    assert renewals.renewed[-1] == "b"


def test_two_tasks_held_at_once_are_each_renewed_until_let_go() -> None:
    """A task claimed ahead is held while the one before it is reviewed."""
    renewals = Renewals()
    keeper = LeaseKeeper(renewals, INTERVAL, 1.0)
    with keeper.keep("a"):
        keeper.hold("b")
        renewals.wait_for(6)
        assert {"a", "b"} <= set(renewals.renewed)
    after = len(renewals.renewed)
    renewals.wait_for(after + 2)
    assert set(renewals.renewed[after:]) == {"b"}
    keeper.release("b")
    assert len(renewals.threads) == 1


class CountedWakes(threading.Condition):
    """A condition that counts the wake-ups asked of the thread, and tells when it waits."""

    def __init__(self) -> None:
        super().__init__()
        self.notified = 0
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


def test_holding_task_after_task_never_wakes_the_thread() -> None:
    """Each task held is due an interval after those before it: the thread's own wait
    ends first, so neither a hold nor a release wakes it."""
    changed = CountedWakes()
    keeper = LeaseKeeper(Renewals(), 5.0, 1.0, changed)
    keeper.hold("first")
    assert changed.waiting.wait(5)
    keeper.release("first")
    for task_id in "abcdefg":
        with keeper.keep(task_id):
            keeper.hold(f"{task_id}-ahead")
        keeper.release(f"{task_id}-ahead")
    assert changed.notified == 0
