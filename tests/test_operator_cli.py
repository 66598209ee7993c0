"""The operator's commands (`worker.py <command>`, `swarm <command>`): each run as a real
process against a workspace, in text and with --json, through the same store, validation
and `operator_action` events as the panel.

Regression: the terminal could only `add`, and following the log meant `tail -f` on
lines of several hundred characters of JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from conftest import (
    RunningProcess,
    child_env,
    read_events,
    read_queue,
    run_worker,
    wait_until,
    write_queue,
)
from helpers.event_writer import LogWriter

from swarm_runtime.cli import swarm_main
from swarm_runtime.contract import CLI_WORKER_ID, PANEL_WORKER_ID, OperatorEvent, Status
from swarm_runtime.operator.events import EventFilter, event_line
from swarm_runtime.operator.text import clean
from swarm_runtime.panel.app import create_app
from swarm_runtime.panel.guards import CSRF_HEADER
from swarm_runtime.queue.presence import PresenceBeacon
from swarm_runtime.queue.store import WorkerIdentity
from swarm_runtime.settings import Settings
from swarm_runtime.store.event_lines import Envelope
from swarm_runtime.store.pause import read_pause
from swarm_runtime.store.state_files import Workspace

UNREACHABLE = "http://127.0.0.1:9"


def swarm(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    """`python worker.py <args>` from the repository root, as an operator runs it."""
    return run_worker(workspace, *args, timeout=30)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(result: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    """One `error: ...` line on stderr, never a traceback."""
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr


def task(task_id: str, status: str = "pending", **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "prompt": f"prompt of {task_id}", "status": status, **fields}


def failed(task_id: str) -> dict[str, Any]:
    return task(task_id, "failed", attempts=1, last_error="boom")


# --- status -----------------------------------------------------------------------------


def test_status_shows_the_api_workers_pause_budget_and_counts(
    api: RunningProcess, workspace: Workspace
) -> None:
    assert api.url is not None
    write_queue(workspace, [task("a"), failed("b")], api.url)
    PresenceBeacon(workspace, WorkerIdentity("w-idle")).announce(paused=False)
    report = as_json(swarm(workspace, "status", "--json"))
    assert report["api"]["reachable"] is True and report["api"]["ok"] is True
    assert [w["worker_id"] for w in report["workers"]] == ["w-idle"]
    assert report["pause"]["paused"] is False
    assert report["budget"]["limit"] == 5.0 and report["budget"]["error"] is None
    assert report["queue"]["by_status"] == {"pending": 1, "failed": 1}
    text = swarm(workspace, "status").stdout
    assert f"{api.url} reachable" in text
    assert "1 alive: w-idle (idle)" in text
    assert "pause    running" in text and "2 in the queue (pending 1, failed 1)" in text


def test_status_reports_an_api_that_is_down_and_a_pause(workspace: Workspace) -> None:
    write_queue(workspace, [task("a")], UNREACHABLE)
    assert swarm(workspace, "pause", "--reason", "disk full").returncode == 0
    report = as_json(swarm(workspace, "status", "--json"))
    assert report["api"]["reachable"] is False and "no answer" in report["api"]["error"]
    assert report["pause"]["paused"] is True and report["pause"]["reason"] == "disk full"
    assert report["workers"] == []
    text = swarm(workspace, "status").stdout
    assert "unreachable" in text and f"PAUSED by {CLI_WORKER_ID}" in text and "disk full" in text


def test_a_malformed_queue_is_one_error_line_and_exit_2(workspace: Workspace) -> None:
    workspace.queue_path.write_text('{"tasks": [,]}')
    for command in ("tasks", "show", "requeue-failed"):
        args = [command, "x"] if command == "show" else [command]
        refused(swarm(workspace, *args), 2, "queue.json is malformed")
    assert "queue.json" in as_json(swarm(workspace, "status", "--json"))["queue"]["error"]


# --- tasks and show ---------------------------------------------------------------------


@pytest.fixture
def queue(workspace: Workspace) -> Workspace:
    write_queue(
        workspace,
        [
            task("poem-1", created_at="2030-01-01T00:00:01+00:00", prompt="write a poem"),
            task("ls-1", created_at="2030-01-01T00:00:02+00:00", mode="local", command="ls"),
            {**failed("poem-2"), "created_at": "2030-01-01T00:00:03+00:00"},
            task("other", created_at="2030-01-01T00:00:04+00:00", prompt="sum numbers"),
        ],
        UNREACHABLE,
    )
    return workspace


@pytest.mark.parametrize(
    ("args", "ids", "total"),
    [
        ([], ["other", "poem-2", "ls-1", "poem-1"], 4),
        (["--status", "failed"], ["poem-2"], 1),
        (["--mode", "local"], ["ls-1"], 1),
        (["--search", "POEM"], ["poem-2", "poem-1"], 2),
        (["--id", "-1"], ["ls-1", "poem-1"], 2),
        (["--limit", "2"], ["other", "poem-2"], 4),
        (["--limit", "0", "--status", "pending", "--search", "poem"], ["poem-1"], 1),
    ],
)
def test_tasks_lists_newest_first_with_filters(
    queue: Workspace, args: list[str], ids: list[str], total: int
) -> None:
    listing = as_json(swarm(queue, "tasks", "--json", *args))
    assert [row["id"] for row in listing["tasks"]] == ids
    assert listing["total"] == total and listing["shown"] == len(ids)
    assert listing["counts"] == {"pending": 3, "failed": 1}


def test_tasks_prints_a_table_and_says_when_rows_are_left_out(queue: Workspace) -> None:
    lines = swarm(queue, "tasks", "--limit", "1").stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "MODE", "TRIES", "UPDATED", "HEADLINE"]
    assert lines[1].split()[:4] == ["other", "pending", "llm", "0"]
    assert "(1 of 4 shown; --limit 0 shows all)" in lines
    assert lines[-1] == "in the queue: pending 3, failed 1"
    assert swarm(queue, "tasks", "--status", "sleeping").returncode == 2


def test_show_gives_the_task_and_its_timeline(queue: Workspace) -> None:
    log = LogWriter(queue, "w1")
    log.emit("poem-2", Status.IN_PROGRESS, attempt=1, mode="llm")
    log.emit("other", Status.IN_PROGRESS)
    log.emit("poem-2", Status.FAILED, errors="provider said no\n\x1b[31mred")
    detail = as_json(swarm(queue, "show", "poem-2", "--json"))
    assert detail["task"]["status"] == "failed" and detail["summary"]["actions"] == ["requeue"]
    assert [e["status"] for e in detail["timeline"]] == ["in_progress", "failed"]
    assert detail["timeline_total"] == 2
    text = swarm(queue, "show", "poem-2").stdout
    assert "status     failed (attempts 1)" in text and "actions    requeue" in text
    assert "events     2" in text
    assert "attempt 1 (llm)" in text
    assert "error: provider said no \\x1b[31mred" in text and "\x1b" not in text


def test_show_knows_a_task_only_the_log_has_and_refuses_an_unknown_one(
    queue: Workspace,
) -> None:
    LogWriter(queue, "w1").emit("gone", Status.COMPLETED)
    detail = as_json(swarm(queue, "show", "gone", "--json"))
    assert detail["task"] is None and detail["timeline_total"] == 1
    assert "known only from the log" in swarm(queue, "show", "gone").stdout
    refused(swarm(queue, "show", "nope"), 2, "no task with id 'nope'")


# --- actions ----------------------------------------------------------------------------


def logged_actions(workspace: Workspace) -> list[tuple[str, str, str, str]]:
    return [
        (e["task_id"], e["status"], e["operator_action"], e["worker_id"])
        for e in read_events(workspace)
    ]


def test_requeue_cancel_and_requeue_failed_change_the_queue_and_log_it(
    workspace: Workspace,
) -> None:
    write_queue(workspace, [failed("f1"), failed("f2"), failed("f3"), task("p")], UNREACHABLE)
    requeued = as_json(swarm(workspace, "requeue", "f1", "--json"))
    assert requeued["task"]["status"] == "requeue" and requeued["event_logged"] is True
    assert swarm(workspace, "cancel", "p").stdout == "cancelled task p: now cancelled\n"
    assert as_json(swarm(workspace, "requeue-failed", "--json")) == {
        "requeued": ["f2", "f3"],
        "event_logged": True,
    }
    statuses = {t["id"]: t["status"] for t in read_queue(workspace)["tasks"]}
    assert statuses == {"f1": "requeue", "f2": "requeue", "f3": "requeue", "p": "cancelled"}
    assert logged_actions(workspace) == [
        ("f1", "requeue", "requeue", CLI_WORKER_ID),
        ("p", "cancelled", "cancel", CLI_WORKER_ID),
        ("f2", "requeue", "requeue_failed", CLI_WORKER_ID),
        ("f3", "requeue", "requeue_failed", CLI_WORKER_ID),
    ]
    assert swarm(workspace, "requeue-failed").stdout == "no failed tasks\n"


def test_an_action_the_status_does_not_allow_is_refused_with_exit_1(
    workspace: Workspace,
) -> None:
    write_queue(workspace, [failed("f"), task("p")], UNREACHABLE)
    before = workspace.queue_path.read_bytes()
    refused(swarm(workspace, "cancel", "f"), 1, "cannot cancel task 'f': it is failed")
    refused(swarm(workspace, "requeue", "p"), 1, "cannot requeue task 'p': it is pending")
    refused(swarm(workspace, "requeue", "nope"), 2, "no task with id 'nope'")
    refused(swarm(workspace, "add", "p", "again"), 1, "already in the queue")
    assert workspace.queue_path.read_bytes() == before and read_events(workspace) == []


def test_add_pins_a_task_to_a_host_and_labels_and_refuses_a_bad_name(
    workspace: Workspace,
) -> None:
    added = as_json(
        swarm(
            workspace,
            "add",
            "t",
            "ls",
            "--mode",
            "local",
            "--host",
            "host-a",
            "--worker-labels",
            "gpu, x",
            "--json",
        )
    )
    assert (added["task"]["host"], added["task"]["worker_labels"]) == ("host-a", ["gpu", "x"])
    refused(swarm(workspace, "add", "u", "p", "--host", "two words"), 2, "host 'two words'")


def test_add_logs_the_same_event_as_the_panel(workspace: Workspace, settings: Settings) -> None:
    """Same store, same validation, same `operator_action` event; only the worker id differs."""
    write_queue(workspace, [], UNREACHABLE)
    added = as_json(swarm(workspace, "add", "from-cli", "write a haiku", "--json"))
    assert added["task"]["id"] == "from-cli" and added["warnings"] == []
    app = create_app(settings)
    reply = app.test_client().post(
        "/api/tasks",
        base_url="http://127.0.0.1:8421",
        json={"id": "from-panel", "prompt": "write a haiku"},
        headers={CSRF_HEADER: app.extensions["panel"].csrf_token},
    )
    app.extensions["panel"].close()
    assert reply.status_code == 201
    cli_event, panel_event = read_events(workspace)
    assert (cli_event["worker_id"], panel_event["worker_id"]) == (CLI_WORKER_ID, PANEL_WORKER_ID)
    assert cli_event.keys() == panel_event.keys()
    assert OperatorEvent.model_validate(cli_event).operator_action == "add"
    stored = {t["id"]: t for t in read_queue(workspace)["tasks"]}
    assert stored["from-cli"].keys() == stored["from-panel"].keys()


def test_pause_and_resume_write_the_switch_workers_read(workspace: Workspace) -> None:
    paused = as_json(swarm(workspace, "pause", "--reason", "upgrade", "--json"))
    assert (paused["paused"], paused["reason"], paused["by"]) == (True, "upgrade", CLI_WORKER_ID)
    assert read_pause(workspace).paused is True
    assert swarm(workspace, "resume").stdout == "running: workers claim tasks again\n"
    assert read_pause(workspace).paused is False


# --- events -----------------------------------------------------------------------------


@pytest.fixture
def history(workspace: Workspace) -> Workspace:
    w1, w2 = LogWriter(workspace, "w1"), LogWriter(workspace, "w2")
    w1.emit("a", Status.IN_PROGRESS, attempt=1, mode="local")
    w2.emit("b", Status.IN_PROGRESS, attempt=1)
    w1.emit("a", Status.COMPLETED, result_summary="x" * 2000)
    w2.emit("b", Status.FAILED, errors="boom")
    return workspace


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], [("a", "in_progress"), ("b", "in_progress"), ("a", "completed"), ("b", "failed")]),
        (["-n", "2"], [("a", "completed"), ("b", "failed")]),
        (["--task", "a"], [("a", "in_progress"), ("a", "completed")]),
        (["--status", "failed"], [("b", "failed")]),
        (["--worker", "w2", "--since", "1"], [("b", "failed")]),
        (["--task", "a", "--worker", "w2"], []),
        (["-n", "0"], []),
    ],
)
def test_events_prints_the_backlog_filtered_one_json_object_a_line(
    history: Workspace, args: list[str], expected: list[tuple[str, str]]
) -> None:
    result = swarm(history, "events", "--json", *args)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["task_id"], e["status"]) for e in events] == expected


def test_events_prints_one_short_readable_line_an_event(history: Workspace) -> None:
    lines = swarm(history, "events").stdout.splitlines()
    assert len(lines) == 4 and all(len(line) < 180 for line in lines)
    first, _, completed, failure = (line.split() for line in lines)
    assert first[2:6] == ["a", "in_progress", "w1", "attempt"]
    assert completed[2:5] == ["a", "completed", "w1"] and completed[5].endswith("…")
    assert failure[2:] == ["b", "failed", "w2", "error:", "boom"]


def test_events_follow_prints_each_new_event_until_ctrl_c(
    spawn: Callable[..., RunningProcess], history: Workspace
) -> None:
    follower = spawn(
        ["worker.py", "events", "--follow", "-n", "1", "--task", "b"],
        child_env(history),
        wait_for_url=False,
    )
    wait_until(lambda: "boom" in follower.output)
    LogWriter(history, "w3").emit("a", Status.IN_PROGRESS)
    LogWriter(history, "w3").emit("b", Status.REQUEUE, operator_action="requeue")
    wait_until(lambda: "operator requeue" in follower.output)
    assert follower.stop(signal.SIGINT) == 0
    lines = follower.output.splitlines()
    assert [line.split()[2:4] for line in lines] == [["b", "failed"], ["b", "requeue"]]


# --- the `swarm` command and the pure pieces -------------------------------------------------


def test_swarm_runs_the_same_commands(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [key for key in os.environ if key.startswith("SWARM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SWARM_WORKSPACE", str(workspace.root))
    write_queue(workspace, [failed("f")], UNREACHABLE)
    assert swarm_main(["tasks", "--json"]) == 0
    assert [row["id"] for row in json.loads(capsys.readouterr().out)["tasks"]] == ["f"]
    assert swarm_main(["cancel", "f"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot cancel task 'f'")


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            {"task_id": "t", "worker_id": "w", "status": "pending", "timestamp": "bad"},
            "bad                  t                    pending           w",
        ),
        (
            {
                "task_id": "t",
                "worker_id": "w",
                "status": "requeue",
                "timestamp": "2030-01-02T03:04:05.678+00:00",
                "operator_action": "requeue",
                "errors": "old error",
            },
            "2030-01-02 03:04:05  t                    requeue           w                operator"
            " requeue",
        ),
        (
            {"task_id": "t", "status": "approved", "review_verdict": "APPROVE"},
            "-                    t                    approved          -                review"
            " APPROVE",
        ),
    ],
)
def test_event_line(event: dict[str, Any], line: str) -> None:
    assert event_line(event) == line


@pytest.mark.parametrize(
    ("value", "shown"),
    [("a\nb\t c", "a b c"), ("\x1b[2J", "\\x1b[2J"), ("\x9bm", "\\x9bm"), (None, "None")],
)
def test_clean_keeps_a_terminal_safe(value: object, shown: str) -> None:
    assert clean(value) == shown


@pytest.mark.parametrize(
    ("wanted", "admitted"),
    [
        (EventFilter(), True),
        (EventFilter(task="t", status="failed", worker="w"), True),
        (EventFilter(task="u"), False),
        (EventFilter(status="completed"), False),
        (EventFilter(worker="v"), False),
    ],
)
def test_event_filter(wanted: EventFilter, admitted: bool) -> None:
    assert wanted.admits(Envelope("t", "w", "failed", None)) is admitted
