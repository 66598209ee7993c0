"""`GET /identity`: the execution API proves it holds the token without receiving it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests
from conftest import RunningProcess, read_events, read_queue, run_worker, write_queue

from swarm_runtime.contract import TOKEN_HEADER
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.web.identity import identity_proof, new_nonce, proof_matches, workspace_name


def port_of(api: RunningProcess) -> int:
    return int(api.url.rsplit(":", 1)[1])


def test_the_api_proves_it_holds_the_token_for_its_own_port(
    api: RunningProcess, workspace: Workspace
) -> None:
    nonce = new_nonce()
    reply = requests.get(f"{api.url}/identity", params={"nonce": nonce}, timeout=10)
    assert reply.status_code == 200 and TOKEN_HEADER not in reply.request.headers
    token = workspace.token_path.read_text().strip()
    served = workspace_name(workspace.root)
    proof = identity_proof(token, nonce, port_of(api), served)
    assert reply.json() == {"workspace": served, "proof": proof}
    assert token not in reply.text


@pytest.mark.parametrize("query", ["", "?nonce=", "?nonce=abc", "?nonce=" + "G" * 32])
def test_a_missing_or_malformed_nonce_is_400(api: RunningProcess, query: str) -> None:
    reply = requests.get(f"{api.url}/identity{query}", timeout=10)
    assert reply.status_code == 400 and "nonce" in reply.json()["error"]


@pytest.mark.parametrize(
    "token, nonce, port, workspace, accepted",
    [
        ("t0ken", "a" * 32, 8420, "/w", True),
        ("other", "a" * 32, 8420, "/w", False),  # a process without the token
        ("t0ken", "b" * 32, 8420, "/w", False),  # an old answer replayed
        ("t0ken", "a" * 32, 8421, "/w", False),  # a challenge relayed to the API on another port
        ("t0ken", "a" * 32, 8420, "/w-copy", False),  # the API of a copied workspace
    ],
)
def test_a_proof_binds_token_nonce_port_and_workspace(
    token: str, nonce: str, port: int, workspace: str, accepted: bool
) -> None:
    proof = identity_proof(token, nonce, port, workspace)
    assert proof_matches("t0ken", "a" * 32, 8420, "/w", proof) is accepted


@pytest.mark.parametrize("proof", [None, 42, "", "0" * 64, {"proof": "x"}])
def test_anything_but_the_proof_is_refused(proof: object) -> None:
    assert not proof_matches("t0ken", "a" * 32, 8420, "/w", proof)


# --- the worker finds this workspace's API, and only it -----------------------------------


def local_task(task_id: str) -> dict[str, object]:
    return {"id": task_id, "mode": "local", "command": "echo hello"}


def test_the_api_records_where_it_listens_in_its_workspace(
    api: RunningProcess, workspace: Workspace
) -> None:
    assert read_queue(workspace)["api_endpoint"] == api.url


def test_a_worker_goes_where_swarm_api_port_says(api: RunningProcess, workspace: Workspace) -> None:
    """The API and the worker read the same variable, whatever the queue says."""
    write_queue(workspace, [local_task("t1")], "http://127.0.0.1:9")
    result = run_worker(workspace, "--once", SWARM_API_PORT=str(port_of(api)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_queue(workspace)["tasks"][0]["status"] == "approved"


def test_a_copied_workspace_does_not_dispatch_to_the_original_runtime(
    api: RunningProcess, workspace: Workspace, tmp_path: Path
) -> None:
    """The copy carries the token and the endpoint along; the original API serves another
    folder, so the copy's worker refuses it before anything is sent."""
    copy = Workspace(tmp_path / "copy")
    shutil.copytree(workspace.root, copy.root)
    write_queue(copy, [local_task("t1")], api.url)
    result = run_worker(copy, "--once", SWARM_API_RETRIES="0")
    task = read_queue(copy)["tasks"][0]
    assert task["status"] == "failed", result.stdout
    assert f"serves the workspace {workspace.root}, not this one" in task["last_error"]
    assert not any(e.get("task_id") == "t1" for e in read_events(workspace))
