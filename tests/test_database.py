"""The database behind SWARM_DATABASE_URL: the schema the runtime owns, and every way a
URL can be wrong told in one line that names the URL without its password."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

import pytest
from conftest import ROOT, Clock, child_env, read_events, wait_until
from helpers.event_writer import insert_rows
from pydantic import SecretStr

from swarm_runtime.contract import Status, validate_queue_contract
from swarm_runtime.errors import SettingsError, StoreUnavailable
from swarm_runtime.queue.leases import WorkerIdentity
from swarm_runtime.settings import Settings
from swarm_runtime.store.database import UNREACHABLE, Database, explain, redact
from swarm_runtime.store.schema import SCHEMA_VERSION, migrate, schema_version
from swarm_runtime.store.state_files import Workspace

PASSWORD = "cluster-secret-pw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@db:5432/q", "postgresql://u:***@db:5432/q"),
        ("postgresql://u@db/q", "postgresql://u@db/q"),
        ("postgresql://:s3cret@db/q", "postgresql://:***@db/q"),
        (
            "postgresql://u:p%40ss@[::1]:5/q?sslmode=require",
            "postgresql://u:***@[::1]:5/q?sslmode=require",
        ),
        ("postgresql://u:s3cret@db:notaport/q", "postgresql://u:***@db:notaport/q"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    ("said", "problem"),
    [
        ('FATAL:  password authentication failed for user "u"', "refused the credentials"),
        ('FATAL:  role "nobody" does not exist', "no such user"),
        ('FATAL:  database "nope" does not exist', "no such database"),
        ("fe_sendauth: no password supplied", "wants a password"),
        ('invalid integer value "x" for connection option "port"', "not a valid PostgreSQL URL"),
        ("connection refused\n\tIs the server running on that host", UNREACHABLE[0]),
        ("timeout expired", UNREACHABLE[0]),
    ],
)
def test_what_the_driver_says_becomes_what_to_check(said: str, problem: str) -> None:
    found, hint = explain(said)
    assert problem in found and "SWARM_DATABASE_URL" in hint


def test_the_url_is_a_setting_kept_secret() -> None:
    url = "postgresql://u:s3cret@db/q"
    settings = Settings.from_env({"SWARM_DATABASE_URL": url})
    assert settings.database_url == SecretStr(url)
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
    assert "s3cret" in settings.secret_values()
    assert Settings.from_env({}).database_url is None


def test_a_url_for_another_database_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="must be a postgresql:// URL"):
        Settings.from_env({"SWARM_DATABASE_URL": "mysql://u:p@h/d"})


# --- against a real server ----------------------------------------------------------------


def test_the_schema_is_created_once_even_by_processes_starting_together(
    database_url: str,
) -> None:
    import psycopg

    found: list[int] = []

    def start() -> None:
        with psycopg.connect(database_url) as conn:
            found.append(migrate(conn))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(found) == [0, SCHEMA_VERSION, SCHEMA_VERSION, SCHEMA_VERSION]
    with psycopg.connect(database_url) as conn:
        assert schema_version(conn) == SCHEMA_VERSION
        assert migrate(conn) == SCHEMA_VERSION


def test_a_queue_written_before_claims_by_row_is_migrated_and_claimed_in_order(
    database_url: str,
) -> None:
    """A database whose queue was written by the single-lock schema: after the migration
    its waiting tasks are claimed in queue order, dependencies still hold, and a reader
    sees the queue as it was."""
    import psycopg
    from psycopg.types.json import Json

    from swarm_runtime.queue.postgres import PostgresQueueStore
    from swarm_runtime.store.schema import MIGRATIONS

    tasks = [
        {"id": "first", "prompt": "p", "status": "pending"},
        {"id": "after", "prompt": "p", "status": "pending", "depends_on": ["first"]},
        {"id": "done", "prompt": "p", "status": "completed"},
        {"id": "second", "prompt": "p", "status": "pending"},
    ]
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE swarm_schema (version integer NOT NULL)")
        for step in MIGRATIONS[:4]:
            conn.execute(step)  # type: ignore[arg-type]
        conn.execute("INSERT INTO swarm_schema (version) VALUES (4)")
        for position, task in enumerate(tasks, start=1):
            conn.execute(
                "INSERT INTO swarm_tasks (id, position, status, changed, doc)"
                " VALUES (%s, %s, %s, 1, %s)",
                (task["id"], position, task["status"], Json(task)),
            )
        conn.execute(
            "INSERT INTO swarm_outcomes (task_id, outcome, changed) VALUES ('done', 'completed', 1)"
        )
        conn.execute("UPDATE swarm_queue SET changes = 1")
    store = PostgresQueueStore(Database.connect(database_url))
    try:
        assert [t.id for t in store.load().tasks] == ["first", "after", "done", "second"]
        me = WorkerIdentity("w")
        claimed = []
        while (task := store.claim(me, 30).task) is not None:
            claimed.append(task.id)
            store.finish(task.id, me, Status.COMPLETED)
        assert claimed == ["first", "after", "second"]
        assert store.load().completed == ["done", "first", "after", "second"]
    finally:
        store.close()


@pytest.mark.parametrize("skew", [-90.0, 90.0])
def test_a_host_whose_clock_is_off_neither_steals_a_live_lease_nor_extends_its_own(
    database_url: str, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """Lease times are the database's: a claimer on a host whose clock runs 90 s ahead
    (or behind) sees another host's 30 s lease as live, and its own lease ends when the
    database's clock says, not when its host's does."""
    import time

    from swarm_runtime.queue.postgres import PostgresQueueStore

    holder = WorkerIdentity("holder", host="host-a")
    skewed = WorkerIdentity("skewed", host="host-b")
    honest, off = (PostgresQueueStore(Database.connect(database_url)) for _ in range(2))
    try:
        honest.add_many([{"id": "held", "prompt": "p"}, {"id": "free", "prompt": "p"}])
        claimed = honest.claim(holder, 30).task
        assert claimed is not None and claimed.id == "held"
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + skew)
        outcome = off.claim(skewed, 30)
        assert outcome.task is not None and outcome.task.id == "free"
        assert outcome.reclaimed == [] and off.claim(skewed, 30).reclaimed == []
        assert outcome.task.lease is not None
        assert abs(outcome.task.lease.claimed_at - real_time()) < 10
    finally:
        honest.close()
        off.close()


def wrong_urls(cluster: Any) -> dict[str, tuple[str, str]]:
    """A URL for each way to get it wrong -> the problem reported."""
    return {
        "password": (cluster.url("postgres", password="not-it"), "refused the credentials"),
        "database": (cluster.url("no_such_db"), "no such database"),
        "refused": (
            f"postgresql://swarm:{PASSWORD}@127.0.0.1:1/postgres",
            "cannot be reached",
        ),
        "port": (f"postgresql://swarm:{PASSWORD}@127.0.0.1:notaport/x", "not a valid"),
    }


@pytest.mark.parametrize("wrong", ["password", "database", "refused", "port"])
def test_a_wrong_url_is_one_line_naming_it_without_the_password(
    postgres_cluster: Any, wrong: str
) -> None:
    url, problem = wrong_urls(postgres_cluster)[wrong]
    with pytest.raises(StoreUnavailable) as caught:
        Database.connect(url)
    message = str(caught.value)
    assert problem in message and redact(url) in message
    assert "\n" not in message
    assert PASSWORD not in message and "not-it" not in message


def test_every_command_refuses_a_wrong_url_in_one_line(
    postgres_cluster: Any, workspace: Workspace
) -> None:
    url = postgres_cluster.url("postgres", password="not-it")
    commands = (
        ["worker.py", "--once"],
        ["worker.py", "status"],
        ["swarm.py", "--port", "0"],
        ["control_panel.py", "--port", "0"],
    )
    for script in commands:
        done = subprocess.run(
            [sys.executable, *script],
            cwd=ROOT,
            env=child_env(workspace, SWARM_DATABASE_URL=url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        assert errors == [
            f"error: database {redact(url)}: the server refused the credentials; "
            "check the user and password in SWARM_DATABASE_URL"
        ], done.stderr
        assert "not-it" not in done.stdout + done.stderr


def swarm(workspace: Workspace, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "worker.py", *args],
        cwd=ROOT,
        env=child_env(workspace, SWARM_DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_commands_show_the_schema_and_move_a_queue_json_in_and_out(
    database_url: str, workspace: Workspace, tmp_path: Any
) -> None:
    version = swarm(workspace, database_url, "schema-version", "--json")
    assert version.returncode == 0, version.stderr
    shown = json.loads(version.stdout)
    assert shown["schema_version"] == shown["runtime_schema_version"] == SCHEMA_VERSION
    assert shown["store"] == redact(database_url) and PASSWORD not in version.stdout
    source = tmp_path / "queue.json"
    source.write_text(json.dumps({"tasks": [{"id": "a", "prompt": "p", "owner": "ops"}]}))
    imported = swarm(workspace, database_url, "import", str(source))
    assert imported.returncode == 0 and "imported 1 tasks" in imported.stdout, imported.stderr
    again = swarm(workspace, database_url, "import", str(source))
    assert again.returncode == 2 and "not empty" in again.stderr
    exported = swarm(workspace, database_url, "export")
    document = json.loads(exported.stdout)
    assert validate_queue_contract(document) == []
    assert document["tasks"][0]["owner"] == "ops"
    assert not workspace.queue_path.exists()  # the queue lives in the database


def answers(store: Any) -> bool:
    """The pool reconnects on its own, with a backoff, once the server is back."""
    try:
        store.version()
    except StoreUnavailable:
        return False
    return True


def test_a_lost_connection_is_replaced_and_a_stopped_server_is_waited_out(
    postgres_cluster: Any, database_url: str
) -> None:
    """Each transaction either committed or not: nothing is lost or claimed twice."""
    from swarm_runtime.queue.postgres import PostgresQueueStore

    store = PostgresQueueStore(Database.connect(database_url, checkout_timeout=3.0))
    me = WorkerIdentity("w")
    try:
        store.add_many([{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "p"}])
        name = database_url.rsplit("/", 1)[1]
        postgres_cluster.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        first = store.claim(me, 30).task
        assert first is not None and first.id == "a"
        postgres_cluster.stop()
        try:
            with pytest.raises(StoreUnavailable, match="cannot be reached") as caught:
                store.finish("a", me, Status.COMPLETED)
            assert PASSWORD not in str(caught.value)
        finally:
            postgres_cluster.start_server()
        wait_until(lambda: answers(store), timeout=30)
        store.finish("a", me, Status.COMPLETED)
        second = store.claim(me, 30).task
        assert second is not None and second.id == "b"
        doc = store.load()
        assert [t.attempts for t in doc.tasks] == [1, 1] and doc.completed == ["a"]
    finally:
        store.close()


def test_status_and_the_panel_header_say_the_store_is_unreachable(
    postgres_cluster: Any, database_url: str, workspace: Workspace
) -> None:
    from swarm_runtime.api.app import create_app as create_api
    from swarm_runtime.panel.app import create_app as create_panel

    settings = Settings(workspace=workspace.root, database_url=SecretStr(database_url))
    api, panel = create_api(settings), create_panel(settings)
    api_base = f"http://127.0.0.1:{settings.api_port}"
    panel_base = f"http://127.0.0.1:{settings.panel_port}"
    stores = [api.extensions["swarm"].store, panel.extensions["panel"].store]
    databases = [store.database for store in stores] + [
        panel.extensions["panel"].documents.database
    ]
    for database in databases:
        database.checkout_timeout = 1.0
    try:
        assert api.test_client().get("/status", base_url=api_base).status_code == 200
        postgres_cluster.stop()
        try:
            status = api.test_client().get("/status", base_url=api_base)
            header = panel.test_client().get("/api/summary", base_url=panel_base)
        finally:
            postgres_cluster.start_server()
        assert status.status_code == 503 and status.get_json()["retryable"] is True
        assert "store is unreachable" in status.get_json()["error"]
        queue = header.get_json()["queue"]
        assert "store is unreachable" in queue["error"]
        assert PASSWORD not in status.get_data(as_text=True) + header.get_data(as_text=True)
        wait_until(
            lambda: api.test_client().get("/status", base_url=api_base).status_code == 200,
            timeout=20,
        )
    finally:
        panel.extensions["panel"].close()
        stores[0].close()


# --- events ---------------------------------------------------------------------------------


def test_events_are_rows_read_from_a_cursor_with_every_field_kept(database_url: str) -> None:
    from swarm_runtime.store.events import DatabaseEvents, build_event

    database = Database.connect(database_url)
    try:
        events = DatabaseEvents(database)
        records = [
            build_event("a", "w1", Status.IN_PROGRESS, attempt=1, mode="local"),
            build_event("a", "w1", Status.COMPLETED, output="ok\n", exit_code=0),
            build_event("b", "w2", Status.LEASE_EXPIRED, previous_holder={"pid": 1}, reason="x"),
        ]
        insert_rows(database, records[:2])
        insert_rows(database, records[2:])
        ids = [event_id for event_id, _ in events.read()]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert [record for _, record in events.read()] == records
        assert list(next(iter(events.read()))[1])[:4] == [
            "task_id",
            "worker_id",
            "status",
            "timestamp",
        ]
        assert [record["status"] for _, record in events.read(after=ids[0])] == [
            "completed",
            "lease_expired",
        ]
        assert events.read(after=ids[-1]) == []
        assert [json.loads(line) for line in events.lines()] == records
    finally:
        database.close()


def test_events_inserted_from_many_threads_all_land_once_in_order(database_url: str) -> None:
    from swarm_runtime.store.events import DatabaseEvents, build_event

    databases = [Database.connect(database_url, pool_size=1) for _ in range(4)]
    try:

        def append(index: int) -> None:
            for n in range(0, 25, 5):
                batch = range(n, n + 5)
                records = [build_event(f"t{index}-{m}", f"w{index}", Status.PENDING) for m in batch]
                insert_rows(databases[index], records)

        threads = [threading.Thread(target=append, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        read = DatabaseEvents(databases[0]).read(limit=1000)
        assert len(read) == 100 and len({record["task_id"] for _, record in read}) == 100
        for index in range(4):
            mine = [r["task_id"] for _, r in read if r["worker_id"] == f"w{index}"]
            assert mine == [f"t{index}-{n}" for n in range(25)]
    finally:
        for database in databases:
            database.close()


def test_workers_announce_themselves_in_the_database_for_every_host(
    database_url: str, workspace: Workspace
) -> None:
    from swarm_runtime.queue.presence import PresenceBeacon, live_workers

    database = Database.connect(database_url)
    try:
        here = PresenceBeacon(workspace, WorkerIdentity("here"), database)
        remote = WorkerIdentity("remote", pid=1, host="another-host")
        PresenceBeacon(workspace, remote, database).announce(paused=True)
        here.announce(paused=False)
        seen = live_workers(workspace, database=database)
        assert [(p.worker_id, p.paused) for p in seen] == [("here", False), ("remote", True)]
        assert not list(workspace.workers_dir.glob("*.json"))
        here.withdraw()
        assert [p.worker_id for p in live_workers(workspace, database=database)] == ["remote"]
    finally:
        database.close()


def test_a_worker_whose_clock_runs_behind_is_still_seen_alive(
    database_url: str, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Presence is judged on the database's clock: a host 90 s behind the others (its
    announcements would look 90 s old, so dead) and a reader 90 s ahead both see the
    worker alive, with its last announcement a moment ago on the reader's clock."""
    import time

    from swarm_runtime.queue.presence import PresenceBeacon, live_workers

    database = Database.connect(database_url)
    real_time = time.time
    try:
        monkeypatch.setattr(time, "time", lambda: real_time() - 90)
        PresenceBeacon(workspace, WorkerIdentity("slow", host="host-b"), database).announce(
            paused=False
        )
        monkeypatch.setattr(time, "time", lambda: real_time() + 90)
        seen = live_workers(workspace, database=database)
        assert [p.worker_id for p in seen] == ["slow"]
        assert abs(seen[0].last_seen - time.time()) < 10
    finally:
        database.close()


