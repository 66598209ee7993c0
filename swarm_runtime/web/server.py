"""Serving a Flask app on loopback only, and the command line around it, for both of the
runtime's servers."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Literal, NoReturn

from flask import Flask
from werkzeug.serving import make_server

from swarm_runtime.errors import SwarmError
from swarm_runtime.settings import Settings

LOOPBACK_HOST = "127.0.0.1"


def serve_main(
    argv: list[str] | None,
    *,
    prog: str,
    doc: str,
    name: str,
    port_setting: Literal["api_port", "panel_port"],
    create_app: Callable[[Settings], Flask],
    running: Callable[[Flask], AbstractContextManager[object]] = nullcontext,
) -> int:
    """A server's command line: `--port`, settings from the environment, logging, then
    `serve` inside `running(app)`. Settings or an app that cannot be built exit 2."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"%(asctime)s %(levelname)s {prog.removesuffix('.py')}: %(message)s",
    )
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (0 picks a free one)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(**{port_setting: args.port})
        app = create_app(settings)
    except SwarmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with running(app):
        return serve(app, getattr(settings, port_setting), name)


def serve(app: Flask, port: int, name: str) -> int:
    """Bind 127.0.0.1 (never another address), announce the URL once ready, serve until
    SIGINT or SIGTERM, then close the socket and return 0."""
    server = make_server(LOOPBACK_HOST, port, app, threaded=True)
    url = f"http://{LOOPBACK_HOST}:{server.server_port}"
    app.config["SERVER_URL"] = url

    def stop(_signum: int, _frame: object) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # One write: print() sends the newline separately, and a log line from another thread
    # could land in between and run on from the URL a supervisor is reading.
    sys.stdout.write(f"{name} listening on {url}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(f"{name} stopped", file=sys.stderr, flush=True)
    return 0
