"""How a client holding the token can know it talks to this workspace's execution API
before the token leaves.

The client sends `GET /identity?nonce=<fresh random hex>` without the token; the API
answers `{"proof": hmac_sha256(token, "swarm-runtime identity v1:<nonce>:<port>")}`, the
port being the one its socket listens on. Only a process that holds the token can answer,
a fresh nonce makes an old answer useless, and the port defeats a relay: an impostor that
forwards the challenge to the real API gets back a proof for the real API's port, which
the client rejects (`proof_matches`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

IDENTITY_PATH = "/identity"
IDENTITY_CONTEXT = "swarm-runtime identity v1"
NONCE_PATTERN = re.compile(r"[0-9a-f]{32,128}")


def new_nonce() -> str:
    return secrets.token_hex(16)


def identity_proof(token: str, nonce: str, port: int) -> str:
    message = f"{IDENTITY_CONTEXT}:{nonce}:{port}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def proof_matches(token: str, nonce: str, port: int, proof: object) -> bool:
    if not isinstance(proof, str):
        return False
    return hmac.compare_digest(proof.encode(), identity_proof(token, nonce, port).encode())
