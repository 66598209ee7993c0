"""The panel in a real headless Chromium, driven by Playwright, against a real control_panel.py.

These tests skip (saying why) when Playwright or Debian's chromium is missing, unless
SWARM_REQUIRE_BROWSER=1, as in CI, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningProcess, child_env, read_queue, wait_until, write_queue
from fake_llm_server import FakeLLMServer
from helpers.event_writer import LogWriter
from helpers.screenshot_panel import CHROMIUM_ARGS, take

from swarm_runtime.contract import ExecutionRecord, Status
from swarm_runtime.demo import DEMO_TASKS
from swarm_runtime.llm.budget import BudgetLedger
from swarm_runtime.phases.rewards import RewardBook
from swarm_runtime.queue.presence import PresenceBeacon
from swarm_runtime.queue.store import WorkerIdentity
from swarm_runtime.store.pause import read_pause
from swarm_runtime.store.state_files import Workspace, append_line

UI_TIMEOUT_MS = 10_000
LIVE_EVENT_DEADLINE_MS = 2_000
XSS = "<script>alert(1)</script>"


def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (python3 run.py test installs it)"
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the whole module; each test gets a fresh context."""
    reason = browser_missing()
    if reason:
        if os.environ.get("SWARM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SWARM_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def panel(spawn: Callable[..., RunningProcess], workspace: Workspace) -> RunningProcess:
    return spawn(["control_panel.py", "--port", "0"], child_env(workspace))


class Watched:
    """A page and everything it complained about: console errors, uncaught errors, dialogs."""

    def __init__(self, page: Any):
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture
def watched(browser: Any, panel: RunningProcess) -> Iterator[Watched]:
    """Set up after the panel, so the page closes before the panel is stopped."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    yield Watched(page)
    context.close()


def open_panel(watched: Watched, panel: RunningProcess, fragment: str = "") -> Any:
    page = watched.page
    page.goto(panel.url + "/" + fragment)
    page.locator("#stream-state", has_text="live").wait_for()
    page.locator("#connection", has_text="connected").wait_for()
    return page


def text_of(page: Any, selector: str) -> str:
    return page.locator(selector).inner_text()


def test_the_page_loads_without_console_errors(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    write_queue(
        workspace,
        [{"id": "t1", "prompt": "hello"}, {"id": "t2", "prompt": "again", "depends_on": ["t1"]}],
        panel.url,
    )
    LogWriter(workspace, "worker-1").emit("t1", Status.IN_PROGRESS)
    page = open_panel(watched, panel)
    page.locator("#task-rows tr").nth(1).wait_for()
    page.locator("#events li").first.wait_for()
    for tab in ("review", "safety", "rewards", "spend", "tasks"):
        page.click(f'.tab-button[data-tab="{tab}"]')
    page.click("#task-rows tr >> nth=0 >> button.link")
    page.locator("#detail-timeline li, #detail-count").first.wait_for()
    assert text_of(page, "#api-state") in {"reachable", "answering with errors"}
    assert watched.errors == []


def test_an_event_appended_to_the_log_appears_in_the_page(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    page = open_panel(watched, panel)
    appended = time.monotonic()
    LogWriter(workspace, "worker-9").emit(
        "late-task", Status.COMPLETED, result_summary="appended after the page loaded"
    )
    row = page.locator("#events li", has_text="late-task")
    row.wait_for(timeout=LIVE_EVENT_DEADLINE_MS)
    assert time.monotonic() - appended < LIVE_EVENT_DEADLINE_MS / 1000
    assert "appended after the page loaded" in row.inner_text()
    assert watched.errors == []


def test_a_task_added_from_the_page_lands_in_queue_json(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    write_queue(workspace, [{"id": "first", "prompt": "p"}], panel.url)
    page = open_panel(watched, panel)
    page.click("#add-task summary")
    page.select_option("#add-mode", "local")
    submit_task(
        page,
        "from-the-page",
        "added from-the-page",
        text="echo added from the browser",
        deps="first",
    )
    task = wait_until(lambda: queued(workspace, "from-the-page"))
    assert (task["mode"], task["command"], task["depends_on"]) == (
        "local",
        "echo added from the browser",
        ["first"],
    )
    page.locator("#task-rows tr", has_text="from-the-page").wait_for()
    page.locator("#events li", has_text="operator: add").wait_for()
    assert watched.errors == []


def test_a_task_pinned_from_the_page_keeps_its_host_and_labels(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    write_queue(workspace, [], panel.url)
    page = open_panel(watched, panel)
    page.click("#add-task summary")
    submit_task(page, "pinned", "added pinned", text="p", host="host-a", labels="gpu, big-disk")
    task = wait_until(lambda: queued(workspace, "pinned"))
    assert (task["host"], task["worker_labels"]) == ("host-a", ["gpu", "big-disk"])
    submit_task(page, "bad", "host 'two words' is not a name", text="p", host="two words")
    page.click("#task-rows tr >> nth=0 >> button.link")
    page.locator("#detail-facts", has_text="gpu, big-disk").wait_for()
    assert [e for e in watched.errors if "400 (BAD REQUEST)" not in e] == []  # the refusal


def submit_task(page: Any, task_id: str, said: str, **fields: str) -> None:
    """Fill the add form's id and `fields` (text, deps, host, labels), submit it, and
    wait until the form says `said`."""
    page.fill("#add-id", task_id)
    for name, value in fields.items():
        page.fill(f"#add-{name}", value)
    page.click("#add-submit")
    page.locator("#add-result", has_text=said).wait_for()


def queued(workspace: Workspace, task_id: str) -> dict[str, Any] | None:
    return next((t for t in read_queue(workspace)["tasks"] if t["id"] == task_id), None)


def test_the_add_form_keeps_its_kind_after_a_submit(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    """Guards against the form resetting Kind to llm: a second command, typed without
    touching Kind again, was queued as an llm prompt."""
    write_queue(workspace, [], panel.url)
    page = open_panel(watched, panel)
    page.click("#add-task summary")
    page.select_option("#add-mode", "local")
    for task_id in ("cmd-1", "cmd-2"):
        page.fill("#add-id", task_id)
        page.fill("#add-text", f"echo {task_id}")
        page.click("#add-submit")
        page.locator("#add-result", has_text=f"added {task_id}").wait_for()
        assert page.input_value("#add-mode") == "local"
        assert text_of(page, "#add-text-label").startswith("Command")
        assert page.input_value("#add-id") == page.input_value("#add-text") == ""
    second = wait_until(lambda: queued(workspace, "cmd-2"))
    assert (second["mode"], second["command"], second.get("prompt")) == (
        "local",
        "echo cmd-2",
        None,
    )
    assert watched.errors == []


def test_requeue_and_pause_work_from_the_page(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    write_queue(
        workspace,
        [{"id": "broken", "prompt": "p", "status": "failed", "last_error": "it broke"}],
        panel.url,
    )
    page = open_panel(watched, panel)
    page.locator("#task-rows tr", has_text="it broke").locator("button.action-requeue").click()
    wait_until(lambda: read_queue(workspace)["tasks"][0]["status"] == "requeue")
    page.locator("#task-rows tr", has_text="broken").locator(
        ".status", has_text="requeue"
    ).wait_for()

    page.locator("#pause-button", has_text="Pause workers").click()
    wait_until(lambda: workspace.pause_path.exists() and read_pause(workspace).paused)
    page.locator("#run-state", has_text="paused").wait_for()
    page.locator("#pause-button", has_text="Resume workers").click()
    wait_until(lambda: not read_pause(workspace).paused)
    page.locator("#run-state", has_text="no worker alive").wait_for()
    assert watched.errors == []


def test_an_idle_worker_shows_as_alive_until_it_stops(
    watched: Watched,
    panel: RunningProcess,
    spawn: Callable[..., RunningProcess],
    workspace: Workspace,
) -> None:
    """Claiming says running only while a worker is alive to claim: with none, an
    unpaused queue used to read "running" although nothing would ever run."""
    write_queue(workspace, [], panel.url)
    page = open_panel(watched, panel)
    page.locator("#workers-state", has_text="none alive").wait_for()
    page.locator("#run-state", has_text="no worker alive").wait_for()
    assert "running" not in text_of(page, "#run-state")
    worker = spawn(["worker.py", "--worker-id", "idle-7"], child_env(workspace), wait_for_url=False)
    page.locator("#workers-state", has_text="1 alive").wait_for()
    assert text_of(page, "#workers-note") == "idle-7 idle"
    page.locator("#run-state", has_text="running").wait_for()
    assert worker.stop() == 0
    page.locator("#workers-state", has_text="none alive").wait_for()
    page.locator("#run-state", has_text="no worker alive").wait_for()
    assert watched.errors == []


def test_task_output_containing_a_script_shows_as_text(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    execution = ExecutionRecord(
        attempt=1,
        status=Status.COMPLETED,
        output=XSS,
        result_summary='<img src=x onerror="alert(2)">',
    )
    write_queue(
        workspace,
        [
            {
                "id": "xss",
                "prompt": XSS,
                "status": "completed",
                "execution": execution.model_dump(mode="json"),
            }
        ],
        panel.url,
    )
    LogWriter(workspace, "worker-1").emit("xss", Status.COMPLETED, output=XSS, errors=XSS)
    page = open_panel(watched, panel, "#task=xss")
    page.locator("#detail-output", has_text=XSS).wait_for()
    assert text_of(page, "#detail-output") == XSS
    assert text_of(page, "#detail-prompt") == XSS
    assert text_of(page, "#detail-result") == '<img src=x onerror="alert(2)">'
    page.locator("#events li", has_text=XSS).wait_for()
    assert page.locator("#detail script, #events script, #detail img, #events img").count() == 0
    assert watched.dialogs == []
    assert watched.errors == []


def test_the_live_list_holds_a_bounded_number_of_rows(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    events = LogWriter(workspace, "worker-1")
    page = open_panel(watched, panel)
    for number in range(230):
        events.emit(f"bulk-{number}", Status.PENDING)
    page.locator("#events li", has_text="bulk-229").wait_for()
    assert page.locator("#events li").count() == 200


# Lines a node's text takes: rects that overlap vertically share a line.
LINES_OF = """(node) => {
    const range = document.createRange();
    range.selectNodeContents(node);
    const rects = [...range.getClientRects()].filter((r) => r.height > 0);
    rects.sort((a, b) => a.top - b.top);
    let lines = 0;
    let bottom = -Infinity;
    for (const rect of rects) {
        if (rect.top >= bottom - 1) lines += 1;
        bottom = Math.max(bottom, rect.bottom);
    }
    return lines;
}"""
STYLE_OF = "(node) => [getComputedStyle(node).overflowWrap, getComputedStyle(node).wordBreak]"
LONG_IDS = [f"{name}-a-rather-long-identifier-for-a-task" for name in ("alpha", "beta", "gamma")]


def assert_ids_on_one_line(cells: Any) -> int:
    """Every id in these cells stays on one line with its comma, in a cell that breaks
    only between ids. Returns how many ids were checked."""
    checked = 0
    for number in range(cells.count()):
        cell = cells.nth(number)
        assert cell.evaluate(STYLE_OF) == ["normal", "normal"]
        words = cell.locator(".id, .id-item")
        for index in range(words.count()):
            assert words.nth(index).evaluate(LINES_OF) == 1, words.nth(index).inner_text()
        checked += cell.locator(".id").count()
    return checked


def test_ids_never_split_inside_a_word(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    """Guards against ids broken mid-word in the depends-on and rewards columns."""
    tasks = [{"id": task_id, "prompt": "p"} for task_id in LONG_IDS]
    write_queue(
        workspace, [*tasks, {"id": "joined", "prompt": "p", "depends_on": LONG_IDS}], panel.url
    )
    RewardBook(workspace).grant(
        LONG_IDS[0], "resident_default", max_budget=0.1, budget_used=0.002, review_confidence=0.9
    )
    watched.page.set_viewport_size({"width": 1100, "height": 900})
    page = open_panel(watched, panel)
    joined = page.locator("#task-rows tr", has_text="joined")
    joined.wait_for()
    assert assert_ids_on_one_line(joined.locator("td:nth-child(1), td:nth-child(6)")) == 4
    assert joined.locator("span.ids").evaluate(LINES_OF) > 1, "the list wraps, between ids"
    page.click('.tab-button[data-tab="rewards"]')
    page.locator("#grant-rows tr", has_text="resident_default").wait_for()
    words = ", ".join(f"#grant-rows td:nth-child({n})" for n in (1, 2, 5, 6))
    assert assert_ids_on_one_line(page.locator(words)) == 5, "task, identity, state, reason"
    assert assert_ids_on_one_line(page.locator("#balance-rows td:nth-child(1)")) == 1
    assert watched.errors == []


def test_at_800_px_a_wide_table_scrolls_in_its_box_not_off_the_page(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    """Guards against the right-hand columns (actions among them) cut off at 800 px."""
    long_id = "a-task-whose-id-is-long-enough-to-make-the-table-wider-than-the-window"
    error = "command exited with code 2: ls: cannot access 'missing-folder': No such file"
    failed = {"id": long_id, "prompt": "p", "status": "failed", "last_error": error}
    write_queue(
        workspace, [failed, {"id": "later", "prompt": "p", "depends_on": [long_id]}], panel.url
    )
    watched.page.set_viewport_size({"width": 800, "height": 900})
    page = open_panel(watched, panel)
    page.locator("#task-rows tr", has_text=error).wait_for()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    last = page.locator("#tasks thead th").last
    last.scroll_into_view_if_needed()
    edge = last.bounding_box()
    assert edge is not None and edge["x"] + edge["width"] <= 800
    box = page.locator("#tasks").locator("xpath=..")
    assert box.evaluate("(node) => getComputedStyle(node).overflowX") == "auto"
    assert box.evaluate("(node) => node.scrollWidth > node.clientWidth"), "the table is wider"
    page.locator("#task-rows tr", has_text=error).locator("button.action-requeue").click()
    wait_until(lambda: queued(workspace, long_id)["status"] == "requeue")
    assert watched.errors == []


def test_expandable_timeline_rows_show_a_marker(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    write_queue(workspace, [{"id": "t1", "prompt": "p"}], panel.url)
    events = LogWriter(workspace, "worker-1")
    events.emit("t1", Status.IN_PROGRESS, mode="llm", attempt=1)
    events.emit("t1", Status.PENDING)
    page = open_panel(watched, panel, "#task=t1")
    page.locator("#events li").nth(1).wait_for()
    summary = page.locator("#detail-timeline summary")
    marker = "getComputedStyle(document.querySelector('#detail-timeline summary'), '::before')"
    page.wait_for_function(f"{marker}.content === '\"▸\"'")
    summary.click()
    page.wait_for_function(f"{marker}.content === '\"▾\"'")
    page.locator("#detail-timeline dd", has_text="llm").wait_for()
    assert page.locator("#detail-timeline li").count() == 2
    assert page.locator("#detail-timeline .entry").count() == 1, "nothing to expand, no marker"
    LogWriter(workspace, "worker-1").emit("t1", Status.IN_PROGRESS, mode="local")
    page.locator("#detail-timeline dd", has_text="local").wait_for(state="attached")
    assert page.locator("#detail-timeline details[open] dd", has_text="llm").is_visible()
    assert watched.errors == []


def test_changing_only_the_hash_opens_that_task(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    write_queue(workspace, [{"id": "t1", "prompt": "p"}, {"id": "t2", "prompt": "q"}], panel.url)
    page = open_panel(watched, panel)
    page.locator("#task-rows tr").nth(1).wait_for()
    assert page.locator("#detail").is_hidden()
    for task_id, prompt in (("t2", "q"), ("t1", "p")):
        page.evaluate(f"location.hash = '#task={task_id}'")
        page.locator("#detail-title", has_text=task_id).wait_for()
        assert page.locator("#detail").is_visible()
        assert text_of(page, "#detail-prompt") == prompt
    page.evaluate("location.hash = ''")
    page.locator("#detail").wait_for(state="hidden")
    assert watched.errors == []


def test_money_reads_as_dollars_and_an_empty_chart_says_so(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    """Guards against $0.0000 everywhere and a blank spend chart. The format: "$0" for
    nothing, two decimals from a cent up, else up to four significant digits."""
    write_queue(workspace, [], panel.url)
    page = open_panel(watched, panel)
    page.locator("#budget-state", has_text="$0 of $5.00").wait_for()
    assert text_of(page, "#budget-note") == "reserved $0 · remaining $5.00"
    page.click('.tab-button[data-tab="spend"]')
    page.locator("#spend-chart", has_text="no spend yet").wait_for()
    assert page.locator("#spend-chart .bar").count() == 0

    assert text_of(page, "#spend-models") == "no paid LLM call yet"
    ledger = BudgetLedger(workspace, 5.0)
    ledger.settle(ledger.admit(0.01, task_id="t1", model="model-a").granted(), 0.0012)
    earlier = datetime.now(UTC) - timedelta(minutes=3)
    for moment, cost in ((earlier, 0.0004), (earlier, 0.0008), (datetime.now(UTC), 1.5)):
        line = {"timestamp": moment.isoformat(), "event": "API_CALL_SUCCESS", "cost": cost}
        append_line(workspace, workspace.api_audit_path, line)
    page.locator("#budget-state", has_text="$0.0012 of $5.00").wait_for()
    page.click('.tab-button[data-tab="spend"]')
    page.locator("#spend-rows td", has_text="$1.50").wait_for()
    costs = page.locator("#spend-rows td:nth-child(3)").all_inner_texts()
    assert costs == ["$1.50", "$0.0012"]
    assert text_of(page, "#spend-note").startswith("total $1.50")
    assert page.locator("#spend-chart .bar").count() == 2
    assert page.locator("#spend-chart .chart-empty").count() == 0
    assert page.locator("#spend-models td").all_inner_texts() == ["model-a", "1", "$0.0012"]
    assert watched.errors == []


def test_the_review_tab_explains_approved_and_needs_qa(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    page = open_panel(watched, panel)
    page.click('.tab-button[data-tab="review"]')
    explain = page.locator("#gate-explain")
    assert explain.is_visible()
    text = explain.inner_text()
    for word in ("critic", "approved", "needs_qa", "rejected", "person"):
        assert word in text
    assert watched.errors == []


def test_the_screenshot_shows_what_the_demo_seeds(browser: Any, tmp_path: Path) -> None:
    """docs/panel.png comes from demo.seed over real processes, so it cannot drift from
    the demo again (it once showed tasks the demo no longer seeded)."""
    out = tmp_path / "panel.png"
    shot = take(out, browser)
    assert out.read_bytes().startswith(b"\x89PNG")
    assert {task["id"] for task in DEMO_TASKS} <= set(shot.queued)
    assert sorted(shot.shown) == sorted(shot.queued)


def test_a_malformed_queue_shows_as_that_not_as_an_unreachable_api(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    workspace.queue_path.write_bytes(b'{"version": "1.1", "tasks": [\n  {"id": "a",}\n]}\n')
    page = open_panel(watched, panel)
    page.locator("#queue-note", has_text="queue.json").wait_for()
    assert "line 2" in text_of(page, "#queue-note")
    page.locator("#api-state", has_text="unknown").wait_for()
    assert "unreachable" not in text_of(page, "#tile-api")


def test_the_header_shows_the_provider_and_whether_it_answers(
    watched: Watched,
    panel: RunningProcess,
    spawn: Callable[..., RunningProcess],
    workspace: Workspace,
) -> None:
    with FakeLLMServer() as provider:
        env = child_env(workspace, SWARM_LLM_BASE_URL=provider.url, SWARM_LLM_MODEL="gpt-4o-mini")
        api = spawn(["swarm.py", "--port", "0"], env)
        write_queue(workspace, [], str(api.url))
        page = open_panel(watched, panel)
        host = provider.url.split("//", 1)[1].split("/", 1)[0]
        page.locator("#api-note", has_text=f"provider {host} answers").wait_for()
        assert "model: gpt-4o-mini" in text_of(page, "#api-note")


def test_on_a_database_the_page_shows_every_hosts_events_and_where_they_are(
    browser: Any,
    spawn: Callable[..., RunningProcess],
    workspace: Workspace,
    database_url: str,
    tmp_path: Path,
) -> None:
    """Another host's event reaches this panel's live list through the database, and the
    log tile says the events are in the database rather than a file of 0 B."""
    from swarm_runtime.store.database import Database

    panel = spawn(
        ["control_panel.py", "--port", "0"], child_env(workspace, SWARM_DATABASE_URL=database_url)
    )
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        watched = Watched(context.new_page())
        page = open_panel(watched, panel)
        elsewhere = Workspace(tmp_path / "other-host")
        elsewhere.ensure_layout()
        database = Database.connect(database_url)
        try:
            LogWriter(elsewhere, "worker-b", database).emit("remote-task", Status.IN_PROGRESS)
        finally:
            database.close()
        page.locator("#events li", has_text="remote-task").wait_for()
        page.locator("#log-note", has_text="in the database").wait_for()
        assert "in the queue" in text_of(page, "#queue-note")
        assert watched.errors == []
    finally:
        context.close()


# --- many hosts on one queue ------------------------------------------------------------


def announce_two_hosts(workspace: Workspace) -> None:
    """Workers of two hosts, as their presence says (a database would hold the same rows)."""
    for worker_id, host in (("a1", "host-a"), ("b1", "host-b"), ("b2", "host-b")):
        PresenceBeacon(workspace, WorkerIdentity(worker_id, host=host)).announce(paused=False)


def test_the_workers_view_shows_both_hosts_and_the_host_filter_narrows_every_list(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    announce_two_hosts(workspace)
    write_queue(
        workspace,
        [
            {"id": "for-a", "prompt": "p", "host": "host-a"},
            {"id": "for-b", "prompt": "p", "host": "host-b"},
        ],
        panel.url,
    )
    LogWriter(workspace, "a1", host="host-a").emit("event-of-a", Status.IN_PROGRESS)
    LogWriter(workspace, "b1", host="host-b").emit("event-of-b", Status.IN_PROGRESS)
    page = open_panel(watched, panel)
    page.click('.tab-button[data-tab="workers"]')
    rows = page.locator("#worker-rows tr")
    page.locator("#worker-rows tr", has_text="b2").wait_for()
    assert rows.count() == 3
    assert "host-a" in rows.filter(has_text="a1").inner_text()
    assert "idle" in rows.filter(has_text="b1").inner_text()
    page.locator("#events li", has_text="event-of-a").wait_for()

    page.select_option("#filter-host", "host-b")
    page.wait_for_function("document.querySelectorAll('#worker-rows tr').length === 2")
    assert "a1" not in text_of(page, "#worker-rows")
    assert page.locator("#host-rows tr").count() == 1
    assert page.locator("#events li", has_text="event-of-a").is_hidden()
    assert page.locator("#events li", has_text="event-of-b").is_visible()
    page.click('.tab-button[data-tab="tasks"]')
    page.wait_for_function("document.querySelectorAll('#task-rows tr').length === 1")
    assert "for-b" in text_of(page, "#task-rows")
    assert watched.errors == []


def test_pausing_one_host_from_the_page_writes_it_and_leaves_the_others_running(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    announce_two_hosts(workspace)
    write_queue(workspace, [], panel.url)
    page = open_panel(watched, panel)
    page.click('.tab-button[data-tab="workers"]')
    page.locator('button.host-pause[data-host="host-b"]', has_text="Pause host").click()
    wait_until(lambda: read_pause(workspace).paused_hosts() == ["host-b"])
    assert read_pause(workspace).paused is False
    page.locator("#host-rows tr", has_text="host-b").locator("td", has_text="paused").wait_for()
    page.locator("#run-note", has_text="paused host(s): host-b").wait_for()
    assert "running" in page.locator("#host-rows tr", has_text="host-a").inner_text()
    page.locator('button.host-pause[data-host="host-b"]', has_text="Resume host").click()
    wait_until(lambda: read_pause(workspace).paused_hosts() == [])
    page.locator('button.host-pause[data-host="host-b"]', has_text="Pause host").wait_for()
    assert watched.errors == []


def test_a_task_pinned_to_a_host_with_no_live_worker_says_what_it_waits_for(
    watched: Watched, panel: RunningProcess, workspace: Workspace
) -> None:
    announce_two_hosts(workspace)
    write_queue(
        workspace,
        [{"id": "stranded", "prompt": "p", "host": "host-z"}, {"id": "free", "prompt": "p"}],
        panel.url,
    )
    reason = "waiting for a worker on host 'host-z' (none alive)"
    page = open_panel(watched, panel)
    row = page.locator("#task-rows tr", has_text="stranded")
    row.locator(".row-waiting", has_text=reason).wait_for()
    assert page.locator("#task-rows tr", has_text="free").locator(".row-waiting").count() == 0
    row.locator("button.link").first.click()
    page.locator("#detail-facts dd", has_text=reason).wait_for()
    assert "host-z" in text_of(page, "#detail-facts")
    assert watched.errors == []
