"""Claimer processes: each builds the store a worker would build from its settings, then
claims and finishes tasks that do nothing, as fast as the store lets it.

A claimer is a process of its own, as a worker is (threads in one interpreter would
measure the GIL), with its own store and connections. The processes are started once
and serve every run: a run names the settings, each claimer opens a fresh store, takes
one task to warm it (a store reads the whole queue on its first transaction), says it
is ready, and on `go` works until the deadline or until the queue runs dry.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from swarm_runtime.contract import Status
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.leases import WorkerIdentity
from swarm_runtime.queue.select import store_for
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace

# Long enough that no lease expires in a run: on a loaded machine, claimers warming up
# together can keep a claimed task waiting for its finish longer than a worker's 30 s.
LEASE_SECONDS = 600.0
# A claimer that has not answered in this long is stuck, not slow.
ANSWER_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class Throughput:
    transitions: int
    seconds: float
    ran_dry: bool

    @property
    def per_second(self) -> float:
        return self.transitions / self.seconds if self.seconds > 0 else 0.0


def claim_and_finish(store: TaskQueue, worker: WorkerIdentity) -> bool:
    """Two transitions, or False when there was nothing to claim."""
    task = store.claim(worker, LEASE_SECONDS).task
    if task is None:
        return False
    store.finish(task.id, worker, Status.COMPLETED)
    return True


def work_until(
    store: TaskQueue, worker: WorkerIdentity, deadline: float
) -> tuple[int, float, bool]:
    """Transitions made, when the last one ended (time.monotonic, shared by every process
    on the machine), and whether the queue ran dry first."""
    transitions = 0
    while time.monotonic() < deadline:
        if not claim_and_finish(store, worker):
            return transitions, time.monotonic(), True
        transitions += 2
    return transitions, time.monotonic(), False


def serve(number: int, pipe: Connection) -> None:
    """One claimer's life: a run per settings received, until the pipe closes."""
    worker = WorkerIdentity(f"claimer-{number}")
    with contextlib.suppress(EOFError):  # the parent is done with us, or gone
        while True:
            settings: Settings = pipe.recv()
            store = store_for(settings, Workspace(settings.workspace))
            try:
                claim_and_finish(store, worker)
                pipe.send("ready")
                result = work_until(store, worker, deadline=pipe.recv())
            finally:
                store.close()
            pipe.send(result)  # only once closed: the database may go once this is read


class Claimers:
    """`count` claimer processes; `run` uses the first N of them."""

    def __init__(self, count: int):
        context = multiprocessing.get_context("spawn")  # no pool or lock inherited by a fork
        self.pipes: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for number in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=serve, args=(number, theirs), daemon=True)
            process.start()
            theirs.close()  # so a claimer that dies is an EOFError here, not a hang
            self.pipes.append(ours)
            self.processes.append(process)

    def run(self, settings: Settings, claimers: int, seconds: float) -> Throughput:
        """All claimers start together once each has warmed its store; the time runs from
        `go` to the end of the last transition."""
        pipes = self.pipes[:claimers]
        for pipe in pipes:
            pipe.send(settings)
        for pipe in pipes:
            answer(pipe)
        start = time.monotonic()
        for pipe in pipes:
            pipe.send(start + seconds)
        results = [answer(pipe) for pipe in pipes]
        transitions = sum(done for done, _, _ in results)
        end = max(ended for _, ended, _ in results)
        return Throughput(transitions, end - start, any(dry for _, _, dry in results))

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.close()
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()


def answer(pipe: Connection) -> Any:
    if not pipe.poll(ANSWER_TIMEOUT_SECONDS):
        raise RuntimeError(f"a claimer did not answer within {ANSWER_TIMEOUT_SECONDS:.0f} s")
    try:
        return pipe.recv()
    except EOFError:
        raise RuntimeError("a claimer exited; its error is printed above") from None
