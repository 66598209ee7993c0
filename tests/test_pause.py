"""The pause switch of many hosts: the fleet's pause and each host's in one document, in
the workspace and in PostgreSQL.

Regression: the switch had one pause for every worker, so stopping one machine of many
sharing a database meant stopping them all.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from swarm_runtime.errors import StateFileError
from swarm_runtime.store.documents import SharedDocument, shared_document
from swarm_runtime.store.pause import PauseState, pause_message, read_pause, set_pause
from swarm_runtime.store.state_files import Workspace

Opener = Callable[[], SharedDocument]


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.slow)])
def open_switch(request: pytest.FixtureRequest, workspace: Workspace) -> Iterator[Opener]:
    """Each switch opened is another process's view of the one pause document."""
    databases: list[Any] = []

    def open_one() -> SharedDocument:
        database = None
        if request.param == "postgres":
            from swarm_runtime.store.database import Database

            database = Database.connect(request.getfixturevalue("database_url"), pool_size=1)
            databases.append(database)
        return shared_document(workspace, workspace.pause_path, database)

    yield open_one
    for database in databases:
        database.close()


def test_a_switch_written_before_hosts_existed_reads_as_no_host_paused(
    workspace: Workspace,
) -> None:
    workspace.pause_path.write_text(json.dumps({"paused": True, "by": "ops", "since": "t"}))
    state = read_pause(workspace)
    assert (state.paused, state.hosts) == (True, {})
    assert pause_message(state, "host-a") == "paused by ops for every host"


def test_pausing_one_host_keeps_the_others_and_the_fleets(open_switch: Opener) -> None:
    switch, other = open_switch(), open_switch()
    set_pause(switch, True, by="ops", reason="disk", host="host-a")
    set_pause(other, True, by="ops", host="host-b")
    set_pause(switch, True, by="ops", reason="upgrade")
    set_pause(other, False, by="ops")
    state = read_pause(switch)
    assert (state.paused, state.paused_hosts()) == (False, ["host-a", "host-b"])
    set_pause(other, False, by="ops", host="host-a")
    state = read_pause(switch)
    assert state.paused_hosts() == ["host-b"] and "host-a" not in state.hosts


def test_hosts_paused_at_once_from_many_threads_are_all_kept(open_switch: Opener) -> None:
    """A read-modify-write under the document's lock: no pause overwrites another's."""
    names = [f"host-{n}" for n in range(8)]
    threads = [
        threading.Thread(target=set_pause, args=(open_switch(), True), kwargs={"by": n, "host": n})
        for n in names
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert read_pause(open_switch()).paused_hosts() == names


@pytest.mark.parametrize(
    ("state", "host", "message"),
    [
        (PauseState(), "a", None),
        (PauseState(hosts={"b": {"paused": True, "by": "ops"}}), "a", None),
        (
            PauseState(hosts={"a": {"paused": True, "by": "ops", "reason": "disk"}}),
            "a",
            "host 'a' paused by ops: disk",
        ),
        (
            PauseState(paused=True, by="cli", hosts={"a": {"paused": True, "by": "ops"}}),
            "a",
            "paused by cli for every host",
        ),
        (PauseState(paused=True), "a", "paused by an operator for every host"),
    ],
)
def test_a_worker_says_whether_its_host_or_every_host_is_paused(
    state: PauseState, host: str, message: str | None
) -> None:
    assert pause_message(state, host) == message


def test_the_fleets_switch_replaces_a_broken_document_a_hosts_does_not(
    open_switch: Opener,
) -> None:
    """A broken switch stops every worker; pausing one host over it would start the rest,
    so it is refused, while the fleet's pause and resume still work as they always did."""
    switch = open_switch()
    switch.write({"paused": "perhaps"})
    with pytest.raises(StateFileError, match="pause.json"):
        set_pause(switch, True, by="ops", host="host-a")
    with pytest.raises(StateFileError):
        read_pause(switch)
    set_pause(switch, True, by="ops", reason="repair")
    assert read_pause(switch).paused is True
    set_pause(switch, True, by="ops", host="host-a")
    set_pause(switch, False, by="ops")
    state = read_pause(switch)
    assert (state.paused, state.paused_hosts()) == (False, ["host-a"])
