"""Serving a Flask app on loopback only, for both of the runtime's servers."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

from flask import Flask
from werkzeug.serving import make_server

LOOPBACK_HOST = "127.0.0.1"


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
