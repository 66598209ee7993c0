"""With a database, the panel and the command line read every host's events from its rows,
by row id, the way they read the workspace's log by byte offset without one."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import RunningProcess, child_env, read_events, run_worker, wait_until
from flask import Flask
from helpers.event_writer import LogWriter
from pydantic import SecretStr

from swarm_runtime.contract import DEFAULT_PANEL_PORT, Status
from swarm_runtime.errors import StoreUnavailable
from swarm_runtime.panel.app import create_app
from swarm_runtime.panel.stream import event_stream, parse_cursor
from swarm_runtime.queue.leases import WorkerIdentity
from swarm_runtime.queue.postgres import PostgresQueueStore
from swarm_runtime.settings import Settings
from swarm_runtime.store.database import Database
from swarm_runtime.store.event_rows import ROWS_EPOCH, RowIndex
from swarm_runtime.store.event_source import EventFilter
from swarm_runtime.store.events import EVENTS_LOCK, DatabaseEvents, EventLog, event_source
from swarm_runtime.store.log_index import LogIndex
from swarm_runtime.store.state_files import Workspace

BASE = f"http://127.0.0.1:{DEFAULT_PANEL_PORT}"
SSE_ID = re.compile(r"^id: (\S+)$", re.M)


class Host:
    """One machine of the swarm: its own workspace, the shared database, its own worker."""

    def __init__(self, workspace: Workspace, database_url: str, worker_id: str):
        self.workspace = workspace
        self.url = database_url
        self.database = Database.connect(database_url, pool_size=1)
        self.log = LogWriter(workspace, worker_id, self.database)

    def emit(self, task_id: str, status: Status, **fields: Any) -> dict[str, Any]:
        return self.log.emit(task_id, status, **fields)

    def env(self) -> dict[str, str]:
        return child_env(self.workspace, SWARM_DATABASE_URL=self.url)

    def settings(self) -> Settings:
        return Settings(workspace=self.workspace.root, database_url=SecretStr(self.url))


@pytest.fixture
def hosts(tmp_path: Any, database_url: str) -> Iterator[tuple[Host, Host]]:
    made = []
    for name in ("a", "b"):
        workspace = Workspace(tmp_path / f"host-{name}")
        workspace.ensure_layout()
        made.append(Host(workspace, database_url, f"worker-{name}"))
    yield made[0], made[1]
    for host in made:
        host.database.close()


@pytest.fixture
def history(hosts: tuple[Host, Host]) -> list[dict[str, Any]]:
    """Events of two hosts, interleaved: what either one should show, in this order."""
    a, b = hosts
    return [
        a.emit("alpha", Status.IN_PROGRESS, attempt=1, mode="local"),
        b.emit("beta", Status.IN_PROGRESS, attempt=1),
        a.emit("alpha", Status.COMPLETED, output="ok\n", exit_code=0),
        b.emit("beta", Status.FAILED, errors="boom"),
    ]


@pytest.fixture
def panel_app(hosts: tuple[Host, Host]) -> Iterator[Flask]:
    app = create_app(hosts[0].settings())
    yield app
    app.extensions["panel"].close()


def get(app: Flask, path: str, **kwargs: Any) -> Any:
    reply = app.test_client().get(path, base_url=BASE, **kwargs)
    assert reply.status_code == 200, reply.get_data(as_text=True)
    return reply.get_json()


def stream_text(app: Flask, count: int = 2, **kwargs: Any) -> str:
    reply = app.test_client().get("/api/stream", base_url=BASE, buffered=False, **kwargs)
    chunks = iter(reply.response)
    text = "".join(next(chunks).decode() for _ in range(count))
    reply.close()
    return text


def streamed_events(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :])["event"]
        for line in text.splitlines()
        if line.startswith("data: ") and '"event"' in line
    ]


def swarm(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return run_worker(host.workspace, *args, SWARM_DATABASE_URL=host.url)


def listed(host: Host, *args: str) -> list[tuple[str, str]]:
    result = swarm(host, "events", "--json", *args)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    return [(event["task_id"], event["status"]) for event in events]


# --- the source -------------------------------------------------------------------------------


def test_rows_read_back_exactly_as_the_file_holds_them(hosts: tuple[Host, Host]) -> None:
    """Same envelope, same fields, same order of keys: no reader can tell the source."""
    a, _ = hosts
    a.emit("t-1", Status.IN_PROGRESS, attempt=1, mode="llm")
    a.emit("t-1", Status.COMPLETED, output="é\x9b[31m" + "x" * 70_000, result_summary="done")
    a.emit("t-2", Status.LEASE_EXPIRED, previous_holder={"pid": 1, "host": "h"}, reason="gone")
    from_file = LogIndex(a.workspace.log_path)
    from_rows = RowIndex(a.database)
    try:
        from_file.refresh()
        from_rows.refresh()
        file_events = [item.event for item in from_file.latest(10).events]
        row_events = [item.event for item in from_rows.latest(10).events]
        assert row_events == file_events == read_events(a.workspace)
        assert [list(e) for e in row_events] == [list(e) for e in file_events]
        assert from_rows.timeline("t-1")[1] == 2 and from_rows.task("t-1") == from_file.task("t-1")
    finally:
        from_file.close()


def test_a_transition_the_database_cannot_take_leaves_no_event_and_its_retry_commits_both(
    tmp_path: Any, postgres_cluster: Any
) -> None:
    """Events went in after their transition, on their own, so those the database refused
    during an outage waited in the writer's memory. Now an event is committed with its
    transition or not at all: a transition the database cannot take fails whole, leaving
    no row and no line in the host's file, and the retry (the worker's `_commit`)
    commits both."""
    name = postgres_cluster.fresh_database()
    workspace = Workspace(tmp_path / "host")
    workspace.ensure_layout()
    database = Database.connect(postgres_cluster.url(name), pool_size=1, checkout_timeout=1.0)
    store = PostgresQueueStore(database, workspace=workspace)
    me = WorkerIdentity("w", host="host-a")
    done = EventLog("w", host="host-a").build("t", Status.COMPLETED, output="ok")

    def finished() -> bool:
        try:
            store.finish("t", me, Status.COMPLETED, events=[done])
        except StoreUnavailable:
            return False
        return True

    try:
        store.add({"id": "t", "prompt": "p"})
        assert store.claim(me, 60).task is not None
        postgres_cluster.admin(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
        postgres_cluster.admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        assert not finished()
        assert [event["status"] for event in read_events(workspace)] == ["in_progress"]
        postgres_cluster.admin(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
        wait_until(finished, timeout=30)  # the pool reconnects with its own backoff
        rows = [record for _, record in DatabaseEvents(database).read()]
        assert rows == read_events(workspace) and rows[-1] == done
        assert [(r["task_id"], r["status"], r["host"]) for r in rows] == [
            ("t", "in_progress", "host-a"),
            ("t", "completed", "host-a"),
        ]
    finally:
        store.close()
        postgres_cluster.drop(name)


def test_the_panel_says_the_database_is_back_only_when_it_is(
    tmp_path: Any, postgres_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the panel's own log files read fine during an outage, and each such
    read logged "the database is back" (every 20 s or so while it was away)."""
    caplog.set_level(logging.INFO)
    name = postgres_cluster.fresh_database()
    workspace = Workspace(tmp_path / "host")
    workspace.ensure_layout()
    url = postgres_cluster.url(name)
    app = create_app(Settings(workspace=workspace.root, database_url=SecretStr(url)))
    panel = app.extensions["panel"]
    try:
        postgres_cluster.admin(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
        postgres_cluster.admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        for follower in (panel.index, *panel.followers):
            panel.catch_up(follower)
        assert "the database is back" not in caplog.text
        assert panel.outage.error is not None
        postgres_cluster.admin(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
        wait_until(lambda: (panel.catch_up(), panel.outage.error is None)[1], timeout=30)
        assert caplog.text.count("the database is back") == 1
    finally:
        panel.close()
        postgres_cluster.drop(name)


def test_a_host_reads_the_rows_with_a_database_and_its_file_without_one(
    hosts: tuple[Host, Host],
) -> None:
    a, _ = hosts
    assert isinstance(event_source(a.workspace, a.database), RowIndex)
    assert isinstance(event_source(a.workspace, None), LogIndex)


def test_the_summaries_fold_every_hosts_rows(
    hosts: tuple[Host, Host], history: list[dict[str, Any]]
) -> None:
    rows = RowIndex(hosts[0].database)
    assert rows.refresh(budget=3) == 3 and rows.behind == 1
    assert rows.refresh() == 1 and rows.behind == 0
    assert rows.stats().events == 4 and rows.stats().tasks == 2
    beta = rows.task("beta")
    assert beta is not None and (beta.events, beta.last_status) == (2, "failed")
    assert set(rows.workers_last_seen()) == {"worker-a", "worker-b"}
    assert RowIndex(hosts[0].database, summaries=False).refresh() == 0


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        (EventFilter(), [0, 1, 2, 3]),
        (EventFilter(task="alpha"), [0, 2]),
        (EventFilter(status="in_progress"), [0, 1]),
        (EventFilter(worker="worker-b"), [1, 3]),
        (EventFilter(task="beta", status="failed", worker="worker-b"), [3]),
        (EventFilter(task="alpha", worker="worker-b"), []),
    ],
)
def test_filters_select_in_the_database(
    hosts: tuple[Host, Host],
    history: list[dict[str, Any]],
    wanted: EventFilter,
    expected: list[int],
) -> None:
    rows = RowIndex(hosts[1].database, summaries=False)
    everything = rows.latest(10)
    assert [e.event for e in rows.latest(10, wanted).events] == [history[n] for n in expected]
    assert [e.event for e in rows.latest(1, wanted).events] == [history[n] for n in expected][-1:]
    after = rows.events_after(0, 10, ROWS_EPOCH, wanted)
    assert [e.event for e in after.events] == [history[n] for n in expected]
    assert rows.latest(1, wanted).cursor == after.cursor == everything.cursor


