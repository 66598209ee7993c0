"""The panel in a real headless Chromium, driven by Playwright, against a real control_panel.py.

These tests skip (saying why) when Playwright or Debian's chromium is missing, unless
SWARM_REQUIRE_BROWSER=1, as in CI, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import RunningProcess, child_env, read_queue, wait_until, write_queue

from swarm_runtime.contract import ExecutionRecord, Status
from swarm_runtime.store.events import EventLog
from swarm_runtime.store.pause import read_pause
from swarm_runtime.store.state_files import Workspace

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
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
    EventLog(workspace, "worker-1").emit("t1", Status.IN_PROGRESS)
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
    EventLog(workspace, "worker-9").emit(
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
    page.fill("#add-id", "from-the-page")
    page.select_option("#add-mode", "local")
    page.fill("#add-text", "echo added from the browser")
    page.fill("#add-deps", "first")
    page.click("#add-submit")
    page.locator("#add-result", has_text="added from-the-page").wait_for()
    task = wait_until(
        lambda: next(
            (t for t in read_queue(workspace)["tasks"] if t["id"] == "from-the-page"), None
        )
    )
    assert (task["mode"], task["command"], task["depends_on"]) == (
        "local",
        "echo added from the browser",
        ["first"],
    )
    page.locator("#task-rows tr", has_text="from-the-page").wait_for()
    page.locator("#events li", has_text="operator: add").wait_for()
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
    page.locator("#run-state", has_text="running").wait_for()
    assert watched.errors == []


def test_an_idle_worker_shows_as_alive_until_it_stops(
    watched: Watched,
    panel: RunningProcess,
    spawn: Callable[..., RunningProcess],
    workspace: Workspace,
) -> None:
    write_queue(workspace, [], panel.url)
    page = open_panel(watched, panel)
    page.locator("#workers-state", has_text="none alive").wait_for()
    worker = spawn(["worker.py", "--worker-id", "idle-7"], child_env(workspace), wait_for_url=False)
    page.locator("#workers-state", has_text="1 alive").wait_for()
    assert text_of(page, "#workers-note") == "idle-7 idle"
    assert worker.stop() == 0
    page.locator("#workers-state", has_text="none alive").wait_for()
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
    EventLog(workspace, "worker-1").emit("xss", Status.COMPLETED, output=XSS, errors=XSS)
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
    events = EventLog(workspace, "worker-1")
    page = open_panel(watched, panel)
    for number in range(230):
        events.emit(f"bulk-{number}", Status.PENDING)
    page.locator("#events li", has_text="bulk-229").wait_for()
    assert page.locator("#events li").count() == 200
