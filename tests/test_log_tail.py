"""Following execution_log.jsonl by byte offset: increments, partial lines, cuts, rotation."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from helpers.event_writer import LogWriter

from swarm_runtime.contract import Status
from swarm_runtime.panel.log_tail import EVENT_PREFIX, JsonlFold, JsonlTail, LogIndex
from swarm_runtime.store import log_index
from swarm_runtime.store.event_source import EventFilter, IndexedEvent
from swarm_runtime.store.events import build_event, event_source
from swarm_runtime.store.state_files import Workspace, append_line


def line(task_id: str, status: Status = Status.COMPLETED, worker: str = "w1", **fields) -> bytes:
    return (json.dumps(build_event(task_id, worker, status, **fields)) + "\n").encode()


def append(path: Path, *chunks: bytes) -> None:
    with open(path, "ab") as handle:
        for chunk in chunks:
            handle.write(chunk)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "execution_log.jsonl"


@pytest.fixture
def index(log_path: Path) -> LogIndex:
    built = LogIndex(log_path)
    yield built
    built.close()


def test_the_fast_path_matches_what_the_event_log_writes(workspace: Workspace) -> None:
    """A change in the writer's key order would silently send every line down the slow path."""
    LogWriter(workspace, "worker-1").emit("t-1", Status.IN_PROGRESS, output="x")
    written = workspace.log_path.read_bytes()
    match = EVENT_PREFIX.match(written)
    assert match is not None
    assert match.group(1) == b"t-1" and match.group(3) == b"in_progress"


def test_a_missing_log_is_an_empty_index(index: LogIndex) -> None:
    assert index.refresh() == 0
    assert index.stats().events == 0
    assert index.backlog(10).events == []


def test_refresh_reads_only_the_bytes_appended_since_the_last_call(
    index: LogIndex, log_path: Path
) -> None:
    append(log_path, line("a"), line("b"))
    first = log_path.stat().st_size
    assert index.refresh() == first
    extra = line("a", Status.APPROVED)
    append(log_path, extra)
    assert index.refresh() == len(extra)
    assert index.refresh() == 0
    stats = index.stats()
    assert (stats.events, stats.lines, stats.tasks) == (3, 3, 2)
    assert index.task("a").last_status == "approved"
    assert index.task("a").events == 2


def test_a_partial_last_line_waits_until_it_is_complete(index: LogIndex, log_path: Path) -> None:
    whole = line("a")
    append(log_path, whole[:25])
    index.refresh()
    assert index.stats().events == 0
    assert index.stats().malformed_count == 0
    append(log_path, whole[25:])
    index.refresh()
    assert index.stats().events == 1
    assert index.end == len(whole)
    assert index.recent(1)[0].event["task_id"] == "a"


def test_lines_torn_by_a_concurrent_writer_are_never_reported(
    workspace: Workspace,
) -> None:
    """The writer appends whole lines with one write(); the reader must never split one."""
    index = LogIndex(workspace.log_path)
    done = threading.Event()

    def write() -> None:
        for number in range(1500):
            event = build_event(
                f"t-{number % 7}", "writer", Status.COMPLETED, output="y" * (number % 300)
            )
            append_line(workspace, workspace.log_path, event, durable=False)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not done.is_set():
        index.refresh()
    writer.join()
    index.refresh()
    assert index.stats().events == 1500
    assert index.stats().malformed_count == 0


def test_truncation_starts_over_under_a_new_epoch(index: LogIndex, log_path: Path) -> None:
    append(log_path, line("a"), line("b"), line("c"))
    index.refresh()
    old_epoch, old_end = index.epoch, index.end
    log_path.write_bytes(line("z"))
    index.refresh()
    stats = index.stats()
    assert (stats.events, stats.resets, stats.tasks) == (1, 1, 1)
    assert index.epoch != old_epoch
    assert index.task("a") is None
    page = index.events_after(old_end, 10, old_epoch)
    assert page.reset and [e.event["task_id"] for e in page.events] == ["z"]


def test_a_rewrite_in_place_to_a_longer_file_is_noticed(index: LogIndex, log_path: Path) -> None:
    """Same inode, no shrink seen between two refreshes: only the content tells."""
    append(log_path, line("a"), line("b"))
    index.refresh()
    with open(log_path, "r+b") as handle:
        handle.truncate(0)
        handle.write(line("x", output="much longer than before " * 20) * 3)
    index.refresh()
    assert index.stats().resets == 1
    assert index.task("x").events == 3
    assert index.task("a") is None