def test_a_filtered_follower_passes_the_rows_its_filter_leaves_out(
    hosts: tuple[Host, Host], history: list[dict[str, Any]]
) -> None:
    a, b = hosts
    rows = RowIndex(a.database, summaries=False)
    page = rows.latest(10, EventFilter(task="alpha"))
    b.emit("beta", Status.REQUEUE, operator_action="requeue")
    a.emit("alpha", Status.REQUEUE, operator_action="requeue")
    b.emit("beta", Status.PENDING)
    following = rows.events_after(page.cursor, 10, page.epoch, EventFilter(task="alpha"))
    assert [e.event["status"] for e in following.events] == ["requeue"]
    assert following.cursor == rows.latest(1).cursor and not following.more
    assert rows.events_after(following.cursor, 10, page.epoch).events == []


def test_pages_by_row_id_have_no_gap_and_no_repeat(hosts: tuple[Host, Host]) -> None:
    """Two hosts append at once while a reader pages through with a small limit."""
    rows = RowIndex(hosts[0].database, summaries=False)
    seen: list[tuple[str, str]] = []
    page = rows.latest(0)

    def append(host: Host) -> None:
        for n in range(30):
            host.emit(f"{host.log.worker_id}-{n}", Status.PENDING)

    writers = [threading.Thread(target=append, args=(host,)) for host in hosts]
    for writer in writers:
        writer.start()

    def caught_up() -> bool:
        nonlocal page
        page = rows.events_after(page.cursor, 7, page.epoch)
        assert not page.reset
        seen.extend((e.event["task_id"], e.event["worker_id"]) for e in page.events)
        return len(seen) >= 60 and not any(writer.is_alive() for writer in writers)

    wait_until(caught_up, timeout=60)
    for writer in writers:
        writer.join()
    assert len(seen) == len(set(seen)) == 60
    for worker in ("worker-a", "worker-b"):
        mine = [task for task, by in seen if by == worker]
        assert mine == [f"{worker}-{n}" for n in range(30)]


