"""The worker's /cycle client against a real scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, jsonify, request
from waitress.server import create_server

from swarm_runtime.contract import TOKEN_HEADER
from swarm_runtime.web.identity import identity_proof, workspace_name
from swarm_runtime.worker.cycle_client import CycleClient, EndpointRefused

TOKEN = "secret-token"
WORKSPACE = workspace_name("/srv/agents/workspace")


class ScriptedApi:
    """A /cycle that answers from a script, behind the identity proof of a token and a
    workspace (by default the client's own)."""

    def __init__(self, token: str = TOKEN, workspace: str = WORKSPACE) -> None:
        self.script: list[tuple[int, object, dict[str, str]]] = []
        self.seen: list[dict[str, str]] = []
        self.challenges = 0
        self.held: threading.Event | None = None  # set: /cycle answers once it is released
        app = Flask(__name__)

        @app.get("/identity")
        def identity() -> object:
            self.challenges += 1
            nonce = request.args["nonce"]
            port = int(request.environ["SERVER_PORT"])
            proof = identity_proof(token, nonce, port, workspace)
            return jsonify({"workspace": workspace, "proof": proof})

        @app.post("/cycle")
        def cycle() -> object:
            if self.held is not None:
                self.held.wait(timeout=10)
            self.seen.append(
                {
                    "token": request.headers.get(TOKEN_HEADER, ""),
                    "authorization": request.headers.get("Authorization", ""),
                }
            )
            status, body, headers = self.script.pop(0)
            response = jsonify(body) if not isinstance(body, str) else body
            return response, status, headers

        self.server = create_server(app, host="127.0.0.1", port=0, threads=2)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        """Until the test closes the server from its own thread, which pulls the sockets
        out from under this loop's select()."""
        with contextlib.suppress(OSError):
            self.server.run()


def serving(scripted: ScriptedApi) -> Iterator[ScriptedApi]:
    scripted.thread.start()
    yield scripted
    scripted.server.close()


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    yield from serving(ScriptedApi())


OK = (200, {"status": "completed", "result": "done", "exit_code": 0}, {})
delays: list[float] = []


def client(retries: int = 3) -> CycleClient:
    delays.clear()
    return CycleClient(TOKEN, WORKSPACE, retries=retries, sleep=delays.append)


def test_sends_the_token_and_parses_the_body(api: ScriptedApi) -> None:
    api.script = [OK]
    result = client().dispatch(api.url, {"task": "echo"}, read_timeout=5)
    assert result.response.result == "done" and result.attempts == 1
    assert api.seen == [{"token": "secret-token", "authorization": ""}]


def test_a_connection_is_proven_once_and_then_kept(api: ScriptedApi) -> None:
    api.script = [OK] * 5
    sender = client()
    for _ in range(5):
        assert sender.dispatch(api.url, {}, read_timeout=5).response is not None
    assert api.challenges == 1 and len(api.seen) == 5


def test_a_request_sent_ahead_is_answered_beside_another_and_connections_are_kept(
    api: ScriptedApi,
) -> None:
    """A worker sends its next task and may make a review's call before reading the
    first answer: each request in flight has a connection of its own, proven once."""
    api.script = [OK] * 4
    sender = client()
    ahead = sender.begin(api.url, {"task": "echo ahead"}, read_timeout=5)
    assert sender.dispatch(api.url, {"prompt": "review"}, read_timeout=5).response is not None
    assert ahead.result().response is not None
    assert sender.dispatch(api.url, {}, read_timeout=5).response is not None
    assert sender.dispatch(api.url, {}, read_timeout=5).response is not None
    assert api.challenges == 2 and len(api.seen) == 4


def test_a_request_sent_ahead_to_a_dead_api_fails_when_its_answer_is_read() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    pending = client(retries=1).begin(f"http://127.0.0.1:{port}", {}, read_timeout=5)
    result = pending.result()
    assert result.response is None and result.attempts == 2 and len(delays) == 1
    assert "cannot connect to the execution API" in (result.error or "")


@pytest.mark.parametrize(
    "impostor, refusal",
    [
        (ScriptedApi(token="guessed"), "could not prove it is this workspace's execution API"),
        (ScriptedApi(workspace="/elsewhere"), "serves the workspace /elsewhere, not this one"),
    ],
    ids=["does not hold the token", "serves another workspace"],
)
def test_an_impostor_on_the_port_hears_nothing(impostor: ScriptedApi, refusal: str) -> None:
    for scripted in serving(impostor):
        scripted.script = [OK]
        result = client().dispatch(scripted.url, {"prompt": "the secret plan"}, read_timeout=5)
        assert result.response is None and refusal in (result.error or "")
        assert result.attempts == 1 and scripted.seen == [], "the token reached the impostor"


def test_a_server_that_is_not_http_is_refused_without_the_token() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        heard: list[bytes] = []

        def answer_garbage() -> None:
            conn, _ = listener.accept()
            with conn:
                heard.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
                heard.append(conn.recv(65536))

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        result = client(retries=0).dispatch(url, {}, read_timeout=5)
        thread.join(timeout=10)
    assert result.response is None and "could not prove" in (result.error or "")
    assert heard[0].startswith(b"GET /identity?nonce=") and b"secret-token" not in b"".join(heard)


def test_retries_429_honouring_retry_after_then_5xx_with_backoff(api: ScriptedApi) -> None:
    api.script = [
        (429, {"error": "slow down"}, {"Retry-After": "3"}),
        (503, {"error": "starting"}, {}),
        OK,
    ]
    result = client().dispatch(api.url, {}, read_timeout=5)
    assert result.response is not None and result.attempts == 3
    assert delays[0] == 3.0 and 0.8 <= delays[1] <= 1.2  # second attempt: 1 s ± 20 %


def test_a_non_retryable_5xx_and_4xx_are_final(api: ScriptedApi) -> None:
    api.script = [
        (502, {"error": "provider failed", "retryable": False}, {}),
        (403, {"error": "Local command blocked: x"}, {}),
    ]
    first = client().dispatch(api.url, {}, read_timeout=5)
    second = client().dispatch(api.url, {}, read_timeout=5)
    assert first.error == "API returned 502: provider failed" and first.attempts == 1
    assert second.error == "API returned 403: Local command blocked: x"


def test_retries_are_bounded(api: ScriptedApi) -> None:
    api.script = [(500, {"error": "boom"}, {})] * 3
    result = client(retries=2).dispatch(api.url, {}, read_timeout=5)
    assert result.response is None and result.attempts == 3 and len(delays) == 2


def test_an_invalid_body_is_a_clear_failure(api: ScriptedApi) -> None:
    api.script = [(200, {"status": "weird"}, {})]
    result = client().dispatch(api.url, {}, read_timeout=5)
    assert result.response is None and result.error.startswith("invalid API response: status")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://10.0.0.1:8420",
        "http://example.com",
        "file:///etc/passwd",
        "http://127.0.0.1.evil.example",
        "http://evil.example\\@127.0.0.1",
        "http://127.0.0.1@evil.example",
    ],
)
def test_the_token_never_leaves_loopback(endpoint: str) -> None:
    with pytest.raises(EndpointRefused, match="loopback-only"):
        client().dispatch(endpoint, {}, read_timeout=5)


