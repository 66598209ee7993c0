"""The JSON body of a request, parsed the same way by both servers.

Werkzeug's parser lets a body nested thousands deep escape as a RecursionError, and
accepts `\\ud800`, a lone surrogate no UTF-8 file or reply can hold; both would surface
later as a 500. Here each is a 400 that says what is wrong."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import request

from swarm_runtime.web.json_errors import HttpError

MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_body() -> Any:
    """The parsed body, or None when it is absent, not sent as JSON or not JSON at all."""
    if not request.is_json:
        return None
    data = request.get_data(cache=True)
    if not data:
        return None
    try:
        value = json.loads(data)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        return None
    _refuse_deep_or_surrogates(value)
    return value


def _refuse_deep_or_surrogates(value: Any) -> None:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            _refuse_surrogates(item)
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            children = [*item, *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


def _too_deep() -> HttpError:
    return HttpError(400, f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels", field="body")


def _refuse_surrogates(text: str) -> None:
    if _SURROGATE.search(text):
        raise HttpError(
            400, "the JSON body holds a lone UTF-16 surrogate (\\ud800-\\udfff)", field="body"
        )