@pytest.mark.parametrize("cursor, epoch", [(10**9, ROWS_EPOCH), (-1, None), (0, "a-file-epoch")])
def test_a_row_cursor_that_means_nothing_here_starts_over(
    hosts: tuple[Host, Host], history: list[dict[str, Any]], cursor: int, epoch: str | None
) -> None:
    rows = RowIndex(hosts[0].database, summaries=False)
    page = rows.events_after(cursor, 1, epoch)
    assert page.reset and [e.event["status"] for e in page.events] == ["failed"]
    assert page.cursor == rows.latest(1).cursor


def test_reads_do_not_wait_for_a_writer_holding_the_append_lock(
    hosts: tuple[Host, Host], history: list[dict[str, Any]], database_url: str
) -> None:
    import psycopg

    rows = RowIndex(hosts[0].database)
    with psycopg.connect(database_url) as writer:
        writer.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))
        done = threading.Event()

        def read_everything() -> None:
            rows.refresh()
            rows.latest(10)
            rows.events_after(0, 10)
            rows.timeline("alpha")
            done.set()

        reader = threading.Thread(target=read_everything, daemon=True)
        reader.start()
        assert done.wait(20), "a read waited for the writer's lock"
        writer.rollback()


# --- the panel --------------------------------------------------------------------------------