def test_rotation_indexes_the_new_file_from_its_first_byte(index: LogIndex, log_path: Path) -> None:
    append(log_path, line("old-1"), line("old-2"))
    index.refresh()
    log_path.rename(log_path.with_suffix(".1"))
    index.refresh()
    assert index.stats().events == 0, "a log moved away leaves nothing to show"
    append(log_path, line("new", worker="w9"))
    index.refresh()
    assert [e.event["task_id"] for e in index.recent(10)] == ["new"]
    assert index.workers_last_seen().keys() == {"w9"}


def test_rotation_to_a_file_of_the_same_size_is_noticed(index: LogIndex, log_path: Path) -> None:
    append(log_path, line("aaaa"))
    index.refresh()
    replacement = log_path.with_suffix(".new")
    replacement.write_bytes(line("bbbb"))
    os.replace(replacement, log_path)
    index.refresh()
    assert index.task("bbbb") is not None and index.task("aaaa") is None


def test_a_malformed_line_is_reported_with_its_line_number_and_skipped(
    index: LogIndex, log_path: Path
) -> None:
    append(
        log_path,
        line("a"),
        b"{not json\n",
        b"\n",
        line("b"),
        b'{"task_id": 3}\n',
        b"[1]\n",
        line("c"),
    )
    index.refresh()
    stats = index.stats()
    assert stats.events == 3
    assert stats.lines == 7
    assert [(m.line, m.reason.split(":")[0]) for m in stats.malformed] == [
        (2, "invalid JSON"),
        (5, "not an event"),
        (6, "not a JSON object"),
    ]
    assert stats.malformed[0].offset == len(line("a"))


def test_a_hand_written_event_in_another_key_order_is_indexed(
    index: LogIndex, log_path: Path
) -> None:
    append(log_path, b'{"status": "pending", "task_id": "by-hand", "note": "\\u00e9"}\n')
    index.refresh()
    assert index.task("by-hand").last_status == "pending"
    assert index.task("by-hand").last_timestamp is None


def test_a_timeline_is_read_from_the_task_offsets(index: LogIndex, log_path: Path) -> None:
    for number in range(10):
        append(log_path, line("a", output=f"a{number}"), line("b", output=f"b{number}"))
    index.refresh()
    events, total = index.timeline("a", limit=3)
    assert total == 10
    assert [e.event["output"] for e in events] == ["a7", "a8", "a9"]
    assert index.timeline("nobody") == ([], 0)


