"""The fleet read model (queue.fleet): every host's workers, tasks and pause, and why a
pinned task waits; and where the panel and `/status` show it.

Regression: with many hosts on one database the panel listed worker ids with no host,
and a task pinned to a stopped host sat pending with nothing saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import write_queue
from flask import Flask
from test_control_panel import PanelClient

from swarm_runtime.api.app import create_app as create_api
from swarm_runtime.contract import Lease, Task, WorkerPresence
from swarm_runtime.panel.app import create_app as create_panel
from swarm_runtime.queue.fleet import fleet_of, task_host, waiting_for
from swarm_runtime.queue.presence import PresenceBeacon
from swarm_runtime.queue.store import WorkerIdentity
from swarm_runtime.settings import Settings
from swarm_runtime.store.pause import PauseState, read_pause, set_pause
from swarm_runtime.store.state_files import Workspace

NOW = 1_000_000.0


def present(worker_id: str, host: str, *labels: str, paused: bool = False) -> WorkerPresence:
    return WorkerPresence(
        worker_id=worker_id,
        pid=100,
        host=host,
        labels=list(labels),
        started_at="2026-01-01T00:00:00+00:00",
        last_seen=NOW,
        paused=paused,
    )


def leased(task_id: str, worker_id: str, host: str, **fields: Any) -> Task:
    lease = Lease(worker_id=worker_id, pid=7, host=host, claimed_at=NOW, expires_at=NOW + 30)
    return Task(id=task_id, prompt="p", status="in_progress", lease=lease, **fields)


def pending(task_id: str, **fields: Any) -> Task:
    return Task(id=task_id, prompt="p", **fields)


def paused_host(host: str) -> PauseState:
    return PauseState(hosts={host: {"paused": True, "by": "ops", "reason": "disk"}})


# --- fleet_of -------------------------------------------------------------------------


def test_each_host_lists_its_workers_with_what_they_hold_and_its_tasks() -> None:
    workers = [present("a1", "host-a", "gpu"), present("a2", "host-a"), present("b1", "host-b")]
    tasks = [
        leased("t1", "a1", "host-a"),
        pending("p1", host="host-b"),
        pending("p2", host="host-b"),
        pending("done", host="host-b", status="completed"),
    ]
    fleet = fleet_of(workers, tasks, paused_host("host-b"), NOW)
    a, b = fleet.hosts
    assert (a.host, a.running, a.pinned_waiting, a.paused) == ("host-a", 1, 0, False)
    assert [(w.worker_id, w.state, w.task_id, w.labels) for w in a.workers] == [
        ("a1", "busy", "t1", ["gpu"]),
        ("a2", "idle", None, []),
    ]
    assert (b.host, b.running, b.pinned_waiting, b.paused, b.pause_scope) == (
        "host-b",
        0,
        2,
        True,
        "host",
    )
    assert b.pause is not None and (b.pause.by, b.pause.reason) == ("ops", "disk")
    assert [(w.worker_id, w.state, w.paused) for w in b.workers] == [("b1", "paused", True)]
    assert fleet.paused is False


def test_a_lease_without_presence_is_a_busy_worker_and_a_paused_host_without_any_shows() -> None:
    fleet = fleet_of([], [leased("t1", "old-worker", "host-a")], paused_host("host-c"), NOW)
    assert [(h.host, [w.worker_id for w in h.workers]) for h in fleet.hosts] == [
        ("host-a", ["old-worker"]),
        ("host-c", []),
    ]
    [holder] = fleet.hosts[0].workers
    assert (holder.state, holder.task_id, holder.pid, holder.last_seen) == ("busy", "t1", 7, None)


def test_the_fleets_pause_covers_every_host_and_an_unreadable_switch_pauses_all() -> None:
    workers = [present("a1", "host-a"), present("b1", "host-b")]
    fleet = fleet_of(workers, [], PauseState(paused=True, by="cli"), NOW)
    assert fleet.paused and all(h.paused and h.pause_scope == "fleet" for h in fleet.hosts)
    unreadable = fleet_of(workers, [], None, NOW, "pause.json is broken")
    assert unreadable.paused and unreadable.pause_error == "pause.json is broken"
    assert {w.state for h in unreadable.hosts for w in h.workers} == {"paused"}


# --- waiting_for ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "workers", "pause", "reason"),
    [
        (pending("free"), [], PauseState(), None),
        (pending("p", host="host-a"), [present("a1", "host-a")], PauseState(), None),
        (
            pending("p", host="host-a"),
            [present("b1", "host-b")],
            PauseState(),
            "waiting for a worker on host 'host-a' (none alive)",
        ),
        (
            pending("p", worker_labels=["gpu"]),
            [present("b1", "host-b")],
            PauseState(),
            "waiting for a worker serving label 'gpu'",
        ),
        (
            pending("p", worker_labels=["gpu", "big"]),
            [],
            PauseState(),
            "waiting for a worker serving labels 'gpu', 'big' (no worker alive)",
        ),
        (
            pending("p", host="host-a", worker_labels=["gpu"]),
            [present("a1", "host-a"), present("a2", "host-a", "ssd")],
            PauseState(),
            "waiting for a worker on host 'host-a' serving label 'gpu' "
            "(none of its 2 live workers serves it)",
        ),
        (
            pending("p", host="host-a"),
            [present("a1", "host-a")],
            paused_host("host-a"),
            "waiting for a worker on host 'host-a' (host 'host-a' paused)",
        ),
        (pending("p", host="host-a"), [present("a1", "host-a")], PauseState(paused=True), None),
        (
            pending("p", host="host-a", status="completed"),
            [],
            PauseState(),
            None,
        ),
    ],
)
def test_a_pinned_task_says_what_it_waits_for(
    task: Task, workers: list[WorkerPresence], pause: PauseState, reason: str | None
) -> None:
    assert waiting_for(task, workers, pause) == reason


def test_a_tasks_host_is_its_pin_else_its_lease_holders() -> None:
    assert task_host(pending("p", host="host-a")) == "host-a"
    assert task_host(leased("t", "w", "host-b")) == "host-b"
    assert task_host(pending("p")) is None


# --- the panel's read models and actions, and /status -----------------------------------


@pytest.fixture
def panel_app(settings: Settings) -> Iterator[Flask]:
    built = create_panel(settings)
    yield built
    built.extensions["panel"].close()


def two_hosts(workspace: Workspace) -> None:
    for worker_id, host in (("a1", "host-a"), ("b1", "host-b"), ("b2", "host-b")):
        PresenceBeacon(workspace, WorkerIdentity(worker_id, host=host)).announce(paused=False)


def test_the_panel_shows_every_hosts_workers_and_why_a_pinned_task_waits(
    panel_app: Flask, workspace: Workspace
) -> None:
    two_hosts(workspace)
    write_queue(
        workspace,
        [
            {"id": "free", "prompt": "p"},
            {"id": "on-c", "prompt": "p", "host": "host-c"},
            {"id": "on-b", "prompt": "p", "host": "host-b"},
        ],
        "http://127.0.0.1:9",
    )
    client = PanelClient(panel_app)
    fleet = client.get("/api/fleet").get_json()
    assert [(h["host"], len(h["workers"]), h["pinned_waiting"]) for h in fleet["hosts"]] == [
        ("host-a", 1, 0),
        ("host-b", 2, 1),
        ("host-c", 0, 1),
    ]
    rows = {r["id"]: r for r in client.get("/api/tasks").get_json()["tasks"]}
    assert rows["on-c"]["waiting_for"] == "waiting for a worker on host 'host-c' (none alive)"
    assert rows["on-c"]["host"] == "host-c"
    assert rows["on-b"]["waiting_for"] is None and rows["free"]["waiting_for"] is None
    narrowed = client.get("/api/tasks?host=host-b").get_json()["tasks"]
    assert [r["id"] for r in narrowed] == ["on-b"]
    detail = client.get("/api/tasks/on-c").get_json()
    assert detail["waiting_for"] == rows["on-c"]["waiting_for"]
    assert detail["host"] == "host-c"


def test_the_panel_pauses_and_resumes_one_host(panel_app: Flask, workspace: Workspace) -> None:
    client = PanelClient(panel_app)
    reply = client.post("/api/pause", {"host": "host-b", "reason": "disk"})
    assert reply.status_code == 200 and reply.get_json()["host"] == "host-b"
    client.post("/api/pause", {"host": "host-a"})
    state = read_pause(workspace)
    assert (state.paused, state.paused_hosts()) == (False, ["host-a", "host-b"])
    assert state.hosts["host-b"].reason == "disk"
    summary = client.get("/api/summary").get_json()
    assert summary["pause"]["hosts"]["host-b"]["paused"] is True
    assert client.post("/api/resume", {"host": "host-b"}).status_code == 200
    assert read_pause(workspace).paused_hosts() == ["host-a"]
    refused = client.post("/api/pause", {"host": "no such host!"})
    assert refused.status_code == 400 and refused.get_json()["field"] == "host"


def test_status_gives_the_fleet_by_host(settings: Settings, workspace: Workspace) -> None:
    two_hosts(workspace)
    write_queue(workspace, [{"id": "on-c", "prompt": "p", "host": "host-c"}], "http://x:1")
    set_pause(workspace, True, by="ops", host="host-c")
    client = create_api(settings).test_client()
    reply = client.get("/status", base_url=f"http://127.0.0.1:{settings.api_port}")
    body = reply.get_json()
    assert body["tasks"] == 1 and "workers_with_live_leases" in body
    hosts = {h["host"]: h for h in body["fleet"]["hosts"]}
    assert sorted(hosts) == ["host-a", "host-b", "host-c"]
    assert [w["worker_id"] for w in hosts["host-b"]["workers"]] == ["b1", "b2"]
    assert hosts["host-c"]["paused"] and hosts["host-c"]["pinned_waiting"] == 1
