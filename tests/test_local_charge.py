"""Local commands cost something, in the units of an llm call, so rewards for finishing
under budget cannot be farmed with `echo`; and the API reports each charge exactly."""

from __future__ import annotations

import pytest
import requests
from conftest import RunningProcess
from fake_llm_server import FakeLLMServer
from test_swarm_api import cycle

from swarm_runtime.api.charges import local_charge
from swarm_runtime.contract import TOKEN_HEADER
from swarm_runtime.phases.rewards import reward_tokens
from swarm_runtime.store.state_files import Workspace


@pytest.mark.parametrize(
    "seconds, intensity, low, high, expected",
    [
        (2.0, "medium", None, None, 0.02),
        (2.0, "low", None, None, 0.01),
        (2.0, "high", None, None, 0.03),
        (2.0, None, None, None, 0.02),  # intensity defaults to medium
        (0.01, "medium", 0.05, 0.10, 0.05),  # the task's minimum is the floor
        (60.0, "high", 0.05, 0.10, 0.10),  # and its maximum the ceiling
        (-1.0, "medium", None, None, 0.0),  # a clock step back charges nothing
    ],
)
def test_local_charge_is_run_time_scaled_and_held_in_the_budget_range(
    seconds: float, intensity: str | None, low: float | None, high: float | None, expected: float
) -> None:
    assert local_charge(seconds, intensity, low, high) == pytest.approx(expected)  # type: ignore[arg-type]


def test_an_approved_echo_no_longer_earns_the_most_tokens() -> None:
    charged = local_charge(0.004, "medium", 0.05, 0.10)
    assert reward_tokens(0.10, charged, 1.0) < reward_tokens(0.10, 0.0, 1.0) == 10


def test_a_tiny_llm_cost_is_reported_exactly_not_rounded(
    api_url: str, workspace: Workspace, provider: FakeLLMServer
) -> None:
    """One token in and one out of gpt-4o-mini cost $0.00000075, once reported as
    $0.000001 (+33 %): a sum of budget_used must reconcile with the ledger."""
    provider.usage = (1, 1)
    reply = requests.post(
        f"{api_url}/cycle",
        json={"prompt": "hi", "task_id": "tiny"},
        headers={TOKEN_HEADER: workspace.token_path.read_text().strip()},
        timeout=30,
    ).json()
    assert reply["budget_used"] == pytest.approx((0.15 + 0.60) / 1e6, rel=1e-9)


def test_the_api_charges_a_local_command_by_the_rule(
    api: RunningProcess, workspace: Workspace
) -> None:
    body = {"task": "echo hi", "mode": "local", "min_budget": 0.05, "max_budget": 0.10}
    reply = cycle(api, workspace, {**body, "intensity": "high"}).json()
    assert reply["status"] == "completed" and reply["budget_used"] == 0.05
    unbounded = cycle(api, workspace, {"task": "echo hi", "mode": "local"}).json()
    assert 0 < unbounded["budget_used"] < 0.01