def test_reads_cost_the_same_whatever_the_size_of_the_log(
    index: LogIndex, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timeline, backlog and cursor reads seek to known offsets; they never rescan the log."""
    template = line("t-0", output="z" * 200)
    filler = b"".join(template.replace(b'"t-0"', f'"t-{n % 500}"'.encode()) for n in range(20_000))
    append(log_path, filler, line("needle", output="found"))
    index.refresh()
    read = []
    real_pread = JsonlTail.pread

    def counting(self: JsonlTail, length: int, offset: int) -> bytes:
        data = real_pread(self, length, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(JsonlTail, "pread", counting)
    assert index.timeline("needle")[0][0].event["output"] == "found"
    assert len(index.backlog(100).events) == 100
    assert len(index.events_after(index.recent(50)[0].offset, 50).events) == 50
    assert sum(read) < 2 * 1024 * 1024 < log_path.stat().st_size


def test_events_after_pages_through_the_log_by_cursor(index: LogIndex, log_path: Path) -> None:
    append(log_path, *(line(f"t{n}") for n in range(5)))
    index.refresh()
    first = index.events_after(0, 2)
    assert [e.event["task_id"] for e in first.events] == ["t0", "t1"]
    assert first.more and not first.reset
    second = index.events_after(first.cursor, 10, first.epoch)
    assert [e.event["task_id"] for e in second.events] == ["t2", "t3", "t4"]
    assert second.cursor == index.end and not second.more
    assert index.events_after(second.cursor, 10, second.epoch).events == []


@pytest.mark.parametrize(
    "cursor, epoch",
    [
        (5, None),  # inside a line
        (10**9, None),  # past the end
        (-1, None),
        (0, "stale-epoch"),
    ],
)
def test_a_cursor_that_means_nothing_here_resets_to_the_backlog(
    index: LogIndex, log_path: Path, cursor: int, epoch: str | None
) -> None:
    append(log_path, line("a"), line("b"))
    index.refresh()
    page = index.events_after(cursor, 1, epoch)
    assert page.reset
    assert [e.event["task_id"] for e in page.events] == ["b"]
    assert page.cursor == index.end


def test_a_bounded_refresh_catches_up_step_by_step(index: LogIndex, log_path: Path) -> None:
    append(log_path, *(line(f"t{n}") for n in range(50)))
    assert index.refresh(max_bytes=1000) == 1000
    assert index.behind > 0
    while index.refresh(max_bytes=1000):
        pass
    assert index.behind == 0
    assert index.stats().events == 50


def test_recent_keeps_a_bounded_window(log_path: Path) -> None:
    index = LogIndex(log_path, recent=3)
    append(log_path, *(line(f"t{n}") for n in range(10)))
    index.refresh()
    assert [e.event["task_id"] for e in index.recent(100)] == ["t7", "t8", "t9"]


def test_a_fold_sees_each_record_once_and_forgets_on_reset(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    seen: list[dict] = []
    fold = JsonlFold(path, seen.append, seen.clear)
    append(path, b'{"n": 1}\n', b"oops\n", b'{"n": 2}\n')
    fold.refresh()
    fold.refresh()
    assert [r["n"] for r in seen] == [1, 2]
    assert fold.malformed.count == 1 and fold.malformed.latest[0].line == 2
    path.write_bytes(b'{"n": 3}\n')
    fold.refresh()
    assert [r["n"] for r in seen] == [3]
    assert fold.malformed.count == 0


def test_the_block_size_does_not_change_what_is_indexed(
    index: LogIndex, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines longer than a read block are stitched together across blocks."""
    monkeypatch.setattr(log_index, "READ_BLOCK_BYTES", 64)
    append(log_path, line("long", output="q" * 1000), line("short"))
    index.refresh()
    assert index.stats().events == 2
    assert index.timeline("long")[0][0].event["output"] == "q" * 1000


HISTORY = [("a", "in_progress", "w1"), ("b", "in_progress", "w2"), ("a", "completed", "w1")]


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        (EventFilter(), [0, 1, 2, 3]),
        (EventFilter(task="a"), [0, 2]),
        (EventFilter(status="in_progress"), [0, 1]),
        (EventFilter(worker="w2"), [1, 3]),
        (EventFilter(task="b", status="failed", worker="w2"), [3]),
        (EventFilter(task="a", worker="w2"), []),
        (EventFilter(task="nobody"), []),
    ],
)
def test_a_filter_reads_only_the_events_it_admits(
    index: LogIndex, log_path: Path, wanted: EventFilter, expected: list[int]
) -> None:
    """The command line's --task/--status/--worker, on the file (the database's twin is in
    test_events_from_database)."""
    history = [*HISTORY, ("b", "failed", "w2")]
    lines = [line(task, Status(status), worker) for task, status, worker in history]
    append(log_path, lines[0], lines[1], b"{not json\n", lines[2], lines[3])
    index.refresh()
    shown = [history[n][:2] for n in expected]
    assert envelopes(index.latest(10, wanted).events) == shown
    assert envelopes(index.latest(1, wanted).events) == shown[-1:]
    after = index.events_after(0, 10, index.epoch, wanted)
    assert envelopes(after.events) == shown and after.cursor == index.end and not after.more
    assert index.stats().malformed_count == 1, "reading again reports nothing twice"


def test_a_filtered_page_passes_the_lines_its_filter_leaves_out(
    index: LogIndex, log_path: Path
) -> None:
    append(log_path, line("a"), line("b"), line("b"), line("a"))
    index.refresh()
    first = index.events_after(0, 1, index.epoch, EventFilter(task="a"))
    assert envelopes(first.events) == [("a", "completed")] and first.more
    second = index.events_after(first.cursor, 1, first.epoch, EventFilter(task="a"))
    assert envelopes(second.events) == [("a", "completed")] and second.cursor == index.end


def test_latest_reads_past_the_recent_window_when_asked_for_more(log_path: Path) -> None:
    index = LogIndex(log_path, recent=3)
    append(log_path, *(line(f"t{n}") for n in range(10)))
    index.refresh()
    assert [e.event["task_id"] for e in index.latest(5).events] == [f"t{n}" for n in range(5, 10)]


def test_without_a_database_events_are_read_from_the_workspace_log(workspace: Workspace) -> None:
    source = event_source(workspace, None)
    assert isinstance(source, LogIndex) and source.path == workspace.log_path


def envelopes(events: list[IndexedEvent]) -> list[tuple[str, str]]:
    return [(e.event["task_id"], e.event["status"]) for e in events]
