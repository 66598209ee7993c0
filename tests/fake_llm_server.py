"""An OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

It answers `POST /v1/chat/completions` the way a real provider does, over real HTTP,
and can be told to misbehave: responses queued in `script` (a 429 with Retry-After,
a 500, a body that is not JSON) are served first, in order, then the normal reply.
`delay` holds every answer back, for timeouts and for keeping calls in flight; `gate`, when
set to an Event, holds every answer until the test sets it.

    python tests/fake_llm_server.py --port 0 --delay 0.1
    listening on http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, request
from werkzeug.serving import WSGIRequestHandler, make_server

# (prompt_tokens, completion_tokens), or a mapping with those two keys.
Usage = tuple[int, int] | Mapping[str, int]
# (status code, body, headers): a dict or list body is sent as JSON, text or bytes as
# they are (for malformed replies), None as an empty body.
ScriptedResponse = tuple[int, Any, dict[str, str]]


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Benchmarks send thousands of requests; one log line each would drown the output."""


class FakeLLMServer:
    def __init__(
        self,
        *,
        port: int = 0,
        reply_text: str = "fake reply",
        responder: Callable[[Any], str] | None = None,
        usage: Usage | None = (12, 8),
        delay: float = 0.0,
    ):
        self.reply_text = reply_text
        self.responder = responder
        self.usage = usage
        self.delay = delay
        self.script: list[ScriptedResponse] = []
        self.gate: threading.Event | None = None
        self._received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._ids = itertools.count(1)
        self._server = make_server(
            "127.0.0.1", port, self._app(), threaded=True, request_handler=_QuietHandler
        )
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Each request as {"body": parsed JSON, "headers": {...}}; a copy, so a test can read
        it while handler threads keep appending."""
        with self._lock:
            return list(self._received)

    def start(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        """A short poll interval so `close()` returns at once instead of after half a second."""
        self._server.serve_forever(poll_interval=0.01)

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _app(self) -> Flask:
        app = Flask("fake_llm_server")
        app.add_url_rule("/v1/chat/completions", "chat", self._chat, methods=["POST"])
        return app

    def _chat(self) -> Response:
        body = request.get_json(silent=True)
        with self._lock:
            self._received.append({"body": body, "headers": dict(request.headers)})
            scripted = self.script.pop(0) if self.script else None
        if self.delay:
            self._closing.wait(self.delay)
        while self.gate is not None and not self.gate.wait(0.01) and not self._closing.is_set():
            pass
        if scripted is not None:
            return _scripted_response(*scripted)
        return Response(json.dumps(self._reply(body)), mimetype="application/json")

    def _reply(self, body: Any) -> dict[str, Any]:
        text = self.responder(body) if self.responder else self.reply_text
        model = body.get("model") if isinstance(body, dict) else None
        reply: dict[str, Any] = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model or "fake-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
        if self.usage is not None:
            reply["usage"] = _usage_block(self.usage)
        return reply


def _usage_block(usage: Usage) -> dict[str, int]:
    if isinstance(usage, Mapping):
        prompt_tokens, completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
    else:
        prompt_tokens, completion_tokens = usage
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _scripted_response(status: int, body: Any, headers: dict[str, str]) -> Response:
    if isinstance(body, dict | list):
        return Response(json.dumps(body), status, headers, mimetype="application/json")
    return Response(body or b"", status, headers, mimetype="application/json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--reply", default="fake reply", help="the text of every answer")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with FakeLLMServer(port=args.port, delay=args.delay, reply_text=args.reply) as server:
        print(f"listening on {server.url}", flush=True)
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
