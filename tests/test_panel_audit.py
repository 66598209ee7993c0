"""The panel's folds of the audit trails (panel/audit.py), read through /api/spend."""

from __future__ import annotations

import pytest
from test_metrics import BASE, answer, api_wrapper

from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.panel.app import create_app
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace


def test_an_over_run_call_is_spent_and_counted_once(
    settings: Settings, workspace: Workspace
) -> None:
    """Its OVER_RESERVATION line repeats the success line's cost: /api/spend added both,
    counting the call twice."""
    ledger = BudgetLedger(workspace, 100.0)
    wrapper = api_wrapper(workspace, ledger, [answer("model-b", 1000, 50)])
    wrapper.call_llm("hello", model="model-b", max_tokens=4, temperature=0)
    app = create_app(settings)
    try:
        body = app.test_client().get("/api/spend", base_url=BASE).get_json()
    finally:
        app.extensions["panel"].close()
    assert body["events"] == {"OVER_RESERVATION": 1, "API_CALL_SUCCESS": 1}
    assert body["total_cost"] == pytest.approx(ledger.snapshot().spent) == 32.0
    [point] = body["points"]
    assert (point["cost"], point["calls"]) == (32.0, 1)
    assert body["budget"]["by_model"] == {"model-b": {"calls": 1, "spent": 32.0}}
