"""`GET /identity`: the execution API proves it holds the token without receiving it."""

from __future__ import annotations

import pytest
import requests
from conftest import RunningProcess

from swarm_runtime.contract import TOKEN_HEADER
from swarm_runtime.store.state_files import Workspace
from swarm_runtime.web.identity import identity_proof, new_nonce, proof_matches


def port_of(api: RunningProcess) -> int:
    return int(api.url.rsplit(":", 1)[1])


def test_the_api_proves_it_holds_the_token_for_its_own_port(
    api: RunningProcess, workspace: Workspace
) -> None:
    nonce = new_nonce()
    reply = requests.get(f"{api.url}/identity", params={"nonce": nonce}, timeout=10)
    assert reply.status_code == 200 and TOKEN_HEADER not in reply.request.headers
    token = workspace.token_path.read_text().strip()
    assert reply.json() == {"proof": identity_proof(token, nonce, port_of(api))}
    assert token not in reply.text


@pytest.mark.parametrize("query", ["", "?nonce=", "?nonce=abc", "?nonce=" + "G" * 32])
def test_a_missing_or_malformed_nonce_is_400(api: RunningProcess, query: str) -> None:
    reply = requests.get(f"{api.url}/identity{query}", timeout=10)
    assert reply.status_code == 400 and "nonce" in reply.json()["error"]


@pytest.mark.parametrize(
    "token, nonce, port, accepted",
    [
        ("t0ken", "a" * 32, 8420, True),
        ("other", "a" * 32, 8420, False),  # an API of another workspace
        ("t0ken", "b" * 32, 8420, False),  # an old answer replayed
        ("t0ken", "a" * 32, 8421, False),  # a challenge relayed to the API on another port
    ],
)
def test_a_proof_binds_token_nonce_and_port(
    token: str, nonce: str, port: int, accepted: bool
) -> None:
    proof = identity_proof(token, nonce, port)
    assert proof_matches("t0ken", "a" * 32, 8420, proof) is accepted


@pytest.mark.parametrize("proof", [None, 42, "", "0" * 64, {"proof": "x"}])
def test_anything_but_the_proof_is_refused(proof: object) -> None:
    assert not proof_matches("t0ken", "a" * 32, 8420, proof)