def test_a_finish_commits_its_events_with_it_or_none_of_them(
    database_url: str, workspace: Workspace, clock: Clock
) -> None:
    """On the database a transition and its events are one transaction: a finish refused
    for a lost lease leaves no row; a committed one leaves its events as rows, in order,
    and in this host's file. A claim by row commits its start, as a full claim does."""
    from swarm_runtime.errors import LeaseLostError
    from swarm_runtime.queue.postgres import PostgresQueueStore
    from swarm_runtime.store.events import DatabaseEvents, EventLog

    store = PostgresQueueStore(Database.connect(database_url), workspace=workspace, clock=clock)
    me, other = WorkerIdentity("w1"), WorkerIdentity("w2")
    rows = DatabaseEvents(store.database)
    try:
        store.add({"id": "t", "prompt": "p"})
        claim = store.claim(me, 30)
        assert claim.task is not None and claim.started_at is not None
        clock.now += 60
        assert store.claim(other, 30).task is not None  # takes over the expired lease
        late = EventLog("w1").build("t", Status.COMPLETED, output="late")
        with pytest.raises(LeaseLostError):
            store.finish("t", me, Status.COMPLETED, events=[late])
        before = [(r["worker_id"], r["status"]) for _, r in rows.read()]
        assert before == [("w1", "in_progress"), ("w2", "lease_expired"), ("w2", "in_progress")]
        assert rows.read()[0][1]["started_at"] == claim.started_at
        log = EventLog("w2")
        step = log.build("t", Status.IN_PROGRESS, output="halfway")
        done = log.build("t", Status.COMPLETED, output="ok")
        store.finish("t", other, Status.COMPLETED, events=[step, done])
        committed = [record for _, record in rows.read()]
        assert committed[-2:] == [step, done] and len(committed) == 5
        assert read_events(workspace) == committed
    finally:
        store.close()


def test_a_workers_note_goes_in_only_while_it_holds_the_task(
    database_url: str, workspace: Workspace
) -> None:
    """`log_events` by row: a note for a task its writer no longer holds (or that is not
    there) is refused whole, and leaves no row."""
    from swarm_runtime.queue.postgres import PostgresQueueStore
    from swarm_runtime.store.events import DatabaseEvents, build_event

    store = PostgresQueueStore(Database.connect(database_url), workspace=workspace)
    me, other = WorkerIdentity("w1"), WorkerIdentity("w2")
    try:
        store.add({"id": "t", "prompt": "p"})
        assert store.claim(me, 30).task is not None
        note = build_event("t", "w1", Status.IN_PROGRESS, output="retrying")
        assert store.log_events([note], holder=me)
        assert not store.log_events([note], holder=other)
        assert not store.log_events([note, build_event("gone", "w1", Status.PENDING)], holder=me)
        rows = [record for _, record in DatabaseEvents(store.database).read()]
        assert [r["status"] for r in rows] == ["in_progress", "in_progress"] and rows[1] == note
        assert read_events(workspace) == rows
    finally:
        store.close()
