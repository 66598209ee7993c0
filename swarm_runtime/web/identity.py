"""How a client holding the token can know it talks to this workspace's execution API
before the token leaves.

The client sends `GET /identity?nonce=<fresh random hex>` without the token; the API
answers `{"workspace": <the folder it serves>, "proof": hmac_sha256(token,
"swarm-runtime identity v2:<nonce>:<port>:<workspace>")}`, the port being the one its
socket listens on. Only a process that holds the token can answer, a fresh nonce makes an
old answer useless, the port defeats a relay (an impostor that forwards the challenge to
the real API gets back a proof for the real API's port) and the workspace defeats a
copy: a copied workspace carries the token along, but its worker names another folder, so
the original runtime's proof does not match and the worker says which folder that API
serves.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

IDENTITY_PATH = "/identity"
IDENTITY_CONTEXT = "swarm-runtime identity v2"
NONCE_PATTERN = re.compile(r"[0-9a-f]{32,128}")


def new_nonce() -> str:
    return secrets.token_hex(16)


def workspace_name(root: Path | str) -> str:
    """The one spelling of a workspace both sides compare: its absolute, resolved path."""
    return os.path.realpath(root)


def identity_proof(token: str, nonce: str, port: int, workspace: str) -> str:
    message = f"{IDENTITY_CONTEXT}:{nonce}:{port}:{workspace}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def proof_matches(token: str, nonce: str, port: int, workspace: str, proof: object) -> bool:
    if not isinstance(proof, str):
        return False
    expected = identity_proof(token, nonce, port, workspace)
    return hmac.compare_digest(proof.encode(), expected.encode())