def test_one_panel_lists_the_events_of_every_host(
    panel_app: Flask, hosts: tuple[Host, Host], history: list[dict[str, Any]]
) -> None:
    body = get(panel_app, "/api/events?limit=10")
    assert [item["event"] for item in body["events"]] == history
    assert body["epoch"] == ROWS_EPOCH and body["cursor"] == body["events"][-1]["cursor"]
    hosts[1].emit("gamma", Status.PENDING)
    after = get(panel_app, f"/api/events?after={body['cursor']}&epoch={body['epoch']}")
    assert [item["event"]["task_id"] for item in after["events"]] == ["gamma"]


def test_the_task_detail_shows_another_hosts_task(
    panel_app: Flask, history: list[dict[str, Any]]
) -> None:
    detail = get(panel_app, "/api/tasks/beta")
    assert [item["event"] for item in detail["timeline"]] == [history[1], history[3]]
    assert detail["timeline_total"] == 2 and detail["errors"] == "boom"
    summary = get(panel_app, "/api/summary")
    assert summary["log"]["events"] == 4 and summary["log"]["tasks"] == 2


def test_the_stream_sends_every_host_and_resumes_from_a_row_id(
    panel_app: Flask, hosts: tuple[Host, Host], history: list[dict[str, Any]]
) -> None:
    text = stream_text(panel_app, count=2, query_string={"backlog": 10})
    assert streamed_events(text) == history
    ids = SSE_ID.findall(text)
    cursor, epoch = parse_cursor(ids[1])
    assert epoch == ROWS_EPOCH and cursor is not None
    later = [hosts[1].emit("gamma", Status.PENDING), hosts[0].emit("delta", Status.PENDING)]
    resumed = stream_text(panel_app, headers={"Last-Event-ID": ids[1]})
    assert streamed_events(resumed) == history[2:] + later
    bare = stream_text(panel_app, headers={"Last-Event-ID": str(cursor)})
    assert streamed_events(bare) == history[2:] + later


def test_a_live_stream_gets_every_event_two_hosts_append_once_in_row_order(
    panel_app: Flask, hosts: tuple[Host, Host]
) -> None:
    hosts[0].emit("start", Status.PENDING)
    stream = event_stream(panel_app.extensions["panel"], None, None, 1, lifetime=120)
    assert next(stream).startswith("retry:")
    assert [e["task_id"] for e in streamed_events(next(stream))] == ["start"]
    writers = [
        threading.Thread(target=lambda h=host: [h.emit(f"{n}", Status.PENDING) for n in range(20)])
        for host in hosts
    ]
    for writer in writers:
        writer.start()
    text = ""
    while len(streamed_events(text)) < 40:
        text += next(stream)
    stream.close()
    for writer in writers:
        writer.join()
    ids = [parse_cursor(token)[0] or 0 for token in SSE_ID.findall(text)]
    assert len(ids) == 40 and ids == sorted(set(ids))
    for worker in ("worker-a", "worker-b"):
        mine = [e["task_id"] for e in streamed_events(text) if e["worker_id"] == worker]
        assert mine == [f"{n}" for n in range(20)]


