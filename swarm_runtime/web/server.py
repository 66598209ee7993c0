"""Serving a Flask app on loopback only, and the command line around it, for both of the
runtime's servers.

The server is waitress, not Werkzeug's development server. Waitress reads requests and
writes responses on one event loop and hands only complete requests to a fixed pool of
threads, so idle or slow connections cost a file descriptor each and never a thread:
thousands of them cannot exhaust the pool that serves the workers. Headers and bodies
are capped, idle connections are closed after a while, and forwarded headers are never
trusted (nothing sits in front of a loopback server).
"""

from __future__ import annotations

import argparse
import errno
import logging
import resource
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Literal, NoReturn

from flask import Flask, Response, g, request
from waitress.server import BaseWSGIServer, create_server

from swarm_runtime.errors import SwarmError
from swarm_runtime.processes import exit_with_supervisor
from swarm_runtime.settings import Settings

LOOPBACK_HOST = "127.0.0.1"
# Connections a server keeps open at once; beyond it, new ones wait in the listen backlog.
CONNECTION_LIMIT = 4000
# An idle keep-alive connection is closed after this long; a request in progress is not.
IDLE_CONNECTION_SECONDS = 30
MAX_HEADER_BYTES = 64 * 1024
# Twice the largest JSON body either server accepts (web.json_body caps the parsed size).
MAX_TRANSPORT_BODY_BYTES = 2 * 1024 * 1024
DEFAULT_THREADS = 16
PORT_VARIABLES = {"api_port": "SWARM_API_PORT", "panel_port": "CONTROL_PANEL_PORT"}


class PortInUse(SwarmError):
    """Another program listens on the port this server was told to use."""


def serve_main(
    argv: list[str] | None,
    *,
    prog: str,
    doc: str,
    name: str,
    port_setting: Literal["api_port", "panel_port"],
    create_app: Callable[[Settings], Flask],
    running: Callable[[Flask], AbstractContextManager[object]] = nullcontext,
    threads: int = DEFAULT_THREADS,
) -> int:
    """A server's command line: `--port`, settings from the environment, logging, then
    `serve` inside `running(app)`. Settings or an app that cannot be built exit 2."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"%(asctime)s %(levelname)s {prog.removesuffix('.py')}: %(message)s",
    )
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    default_port = Settings.model_fields[port_setting].default
    parser.add_argument(
        "--port",
        type=int,
        help=f"port on 127.0.0.1, 0 picks a free one (default: {default_port}, or "
        f"{PORT_VARIABLES[port_setting]}); the workspace is SWARM_WORKSPACE, or ./workspace",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log one line per request (off by default)"
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(**{port_setting: args.port})
        app = create_app(settings)
    except SwarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.access_log:
        log_each_request(app, logging.getLogger(prog.removesuffix(".py")))
    exit_with_supervisor()
    with running(app):
        try:
            return serve(app, getattr(settings, port_setting), name, threads=threads)
        except PortInUse as exc:
            variable = PORT_VARIABLES[port_setting]
            print(f"error: {exc}; choose another with --port or {variable}", file=sys.stderr)
            return 2


def serve(app: Flask, port: int, name: str, *, threads: int = DEFAULT_THREADS) -> int:
    """Bind 127.0.0.1 (never another address), announce the URL once ready, serve until
    SIGINT or SIGTERM, then close the socket and return 0.

    Once bound, `app.extensions["on_listening"](url)` (if any) runs, so the app can tell
    others where it listens. Before the loop stops, `app.extensions["on_stop"]()` (if any)
    runs, so a handler that streams can end at once instead of holding shutdown until the
    pool gives up on it."""
    raise_descriptor_limit(CONNECTION_LIMIT + 64)
    try:
        server, bound_port = bind(app, port, name, threads)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortInUse(f"port {port} on {LOOPBACK_HOST} is in use by another program") from None
    url = f"http://{LOOPBACK_HOST}:{bound_port}"
    app.config["SERVER_URL"] = url
    on_stop: Callable[[], None] = app.extensions.get("on_stop", lambda: None)

    def stop(_signum: int, _frame: object) -> NoReturn:
        on_stop()
        raise KeyboardInterrupt

    # From here on a stop request, however early, ends in the same clean shutdown.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        app.extensions.get("on_listening", lambda _url: None)(url)
        # One write: print() sends the newline separately, and a log line from another
        # thread could land in between and run on from the URL a supervisor is reading.
        sys.stdout.write(f"{name} listening on {url}\n")
        sys.stdout.flush()
        server.run()
    except KeyboardInterrupt:
        pass  # a stop that came before the loop ran; the loop handles the later ones
    finally:
        server.close()
    print(f"{name} stopped", file=sys.stderr, flush=True)
    return 0


def log_each_request(app: Flask, logger: logging.Logger) -> None:
    """One line per answered request: method, path (never the query, which may carry a
    nonce or a filter worth keeping private), status and milliseconds."""

    @app.before_request
    def start_clock() -> None:
        g.access_started = time.perf_counter()

    @app.after_request
    def log_line(response: Response) -> Response:
        elapsed = (time.perf_counter() - g.get("access_started", time.perf_counter())) * 1000
        logger.info("%s %s %s %.0f ms", request.method, request.path, response.status_code, elapsed)
        return response


def bind(app: Flask, port: int, name: str, threads: int) -> tuple[BaseWSGIServer, int]:
    """One listening socket on 127.0.0.1 with the limits above, and the port it got."""
    server = create_server(
        app,
        host=LOOPBACK_HOST,
        port=port,
        threads=threads,
        connection_limit=CONNECTION_LIMIT,
        channel_timeout=IDLE_CONNECTION_SECONDS,
        cleanup_interval=5,
        max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=MAX_TRANSPORT_BODY_BYTES,
        asyncore_use_poll=True,
        clear_untrusted_proxy_headers=True,
        ident=name,
    )
    # One host, so never a multi-socket server; and a bound server has its socket.
    assert isinstance(server, BaseWSGIServer) and server.socket is not None
    return server, server.socket.getsockname()[1]


def raise_descriptor_limit(wanted: int) -> None:
    """Each open connection is a file descriptor; lift the soft limit toward `wanted` so
    the connection limit, not the default of 1,024 descriptors, is what binds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
