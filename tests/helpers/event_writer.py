"""Events written straight into a log, for the tests of what reads one (the panel, the
command line, the metrics). The runtime commits every event with the queue transaction
it belongs to (`queue.transactions`); these tests care only what the log holds."""

from __future__ import annotations

from typing import Any

from swarm_runtime.contract import Event, Status
from swarm_runtime.store.database import Database
from swarm_runtime.store.events import EventLog, insert_events
from swarm_runtime.store.state_files import Workspace, append_line


class LogWriter:
    """One writer's events, appended to the workspace's log and, with a database, inserted
    as rows too, each in a transaction of its own."""

    def __init__(
        self,
        workspace: Workspace,
        worker_id: str,
        database: Database | None = None,
        host: str | None = None,
    ):
        self.workspace = workspace
        self.worker_id = worker_id
        self.database = database
        self.events = EventLog(worker_id, host=host)

    def emit(
        self, task_id: str, status: Status, kind: type[Event] | None = None, **fields: Any
    ) -> dict[str, Any]:
        record = self.events.build(task_id, status, kind, **fields)
        append_line(self.workspace, self.workspace.log_path, record)
        if self.database is not None:
            insert_rows(self.database, [record])
        return record


def insert_rows(database: Database, records: list[dict[str, Any]]) -> None:
    """`records` as event rows, in one transaction."""
    with database.transaction() as conn:
        insert_events(conn, records)