def test_no_proxy_and_no_netrc_see_the_token(
    api: ScriptedApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Environment proxies once applied to the worker's loopback calls, token and prompt too."""
    with socket.create_server(("127.0.0.1", 0)) as proxy:
        proxy_url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy_url)
            monkeypatch.setenv(name.lower(), proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login worker password from-netrc\n")
        monkeypatch.setenv("NETRC", str(netrc))
        api.script = [OK]
        result = client(retries=0).dispatch(api.url, {}, read_timeout=2)
        proxy.setblocking(False)
        with pytest.raises(BlockingIOError):
            proxy.accept()  # nothing ever connected to the proxy
    assert result.response is not None
    assert api.seen == [{"token": "secret-token", "authorization": ""}]


def test_a_redirect_is_final_and_the_token_does_not_follow_it(api: ScriptedApi) -> None:
    api.script = [(307, "", {"Location": "http://127.0.0.2:9/cycle"})]
    result = client().dispatch(api.url, {}, read_timeout=5)
    assert result.http_status == 307 and result.response is None and result.attempts == 1
    assert len(api.seen) == 1


class OneRequestPerConnection:
    """An API on a raw socket that proves itself, answers one /cycle on each connection
    and then closes it, as a server does with a connection idle past its timeout."""

    def __init__(self, token: str = TOKEN, workspace: str = WORKSPACE) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.token, self.workspace = token, workspace
        self.connections = 0
        self.closed = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                with conn:
                    self.connections += 1
                    self.answer(conn)
                self.closed.set()

    def answer(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        challenge = reader.readline().decode()
        while reader.readline() not in (b"\r\n", b""):
            pass
        nonce = challenge.split("nonce=")[1].split()[0]
        proof = identity_proof(self.token, nonce, self.port, self.workspace)
        respond(conn, {"workspace": self.workspace, "proof": proof})
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        reader.read(length)
        respond(conn, OK[1])


def respond(conn: socket.socket, body: object) -> None:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    conn.sendall(head.encode() + b"\r\n" + data)


def test_a_kept_connection_the_server_closed_is_replaced_not_failed() -> None:
    """The server closed the connection after its answer (its keep-alive ran out): the
    next dispatch opens and proves another, with no failed attempt and no retry delay."""
    api = OneRequestPerConnection()
    sender = client()
    first = sender.dispatch(api.url, {}, read_timeout=5)
    assert api.closed.wait(timeout=10)
    second = sender.dispatch(api.url, {}, read_timeout=5)
    api.listener.close()
    assert first.response is not None and second.response is not None
    assert (second.attempts, delays, api.connections) == (1, [], 2)


def test_a_refused_connection_is_retried_with_the_systems_reason() -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    result = client(retries=2).dispatch(url, {}, read_timeout=5)
    assert result.response is None and result.attempts == 3 and len(delays) == 2
    assert result.error == f"cannot connect to the execution API at {url}/cycle: Connection refused"


def test_an_api_that_does_not_answer_in_time_is_not_asked_again(api: ScriptedApi) -> None:
    """The request reached the API, which may be running it: sending it again could run
    it twice."""
    api.held = threading.Event()
    api.script = [OK]
    try:
        result = client().dispatch(api.url, {}, read_timeout=1)
    finally:
        api.held.set()
    assert result.response is None and result.attempts == 1 and delays == []
    assert result.error == "the execution API did not answer within 1s"
