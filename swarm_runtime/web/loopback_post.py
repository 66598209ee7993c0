"""JSON POSTed to a loopback server over kept-alive, proven connections of the standard
library's http.client: the worker's one call per task to its execution API.

requests spent 0.65-0.75 ms of a worker's CPU on each such call (merging the session's
settings, preparing the request, cookie jars, the pool's bookkeeping), against 0.2 ms
for http.client, and about as much in latency. The loopback hop needs nothing requests
adds: proxies and .netrc are refused on purpose, redirects are never followed, and
there are no cookies and no authentication but the token header.

Connections are kept per endpoint, as many as requests were in flight at once (a
worker sends its next task while it reviews the last, and a review may make a call of
its own), and each is proven when it is opened (`Proving`). One that the server closed
while it sat idle is seen to be readable before it is used, and replaced, as urllib3
does; a request is never sent twice by this module.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

from swarm_runtime.web.proven_session import Proving


@dataclass(frozen=True)
class Reply:
    """An answer read whole: its status, headers and body."""

    status_code: int
    headers: Message  # names looked up regardless of case
    content: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class ConnectionLost(Exception):
    """No answer: the connection could not be opened, or broke before the answer came.
    `reason` is the operating system's error, when there was one."""

    def __init__(self, reason: BaseException):
        super().__init__(str(reason) or type(reason).__name__)
        self.reason = reason


class AnswerTimedOut(Exception):
    """The request went out and no answer came within the read timeout."""


class ProvenHTTPConnection(Proving, http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, token: str, workspace: str):
        super().__init__(host, port)
        self.token, self.workspace = token, workspace


class ProvenHTTPSConnection(Proving, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, token: str, workspace: str):
        super().__init__(host, port)
        self.token, self.workspace = token, workspace


def proven_connection(
    scheme: str, host: str, port: int | None, token: str, workspace: str
) -> http.client.HTTPConnection:
    """An unopened connection that will prove the server when it opens (its timeout is
    set when it does)."""
    make = ProvenHTTPSConnection if scheme == "https" else ProvenHTTPConnection
    return make(host, port, token, workspace)


Endpoint = tuple[str, str, int | None]  # scheme, host, port


class LoopbackPoster:
    """POSTs JSON to endpoints that `web.loopback.loopback_url` has checked, over kept
    connections. Thread-safe: each request in flight has a connection to itself."""

    def __init__(self, token: str, workspace: str):
        self._token = token
        self._workspace = workspace
        self._idle: dict[Endpoint, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def send(
        self,
        url: str,
        payload: Any,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> Callable[[], Reply]:
        """Send `payload` now; the call returned reads the server's answer, so that the
        caller can work while the server does. ServerNotProven or ConnectionLost when the
        connection cannot be had (nothing sent); ConnectionLost or AnswerTimedOut from
        the call when no answer comes."""
        body = json.dumps(payload, allow_nan=False).encode("utf-8")
        sent = {"Content-Type": "application/json", **headers}
        parts = urlsplit(url)
        endpoint = (parts.scheme, parts.hostname or "", parts.port)
        connection = self._connection(endpoint)
        self._open(connection, connect_timeout)
        try:
            self._request(connection, parts.path or "/", body, sent, read_timeout)
        except BaseException:
            self._put_back(endpoint, connection)
            raise
        return lambda: self._answer(endpoint, connection)

    def _connection(self, endpoint: Endpoint) -> http.client.HTTPConnection:
        """An idle kept connection to `endpoint` (one the server closed is closed here
        too, to be opened again), else a new one."""
        with self._lock:
            idle = self._idle.get(endpoint)
            connection = idle.pop() if idle else None
        if connection is None:
            return proven_connection(*endpoint, self._token, self._workspace)
        if connection.sock is not None and closed_by_peer(connection.sock):
            connection.close()
        return connection

    def _put_back(self, endpoint: Endpoint, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(endpoint, []).append(connection)

    def _answer(self, endpoint: Endpoint, connection: http.client.HTTPConnection) -> Reply:
        """The answer, read whole; the connection is kept either way (one that failed is
        closed, and opened again by its next request)."""
        try:
            with _closed_on_failure(connection):
                answer = connection.getresponse()
                reply = Reply(answer.status, answer.headers, answer.read())
            if answer.will_close:
                connection.close()
            return reply
        finally:
            self._put_back(endpoint, connection)

    @staticmethod
    def _open(connection: http.client.HTTPConnection, timeout: float) -> None:
        if connection.sock is not None:
            return
        connection.timeout = timeout
        try:
            connection.connect()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise ConnectionLost(exc) from exc

    @staticmethod
    def _request(
        connection: http.client.HTTPConnection,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        read_timeout: float,
    ) -> None:
        connection.sock.settimeout(read_timeout)
        with _closed_on_failure(connection):
            connection.request("POST", path, body=body, headers=headers)


@contextmanager
def _closed_on_failure(connection: http.client.HTTPConnection) -> Iterator[None]:
    """The poster's errors for the connection's: AnswerTimedOut for a read timeout,
    ConnectionLost for the rest; either closes the connection."""
    try:
        yield
    except TimeoutError as exc:
        connection.close()
        raise AnswerTimedOut() from exc
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise ConnectionLost(exc) from exc


def closed_by_peer(sock: Any) -> bool:
    """A kept connection with something to read before a request was sent: the server's
    close (or bytes no request asked for). Either way it cannot carry the next request."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
