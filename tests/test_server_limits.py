"""Both servers under connection floods, on loopback: idle and half-sent connections cost no
thread, and no client can hold every live-stream slot of the panel.

Bounded in count and time: 3,000 connections at most, each wait polled to a deadline.
"""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest
import requests
from conftest import RunningProcess, child_env

from swarm_runtime.api.app import API_THREADS
from swarm_runtime.panel.state import MAX_STREAMS
from swarm_runtime.store.state_files import Workspace

IDLE_CONNECTIONS = 3000
# The main thread, waitress's own and the runtime's background threads.
SPARE_THREADS = 8
DEADLINE_SECONDS = 20.0


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("Threads:"))
    return int(line.split()[1])


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE_CONNECTIONS + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the descriptor limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_connections(stack: ExitStack, url: str, count: int, first_bytes: bytes) -> None:
    for _ in range(count):
        sock = stack.enter_context(socket.create_connection(address(url), timeout=5))
        if first_bytes:
            sock.sendall(first_bytes)


def answers_while_flooded(url: str, path: str) -> bool:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        try:
            if requests.get(url + path, timeout=5).status_code == 200:
                return True
        except requests.RequestException:
            time.sleep(0.1)
    return False


@pytest.mark.usefixtures("many_descriptors")
@pytest.mark.parametrize(
    "first_bytes",
    [b"", b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "],
    ids=["idle", "half-sent headers"],
)
def test_thousands_of_idle_connections_pin_no_threads(
    api: RunningProcess, first_bytes: bytes
) -> None:
    assert api.url is not None
    with ExitStack() as stack:
        open_connections(stack, api.url, IDLE_CONNECTIONS, first_bytes)
        assert answers_while_flooded(api.url, "/status"), "the API stopped answering"
        threads = thread_count(api.proc.pid)
    assert threads <= API_THREADS + SPARE_THREADS, f"{threads} threads for idle connections"


@pytest.fixture
def panel_url(spawn: Callable[..., RunningProcess], workspace: Workspace) -> str:
    url = spawn(["control_panel.py", "--port", "0"], child_env(workspace)).url
    assert url is not None
    return url


def open_stream(stack: ExitStack, url: str) -> socket.socket:
    host, port = address(url)
    sock = stack.enter_context(socket.create_connection((host, port), timeout=DEADLINE_SECONDS))
    sock.sendall(f"GET /api/stream HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    assert b"retry:" in read_until(sock, b"retry:"), "the stream did not start"
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while marker not in received and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_no_client_can_hold_every_stream_slot(panel_url: str) -> None:
    """Streams opened first and kept do not lock later clients out: each new stream is
    served, and the oldest one is ended to make room."""
    with ExitStack() as stack:
        hogs = [open_stream(stack, panel_url) for _ in range(MAX_STREAMS)]
        newcomer = open_stream(stack, panel_url)
        assert read_until(hogs[0], b"0\r\n\r\n").endswith(b"0\r\n\r\n"), "oldest not ended"
        assert newcomer.fileno() != -1
        assert answers_while_flooded(panel_url, "/api/summary")
