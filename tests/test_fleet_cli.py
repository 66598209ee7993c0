"""`fleet`, `pause --host` and `resume --host`, and the hosts in `status`: each run as a
real process against a workspace, in text and with --json.

Regression: the command line could pause every worker or none, and `status` listed
workers without the host they run on.
"""

from __future__ import annotations

from conftest import read_queue, run_worker, write_queue
from test_operator_cli import UNREACHABLE, as_json, swarm

from swarm_runtime.contract import CLI_WORKER_ID
from swarm_runtime.queue.presence import PresenceBeacon
from swarm_runtime.queue.store import WorkerIdentity
from swarm_runtime.store.pause import read_pause
from swarm_runtime.store.state_files import Workspace


def two_hosts(workspace: Workspace) -> None:
    for worker_id, host in (("a1", "host-a"), ("b1", "host-b")):
        PresenceBeacon(workspace, WorkerIdentity(worker_id, host=host)).announce(paused=False)
    write_queue(workspace, [{"id": "on-b", "prompt": "p", "host": "host-b"}], UNREACHABLE)


def test_pause_and_resume_one_host_leave_the_others_running(workspace: Workspace) -> None:
    paused = as_json(swarm(workspace, "pause", "--host", "host-b", "--reason", "disk", "--json"))
    assert (paused["host"], paused["paused"]) == ("host-b", False)
    assert paused["hosts"]["host-b"]["by"] == CLI_WORKER_ID
    text = swarm(workspace, "pause", "--host", "host-a").stdout
    assert text.startswith("host host-a: PAUSED by") and "finish the task in hand" in text
    assert read_pause(workspace).paused_hosts() == ["host-a", "host-b"]
    resumed = swarm(workspace, "resume", "--host", "host-a")
    assert resumed.stdout == "host host-a resumed: its workers claim tasks again\n"
    state = read_pause(workspace)
    assert (state.paused, state.paused_hosts()) == (False, ["host-b"])


def test_resuming_a_host_while_every_host_is_paused_says_so(workspace: Workspace) -> None:
    assert swarm(workspace, "pause").returncode == 0
    text = swarm(workspace, "resume", "--host", "host-a").stdout
    assert "every host is still paused" in text
    assert read_pause(workspace).paused is True


def test_a_host_name_no_host_can_have_is_refused_with_exit_2(workspace: Workspace) -> None:
    result = swarm(workspace, "pause", "--host", "no such host")
    assert result.returncode == 2 and "is not a host name" in result.stderr
    assert not workspace.pause_path.exists()


def test_fleet_lists_each_host_its_pause_and_its_workers(workspace: Workspace) -> None:
    two_hosts(workspace)
    assert swarm(workspace, "pause", "--host", "host-b", "--reason", "disk").returncode == 0
    report = as_json(swarm(workspace, "fleet", "--json"))
    assert [(h["host"], h["paused"], h["pinned_waiting"]) for h in report["hosts"]] == [
        ("host-a", False, 0),
        ("host-b", True, 1),
    ]
    assert report["hosts"][1]["workers"][0]["state"] == "paused"
    lines = swarm(workspace, "fleet").stdout.splitlines()
    assert lines[0].split() == ["fleet", "running", "(paused:", "host-b)"]
    assert lines[1].startswith("host-a") and "running 0, pinned waiting 0" in lines[1]
    assert lines[2].split()[:2] == ["a1", "idle"]
    assert "PAUSED by" in lines[3] and "disk" in lines[3] and "pinned waiting 1" in lines[3]
    assert lines[4].split()[:2] == ["b1", "paused"]


def test_fleet_with_a_malformed_queue_is_one_error_line_and_exit_2(workspace: Workspace) -> None:
    workspace.queue_path.write_text('{"tasks": [,]}')
    result = swarm(workspace, "fleet")
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert "queue.json is malformed" in result.stderr


def test_status_has_a_line_per_host_and_the_fleet_in_json(workspace: Workspace) -> None:
    two_hosts(workspace)
    assert swarm(workspace, "pause", "--host", "host-a").returncode == 0
    report = as_json(swarm(workspace, "status", "--json"))
    assert [h["host"] for h in report["fleet"]["hosts"]] == ["host-a", "host-b"]
    assert report["pause"]["hosts"]["host-a"]["paused"] is True
    text = swarm(workspace, "status").stdout
    assert "pause    running (paused: host-a)" in text
    assert "host     host-a: PAUSED by" in text and "workers: a1 (paused)" in text
    assert "host     host-b: running; workers: b1 (idle); running 0, pinned waiting 1" in text


def test_a_worker_claims_nothing_while_its_host_is_paused_and_runs_when_another_is(
    workspace: Workspace,
) -> None:
    write_queue(workspace, [{"id": "t", "command": "echo hi", "mode": "local"}], UNREACHABLE)
    assert swarm(workspace, "pause", "--host", "host-a", "--reason", "disk").returncode == 0
    held = run_worker(workspace, "--once", SWARM_HOST="host-a")
    assert held.returncode == 0 and "host 'host-a' paused by operator-cli: disk" in held.stdout
    assert read_queue(workspace)["tasks"][0].get("status", "pending") == "pending"
    ran = run_worker(workspace, "--once", SWARM_HOST="host-b", SWARM_API_RETRIES="0")
    assert "paused" not in ran.stdout
    assert read_queue(workspace)["tasks"][0].get("status", "pending") != "pending"
