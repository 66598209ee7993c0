"""Both servers answer every refusal and every failure as a JSON ErrorBody.

A handler refuses by raising `HttpError` anywhere. Flask's default is an HTML page, which
a script cannot parse and which could echo a request back as markup; a fallback for
anything unexpected names only the exception's type, never its message, because a
message can carry a path or a secret.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from swarm_runtime.contract import ErrorBody
from swarm_runtime.errors import SwarmError


class HttpError(SwarmError):
    """A refusal with its status code and the JSON ErrorBody that explains it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        rule: str | None = None,
        retryable: bool = False,
        headers: dict[str, str] | None = None,
        safety_report: dict[str, Any] | None = None,
    ):
        self.status = status
        self.body = ErrorBody(
            error=message,
            field=field,
            rule=rule,
            retryable=retryable,
            safety_report=safety_report,
        )
        self.headers = dict(headers or {})
        super().__init__(message)


def json_error(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body.model_dump(mode="json", exclude_none=True))
    response.status_code = status
    response.headers.update(headers or {})
    return response


def install_json_fallbacks(app: Flask, log: logging.Logger) -> Callable[[Exception], Response]:
    """Register the handlers of refusals, HTTP errors and everything else; returns the
    catch-all so a more specific handler can defer to it."""

    @app.errorhandler(HttpError)
    def refused(exc: HttpError) -> Response:
        return json_error(exc.status, exc.body, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return json_error(exc.code or 500, ErrorBody(error=exc.description or exc.name))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in %s", request.path)
        return json_error(500, ErrorBody(error=f"internal error: {type(exc).__name__}"))

    return unexpected
