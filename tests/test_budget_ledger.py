from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from swarm_runtime.errors import GlobalBudgetExceeded, StateFileError, TaskBudgetExceeded
from swarm_runtime.llm import budget
from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.store.state_files import Workspace

REPO_ROOT = Path(__file__).resolve().parents[1]

# Reserves and settles until refused; waits for a line on stdin first so that all
# children start spending at the same moment.
SPENDER = """
import sys
from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.errors import GlobalBudgetExceeded
from swarm_runtime.store.state_files import Workspace
root, limit, amount = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ledger = BudgetLedger(Workspace(root), limit)
print("ready", flush=True)
sys.stdin.readline()
settled = 0
while True:
    try:
        reservation = ledger.reserve(amount, task_id="child")
    except GlobalBudgetExceeded:
        break
    ledger.settle(reservation, amount)
    settled += 1
print(settled, flush=True)
"""

# Reserves (as sent to the provider, or not yet), says so, and exits without settling once
# told to: a crash mid-call.
HOLDER = """
import os, sys
from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.store.state_files import Workspace
ledger = BudgetLedger(Workspace(sys.argv[1]), float(sys.argv[2]))
ledger.admit(float(sys.argv[3]), task_id="held", sent=sys.argv[4] == "sent")
print("held", flush=True)
sys.stdin.readline()
os._exit(1)
"""


def python_child(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def stop(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def test_reserve_settle_and_refund(workspace: Workspace) -> None:
    ledger = BudgetLedger(workspace, 1.0)
    first = ledger.reserve(0.25, task_id="a")
    second = ledger.reserve(0.5, task_id="b")
    assert ledger.snapshot().reserved == pytest.approx(0.75)
    ledger.settle(first, 0.125)
    ledger.refund(second)
    snapshot = ledger.snapshot()
    assert (snapshot.spent, snapshot.reserved) == (0.125, 0.0)
    assert snapshot.remaining == pytest.approx(0.875)


def test_refuses_a_reservation_that_would_cross_the_limit(workspace: Workspace) -> None:
    ledger = BudgetLedger(workspace, 1.0)
    ledger.settle(ledger.reserve(0.5, task_id=None), 0.5)
    ledger.reserve(0.25, task_id=None)
    with pytest.raises(GlobalBudgetExceeded) as caught:
        ledger.reserve(0.375, task_id=None)
    message = str(caught.value)
    assert "limit $1.000000" in message
    assert "spent $0.500000" in message
    assert "reserved $0.250000" in message
    assert ledger.snapshot().reserved == 0.25


def test_exactly_reaching_the_limit_is_allowed(workspace: Workspace) -> None:
    ledger = BudgetLedger(workspace, 0.5)
    ledger.reserve(0.5, task_id=None)
    with pytest.raises(GlobalBudgetExceeded):
        ledger.reserve(0.001, task_id=None)


def test_spend_survives_a_restart(tmp_path: Path) -> None:
    """The old wrapper kept the budget in memory, so every restart granted it afresh."""
    ledger = BudgetLedger(Workspace(tmp_path), 1.0)
    ledger.settle(ledger.reserve(0.75, task_id=None), 0.75)
    restarted = BudgetLedger(Workspace(tmp_path), 1.0)
    assert restarted.snapshot().spent == 0.75
    with pytest.raises(GlobalBudgetExceeded):
        restarted.reserve(0.5, task_id=None)


def test_settling_a_vanished_reservation_still_counts_the_spend(workspace: Workspace) -> None:
    ledger = BudgetLedger(workspace, 1.0)
    ledger.settle("no-such-reservation", 0.25)
    assert ledger.snapshot().spent == 0.25


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{broken", "invalid JSON"),
        ('{"version": 1, "spent": "lots", "reservations": {}}', "spent"),
        ('{"version": 2, "spent": 0, "reservations": {}}', "version"),
        ('{"version": 1, "spent": 0, "reservations": {"r": {"amount": 1}}}', "reservations.r.pid"),
    ],
)
def test_malformed_ledger_is_reported_and_never_overwritten(
    workspace: Workspace, content: str, expected: str
) -> None:
    ledger = BudgetLedger(workspace, 1.0)
    workspace.budget_ledger_path.write_text(content)
    for operation in (
        lambda: ledger.reserve(0.1, task_id=None),
        lambda: ledger.settle("r", 0.1),
        ledger.snapshot,
    ):
        with pytest.raises(StateFileError) as caught:
            operation()
        assert str(workspace.budget_ledger_path) in str(caught.value)
        assert expected in str(caught.value)
    assert workspace.budget_ledger_path.read_text() == content


def test_ledger_file_is_the_documented_shape(workspace: Workspace) -> None:
    ledger = BudgetLedger(workspace, 1.0)
    reservation = ledger.reserve(0.5, task_id="t1")
    document = json.loads(workspace.budget_ledger_path.read_text())
    assert document["version"] == 1
    assert document["spent"] == 0
    held = document["reservations"][reservation]
    assert held["amount"] == 0.5
    assert held["task_id"] == "t1"
    assert {"pid", "created_at"} <= held.keys()


def test_no_overshoot_across_threads(workspace: Workspace) -> None:
    ledger = BudgetLedger(workspace, 2.0)
    amount = 1 / 16
    start = threading.Barrier(8)
    settled: list[int] = []

    def spend() -> None:
        count = 0
        start.wait()
        while True:
            try:
                reservation = ledger.reserve(amount, task_id=None)
            except GlobalBudgetExceeded:
                break
            ledger.settle(reservation, amount)
            count += 1
        settled.append(count)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    snapshot = ledger.snapshot()
    assert sum(settled) == 32
    assert snapshot.spent == 2.0
    assert snapshot.reserved == 0


def test_no_overshoot_and_no_lost_update_across_processes(workspace: Workspace) -> None:
    limit, amount = 4.0, 1 / 16
    BudgetLedger(workspace, limit)
    children = [python_child(SPENDER, workspace.root, limit, amount) for _ in range(4)]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=60)[0] for child in children]
    finally:
        for child in children:
            stop(child)
    assert [child.returncode for child in children] == [0, 0, 0, 0]
    settled = [int(output.strip()) for output in outputs]
    snapshot = BudgetLedger(workspace, limit).snapshot()
    assert snapshot.spent <= limit
    assert snapshot.spent == sum(settled) * amount
    assert sum(settled) == 64
    assert snapshot.reserved == 0


