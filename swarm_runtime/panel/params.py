"""Query arguments, JSON bodies and task ids from a request, or a 400 naming the field."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from swarm_runtime.contract import is_valid_task_id
from swarm_runtime.web.json_body import json_body
from swarm_runtime.web.json_errors import HttpError

M = TypeVar("M", bound=BaseModel)


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise HttpError(400, f"{name} must be between {low} and {high}", field=name)
    return value


def choice_arg(name: str, allowed: Collection[str], default: str | None = None) -> str | None:
    """An optional argument that must be one of `allowed`; empty means `default`."""
    value = request.args.get(name) or default
    if value is not None and value not in allowed:
        raise HttpError(400, f"{name} must be one of {', '.join(allowed)}", field=name)
    return value


def parse_body(model: type[M]) -> M:
    """An absent body counts as `{}`, so bodiless POSTs (resume) validate like any other."""
    raw = json_body()
    if raw is None and not request.get_data():
        raw = {}
    if not isinstance(raw, dict):
        raise HttpError(400, "the request body must be a JSON object", field="body")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise HttpError(400, f"invalid field {field!r}: {first['msg']}", field=field) from None


def checked_id(task_id: str) -> str:
    if not is_valid_task_id(task_id):
        raise HttpError(400, "task ids match [A-Za-z0-9._-]{1,128}", field="id")
    return task_id
