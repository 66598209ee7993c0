"""Budget reservation: the overhead that reserve + settle adds to each paid LLM call.

Measured twice: on the ledger alone (`BudgetLedger.reserve` then `settle`, each a locked,
fsynced read-modify-write of the ledger file), and through `SecureAPIWrapper.call_llm`
with an in-process provider that answers at once, where a priced model (which takes a
reservation) is compared with a free one (which takes none) in the same run; the
difference is what the ledger costs a real call. Target: <= 2 ms per call. The ledger
is also timed once it remembers the spend of as many tasks as it keeps (its largest size).

    python benchmarks/bench_budget.py [--calls N] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchlib import Figure, median, print_table

from swarm_runtime.llm.budget import TASK_SPEND_RETAIN, BudgetLedger, LedgerDocument, TaskSpend
from swarm_runtime.llm.pricing import load_price_table
from swarm_runtime.llm.provider import Completion
from swarm_runtime.llm.rate_limit import TokenBucket
from swarm_runtime.llm.wrapper import SecureAPIWrapper
from swarm_runtime.store.state_files import Workspace, atomic_write_bytes

NAME = "6 budget reservation"
TARGET_MS = 2.0
PRICED_MODEL = "gpt-4o-mini"
FREE_MODEL = "free-local-model"


class InstantProvider:
    """Answers at once, so only the wrapper's own work is timed."""

    name = "instant"
    is_local = True

    def model_for(self, requested: str) -> str:
        return requested

    def complete(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int,
        temperature: float,
        system: str | None = None,
    ) -> Completion:
        return Completion(
            text="ok", model=model, prompt_tokens=12, completion_tokens=8, usage_reported=True
        )


def ledger_ms(workspace: Workspace, calls: int, remembered: int = 0) -> float:
    ledger = BudgetLedger(workspace, limit=1_000_000.0)
    if remembered:
        spent = {f"earlier-task-{n:06d}": 0.0011 for n in range(remembered)}
        document = LedgerDocument(spent=0.0011 * remembered, tasks=TaskSpend(spent=spent))
        workspace.budget_ledger_path.write_text(document.model_dump_json())
    samples = []
    for number in range(calls):
        start = time.perf_counter()
        reservation = ledger.reserve(0.002, task_id=f"task-{number}")
        ledger.settle(reservation, 0.0011)
        samples.append((time.perf_counter() - start) * 1000)
    return median(samples)


def floor_ms(workspace: Workspace, calls: int) -> float:
    """Two atomic writes of a ledger-sized file: what reserve + settle cannot go below
    while each stays a durable rename (fsync the file, rename, fsync the folder)."""
    path = workspace.budget_ledger_path.with_name("floor.json")
    data = workspace.budget_ledger_path.read_bytes()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        atomic_write_bytes(path, data)
        atomic_write_bytes(path, data)
        samples.append((time.perf_counter() - start) * 1000)
    return median(samples)


def wrapper_ms(workspace: Workspace, calls: int) -> tuple[float, float]:
    """Median call time with a priced model and with a free one, interleaved."""
    wrapper = SecureAPIWrapper(
        provider=InstantProvider(),
        ledger=BudgetLedger(workspace, limit=1_000_000.0),
        limiter=TokenBucket(10_000_000),
        prices=load_price_table(None),
        workspace=workspace,
        default_model=PRICED_MODEL,
    )
    priced, free = [], []
    for number in range(calls):
        for model, samples in ((PRICED_MODEL, priced), (FREE_MODEL, free)):
            start = time.perf_counter()
            wrapper.call_llm(
                "Summarise the queue design in one line.",
                model=model,
                max_tokens=256,
                temperature=0.2,
                task_id=f"task-{number}",
            )
            samples.append((time.perf_counter() - start) * 1000)
    return median(priced), median(free)


def run(quick: bool = False, calls: int | None = None) -> list[Figure]:
    calls = calls or (100 if quick else 400)
    with tempfile.TemporaryDirectory() as folder:
        workspace = Workspace(Path(folder))
        workspace.ensure_layout()
        alone = ledger_ms(workspace, calls)
        floor = floor_ms(workspace, calls)
    with tempfile.TemporaryDirectory() as folder:
        workspace = Workspace(Path(folder))
        workspace.ensure_layout()
        full = ledger_ms(workspace, calls, remembered=TASK_SPEND_RETAIN)
    with tempfile.TemporaryDirectory() as folder:
        workspace = Workspace(Path(folder))
        workspace.ensure_layout()
        priced, free = wrapper_ms(workspace, calls)
    overhead = priced - free
    print(
        f"  ledger alone {alone:.2f} ms (two bare atomic writes {floor:.2f} ms; "
        f"{full:.2f} ms remembering {TASK_SPEND_RETAIN} tasks); "
        f"wrapper call priced {priced:.2f} ms, free {free:.2f} ms ({calls} calls each)",
        flush=True,
    )
    return [
        Figure(
            NAME,
            "reserve + settle, ledger alone",
            f"{alone:.2f} ms",
            f"<= {TARGET_MS:.0f} ms",
            alone <= TARGET_MS,
        ),
        Figure(NAME, "floor: two durable writes of the file", f"{floor:.2f} ms"),
        Figure(
            NAME,
            f"reserve + settle, {TASK_SPEND_RETAIN} tasks' spend kept",
            f"{full:.2f} ms",
            f"<= {TARGET_MS:.0f} ms",
            full <= TARGET_MS,
        ),
        Figure(
            NAME,
            "per call through SecureAPIWrapper",
            f"{overhead:.2f} ms ({priced:.2f} priced vs {free:.2f} free)",
            f"<= {TARGET_MS:.0f} ms",
            overhead <= TARGET_MS,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, help="calls to take the median of (default 400)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(run(args.quick, args.calls))


if __name__ == "__main__":
    main()
