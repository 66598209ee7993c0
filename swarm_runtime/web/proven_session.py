"""A requests session that makes the server prove who it is on every new connection,
before any request (and the token it carries) is written to that connection.

The check rides on the connection, not on each request: urllib3 opens a connection,
the challenge of `web.identity` goes out and its answer is verified inside `connect()`,
and only then does the waiting request reach the socket. A kept-alive connection is
proven once, so a worker pays one small round trip per connection, not per task; and a
server that restarted, or a process that took its port, is met on a new connection and
must prove itself again before it hears anything.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from swarm_runtime.errors import SwarmError
from swarm_runtime.web.identity import IDENTITY_PATH, new_nonce, proof_matches
from swarm_runtime.web.loopback import direct_session

MAX_ANSWER_BYTES = 4096


class ServerNotProven(SwarmError):
    """The process listening on the API's port could not prove it is this workspace's API;
    nothing was sent to it."""


def proven_session(token: str, workspace: str) -> requests.Session:
    """A proxy-free session whose plain-HTTP connections each prove the server holds
    `token` and serves `workspace` before the first byte of a request is sent."""
    session = direct_session()
    session.mount("http://", ProvingAdapter(token, workspace))
    return session


class ProvingAdapter(HTTPAdapter):
    def __init__(self, token: str, workspace: str):
        fields = {"token": token, "workspace": workspace}
        connection = type("ProvingConnection", (_ProvingConnection,), fields)
        self._pool_cls = type("ProvingPool", (HTTPConnectionPool,), {"ConnectionCls": connection})
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": self._pool_cls}


class Proving:
    """Mixed into an http.client connection (urllib3's are http.client's too): `connect`
    opens the socket, then the server must answer the challenge before anything else is
    written to it."""

    token: str
    workspace: str
    host: str
    port: int
    sock: Any

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        try:
            self._prove()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        super().close()  # type: ignore[misc]

    def _prove(self) -> None:
        nonce = new_nonce()
        host = f"{self.host}:{self.port}"
        challenge = f"GET {IDENTITY_PATH}?nonce={nonce} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        assert self.sock is not None
        self.sock.sendall(challenge.encode("ascii"))
        status, body = read_answer(self.sock)
        served = body.get("workspace") if isinstance(body, dict) else None
        proof = body.get("proof") if isinstance(body, dict) else None
        if status == 200 and proof_matches(self.token, nonce, self.port, self.workspace, proof):
            return
        raise ServerNotProven(refusal(host, self.workspace, served, status))


class _ProvingConnection(Proving, HTTPConnection):
    pass


def read_answer(sock: Any) -> tuple[int, object]:
    """The status and JSON body of one HTTP response read off `sock`, leaving the socket
    ready for the next request (the body is read to its declared end)."""
    answer = http.client.HTTPResponse(sock, method="GET")
    try:
        answer.begin()
        raw = answer.read(MAX_ANSWER_BYTES + 1)
    finally:
        answer.close()
    if len(raw) > MAX_ANSWER_BYTES or answer.will_close:
        return answer.status, None
    try:
        return answer.status, json.loads(raw)
    except ValueError:
        return answer.status, None


def refusal(host: str, workspace: str, served: object, status: int) -> str:
    if isinstance(served, str) and served != workspace:
        return (
            f"the execution API at {host} serves the workspace {served}, not this one "
            f"({workspace}); start swarm.py for this workspace, or point the worker at "
            "the workspace that API serves"
        )
    return (
        f"the process listening on {host} could not prove it is this workspace's execution "
        f"API (answer {status}); nothing was sent to it. Is another program using that port?"
    )
