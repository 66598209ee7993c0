"""execution_log.jsonl as written: one JSON line per event, safe to `tail -f`, whichever
store commits the event (a database store keeps each host's own events in its file)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from swarm_runtime.contract import Status
from swarm_runtime.queue.interface import TaskQueue
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.store.events import DatabaseEvents, EventLog
from swarm_runtime.store.state_files import Workspace

C1_CONTROLS = ["\x80", "\x85", "\x9b", "\x9d", "\x9f"]


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, workspace: Workspace) -> Iterator[TaskQueue]:
    opened: TaskQueue
    if request.param == "file":
        opened = QueueStore(workspace)
    else:
        from swarm_runtime.queue.postgres import PostgresQueueStore
        from swarm_runtime.store.database import Database

        database = Database.connect(request.getfixturevalue("database_url"))
        opened = PostgresQueueStore(database, workspace=workspace)
    yield opened
    opened.close()


@pytest.mark.parametrize("control", C1_CONTROLS)
def test_c1_control_characters_are_escaped_in_the_log(
    workspace: Workspace, store: TaskQueue, control: str
) -> None:
    """U+009B is a one-character CSI: written raw, an output could drive the terminal of
    whoever tails the log. JSON escapes C0 controls itself, but not C1."""
    output = f"before{control}31mafter é"
    event = EventLog("w1").build("t-1", Status.COMPLETED, output=output)
    assert store.log_events([event])
    raw = workspace.log_path.read_bytes()
    assert not any(bytes([0xC2, byte]) in raw for byte in range(0x80, 0xA0))
    assert f"\\u{ord(control):04x}".encode() in raw
    assert json.loads(raw)["output"] == output
    database = getattr(store, "database", None)
    if database is not None:
        assert [record for _, record in DatabaseEvents(database).read()] == [event]
