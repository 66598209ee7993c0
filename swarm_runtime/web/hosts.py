"""The Host check both servers run first: a page on another origin whose name is
rebound to 127.0.0.1 (DNS rebinding) still sends its own name, so only the two
spellings of this server's own address are answered."""

from __future__ import annotations

from flask import Flask, request

from swarm_runtime.web.json_errors import HttpError


def allowed_hosts(port: int) -> set[str]:
    return {f"127.0.0.1:{port}", f"localhost:{port}"}


def served_port(app: Flask, configured: int) -> int:
    """The bound port once serving (`--port 0` picks one); the configured one before that."""
    server_url = app.config.get("SERVER_URL")
    return int(server_url.rsplit(":", 1)[1]) if server_url else configured


def check_host(port: int, name: str) -> None:
    """Raise a 403 unless the request's Host names this server."""
    if request.host.lower() not in allowed_hosts(port):
        raise HttpError(
            403,
            f"unexpected Host header {request.host!r}: the {name} answers "
            f"only to 127.0.0.1:{port} or localhost:{port}",
        )