def held_by_a_process_that_dies(workspace: Workspace, amount: float, state: str) -> None:
    """A live holder keeps its hold (a reservation past it is refused); then it dies."""
    holder = python_child(HOLDER, workspace.root, 1.0, amount, state)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GlobalBudgetExceeded):
            BudgetLedger(workspace, 1.0).reserve(0.5, task_id=None)
        holder.stdin.write("exit\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 1
    finally:
        stop(holder)


def test_a_dead_process_hold_that_was_never_sent_is_released(workspace: Workspace) -> None:
    """A server that crashed before calling must not pin its reservation forever."""
    held_by_a_process_that_dies(workspace, 0.75, "unsent")
    ledger = BudgetLedger(workspace, 1.0)
    assert ledger.snapshot().reserved == 0.75
    admission = ledger.admit(0.5, task_id=None)
    assert admission.unsettled == ()
    assert (ledger.snapshot().spent, ledger.snapshot().reserved) == (0, 0.5)


def test_a_dead_process_hold_that_may_have_been_billed_is_charged_in_full(
    workspace: Workspace,
) -> None:
    """Refunding it let a retry pay the provider again while the ledger counted one call."""
    held_by_a_process_that_dies(workspace, 0.75, "sent")
    ledger = BudgetLedger(workspace, 1.0)
    admission = ledger.admit(0.5, task_id=None)
    assert isinstance(admission.refusal, GlobalBudgetExceeded), "spent 0.75 + 0.5 > 1.0"
    [unsettled] = admission.unsettled
    assert (unsettled.reservation.task_id, unsettled.reservation.amount) == ("held", 0.75)
    document = json.loads(workspace.budget_ledger_path.read_text())
    assert (document["spent"], document["reservations"]) == (0.75, {})
    assert document["tasks"]["spent"] == {"held": 0.75}
    assert ledger.admit(0.25, task_id=None).unsettled == (), "charged twice"


def test_a_hold_written_before_sent_was_recorded_counts_as_sent(workspace: Workspace) -> None:
    ledger = BudgetLedger(workspace, 1.0)
    # No pid above pid_max (2**22 at most) is ever alive.
    hold = {"amount": 0.5, "pid": 2**22 + 1, "host": None, "created_at": "2026-01-01T00:00:00"}
    workspace.budget_ledger_path.write_text(
        json.dumps({"version": 1, "spent": 0.0, "reservations": {"old": hold}})
    )
    [unsettled] = ledger.admit(0.25, task_id=None).unsettled
    assert unsettled.reservation_id == "old"
    assert ledger.snapshot().spent == 0.5


def test_a_task_is_refused_while_its_spend_and_holds_reach_its_max_budget(
    workspace: Workspace,
) -> None:
    ledger = BudgetLedger(workspace, 10.0)
    first = ledger.reserve(0.5, task_id="t", task_limit=1.0)
    with pytest.raises(TaskBudgetExceeded):
        ledger.reserve(0.75, task_id="t", task_limit=1.0)
    ledger.reserve(0.75, task_id="other", task_limit=1.0)
    ledger.settle(first, 1.5)  # the provider reported more than the hold
    with pytest.raises(TaskBudgetExceeded) as caught:
        ledger.reserve(0.001, task_id="t", task_limit=1.0)
    assert caught.value.estimate == pytest.approx(1.501)
    assert ledger.snapshot().spent == 1.5


def test_the_ledger_remembers_the_spend_of_a_bounded_number_of_tasks(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget, "TASK_SPEND_RETAIN", 3)
    ledger = BudgetLedger(workspace, 10.0)
    for task in ("a", "b", "c", "a", "d"):
        ledger.settle(ledger.reserve(0.25, task_id=task), 0.25)
    document = json.loads(workspace.budget_ledger_path.read_text())
    assert list(document["tasks"]["spent"]) == ["c", "a", "d"]
    assert document["tasks"]["spent"]["a"] == 0.5


# --- calls and spend by model -------------------------------------------------------------

# No pid above pid_max (2**22 at most) is ever alive.
DEAD_PID = 2**22 + 1


def models_of(workspace: Workspace) -> dict[str, dict[str, float]]:
    models: dict[str, dict[str, float]] = json.loads(workspace.budget_ledger_path.read_text())[
        "models"
    ]
    return models


def test_settled_calls_are_counted_by_model_and_a_refund_counts_nothing(
    workspace: Workspace,
) -> None:
    ledger = BudgetLedger(workspace, 10.0)
    for model, cost in (("model-a", 0.25), ("model-a", 0.5), ("model-b", 1.5)):
        held = ledger.admit(1.0, task_id="t", model=model).granted()
        ledger.settle(held, cost)  # 1.5: the provider reported more than the hold
    ledger.refund(ledger.admit(1.0, task_id="t", model="model-c").granted())
    ledger.settle(ledger.reserve(1.0, task_id=None), 0.125)  # a hold naming no model
    ledger.settle("vanished", 0.0625)
    expected = {
        "model-a": {"calls": 2, "spent": 0.75},
        "model-b": {"calls": 1, "spent": 1.5},
        "unknown": {"calls": 2, "spent": 0.1875},
    }
    assert models_of(workspace) == expected
    snapshot = ledger.snapshot()
    assert {model: spent.model_dump() for model, spent in snapshot.models.items()} == expected
    assert sum(spent.spent for spent in snapshot.models.values()) == snapshot.spent


@pytest.mark.parametrize(
    ("sent", "counted"),
    [(True, {"model-x": {"calls": 1, "spent": 0.5}}), (False, {})],
    ids=["charged-in-full", "released-unsent"],
)
def test_a_dead_hold_counts_for_its_model_only_when_charged(
    workspace: Workspace, sent: bool, counted: dict[str, dict[str, float]]
) -> None:
    hold = {"amount": 0.5, "pid": DEAD_PID, "host": None, "created_at": "2026-01-01T00:00:00"}
    held = {"old": hold | {"model": "model-x", "sent": sent}}
    ledger = BudgetLedger(workspace, 1.0)
    workspace.budget_ledger_path.write_text(json.dumps({"spent": 0.0, "reservations": held}))
    ledger.admit(0.25, task_id=None, model="model-y")
    assert models_of(workspace) == counted


def test_a_ledger_written_before_models_were_counted_still_reads(workspace: Workspace) -> None:
    """The field is new: a ledger without it must not stop every paid call."""
    old = {"version": 1, "spent": 0.5, "reservations": {}, "tasks": {"spent": {"t": 0.5}}}
    ledger = BudgetLedger(workspace, 1.0)
    workspace.budget_ledger_path.write_text(json.dumps(old))
    assert (ledger.snapshot().spent, dict(ledger.snapshot().models)) == (0.5, {})
    ledger.settle(ledger.admit(0.25, task_id="t", model="model-a").granted(), 0.25)
    assert models_of(workspace) == {"model-a": {"calls": 1, "spent": 0.25}}
    assert ledger.snapshot().spent == 0.75
