"""The queue's contract stays visible whatever holds it: any store's queue can be written
out as a queue.json document, and a queue.json read into an empty store."""

from __future__ import annotations

import json
from pathlib import Path

from swarm_runtime.contract import validate_queue_contract
from swarm_runtime.errors import QueueFileError
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.state import QueueState
from swarm_runtime.queue.store import parse_queue


def export_queue(store: TaskQueue, review_enabled: bool) -> bytes:
    """queue.json's bytes, exactly as the file store writes them, checked against the
    contract before anyone sees them."""
    data = QueueState(store.load(), review_enabled).encode()
    problems = validate_queue_contract(json.loads(data))
    if problems:
        raise QueueFileError(Path("(exported queue)"), problems)
    return data


def import_queue_file(store: TaskQueue, path: Path) -> int:
    """Read `path` as queue.json is read, then fill the (empty) store with it."""
    return store.import_queue(parse_queue(path, path.read_bytes()))