def test_a_database_outage_while_streaming_is_said_once_and_the_stream_goes_on(
    postgres_cluster: Any, panel_app: Flask, hosts: tuple[Host, Host]
) -> None:
    panel = panel_app.extensions["panel"]
    panel.documents.database.checkout_timeout = 1.0
    before = hosts[1].emit("before", Status.PENDING)
    stream = event_stream(panel, None, None, 10, lifetime=120)
    assert next(stream).startswith("retry:")
    assert streamed_events(next(stream)) == [before]
    postgres_cluster.stop()
    try:
        said = next(stream)
    finally:
        postgres_cluster.start_server()
    assert said.startswith("event: unavailable\n") and "id:" not in said
    message = json.loads(said.split("data: ", 1)[1])
    assert "the event store is unreachable" in message["error"] and message["retryable"]
    assert "Traceback" not in said and "secret" not in said
    assert next(stream).startswith("event: available\n")
    after = wait_until(lambda: emitted(hosts[0], "after"), timeout=30)
    assert streamed_events(next(stream)) == [after]
    stream.close()


def emitted(host: Host, task_id: str) -> dict[str, Any] | None:
    """The event, once the database took it too (the file always does)."""
    rows = RowIndex(host.database, summaries=False)
    try:
        before = rows.latest(1).cursor
        record = host.emit(task_id, Status.PENDING)
        return record if rows.latest(1).cursor > before else None
    except StoreUnavailable:
        return None


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [0, 1])
def test_events_on_either_host_lists_every_hosts_events(
    hosts: tuple[Host, Host], history: list[dict[str, Any]], reader: int
) -> None:
    host = hosts[reader]
    assert listed(host) == [(e["task_id"], e["status"]) for e in history]
    assert listed(host, "--task", "beta") == [("beta", "in_progress"), ("beta", "failed")]
    assert listed(host, "--status", "completed") == [("alpha", "completed")]
    assert listed(host, "--worker", "worker-b", "-n", "1") == [("beta", "failed")]
    result = swarm(host, "events", "--json")
    assert [json.loads(line) for line in result.stdout.splitlines()] == history


def test_show_on_either_host_gives_another_hosts_timeline(
    hosts: tuple[Host, Host], history: list[dict[str, Any]]
) -> None:
    result = swarm(hosts[0], "show", "beta", "--json")
    assert result.returncode == 0, result.stderr
    detail = json.loads(result.stdout)
    assert detail["timeline"] == [history[1], history[3]] and detail["timeline_total"] == 2
    assert swarm(hosts[1], "show", "nowhere").returncode != 0


def test_events_follow_prints_other_hosts_events_through_an_outage(
    spawn: Callable[..., RunningProcess],
    postgres_cluster: Any,
    hosts: tuple[Host, Host],
    history: list[dict[str, Any]],
) -> None:
    a, b = hosts
    follower = spawn(
        ["worker.py", "events", "--follow", "-n", "1", "--task", "beta"],
        a.env(),
        wait_for_url=False,
    )
    wait_until(lambda: "boom" in follower.output, timeout=30)
    b.emit("alpha", Status.PENDING)
    b.emit("beta", Status.REQUEUE, operator_action="requeue")
    wait_until(lambda: "operator requeue" in follower.output, timeout=30)
    postgres_cluster.stop()
    try:
        wait_until(lambda: "cannot be reached" in follower.output, timeout=60)
    finally:
        postgres_cluster.start_server()
    wait_until(lambda: emitted(b, "beta"), timeout=30)
    wait_until(lambda: "following from where it stopped" in follower.output, timeout=60)
    wait_until(lambda: follower.output.count(" beta ") >= 3, timeout=30)
    assert follower.stop(signal.SIGINT) == 0
    assert "Traceback" not in follower.output
    shown = [line.split()[2:4] for line in follower.output.splitlines() if " beta " in line]
    assert shown == [["beta", "failed"], ["beta", "requeue"], ["beta", "pending"]]
