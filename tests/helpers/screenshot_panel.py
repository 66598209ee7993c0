"""Takes docs/panel.png: the control panel over the demo workspace `python3 run.py` makes.

    .venv/bin/python tests/helpers/screenshot_panel.py [OUT.png]

Like run.py, it starts real swarm.py and control_panel.py processes (on free ports, over
a temporary workspace), seeds the demo's tasks with `demo.seed` (the same DEMO_TASKS and
the same `/plan` request), lets a worker drain the queue with `--once`, then keeps one
worker alive and photographs the page in headless Chromium.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_runtime import demo
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.store.state_files import Workspace

ROOT = Path(__file__).resolve().parents[2]

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
WORKER = "worker-a"
DRAIN_TIMEOUT_SECONDS = 300
UI_TIMEOUT_MS = 30_000
VIEWPORT = {"width": 1440, "height": 960}


def clean_env(workspace: Workspace) -> dict[str, str]:
    """Nothing from the host's own runtime settings reaches the picture."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SWARM_", "GROQ_", "CONTROL_PANEL_"))
    }
    env.update(SWARM_WORKSPACE=str(workspace.root), PYTHONUNBUFFERED="1")
    return env


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on http://127.0.0.1:" in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, line.rsplit("listening on ", 1)[1].strip()
    raise RuntimeError(f"{args[0]} did not start")


def drain(env: dict[str, str]) -> None:
    """One worker runs every runnable demo task, as run.py's worker would."""
    subprocess.run(
        [sys.executable, "worker.py", "--once", "--worker-id", WORKER],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=DRAIN_TIMEOUT_SECONDS,
    )


@dataclass(frozen=True)
class Shot:
    queued: list[str]
    shown: list[str]


def photograph(browser: Any, url: str, out: Path, tasks: int) -> list[str]:
    """The ids of the task rows in the picture."""
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.goto(url)
        page.locator("#task-rows tr").nth(tasks - 1).wait_for()
        page.locator("#events li").nth(10).wait_for()
        page.locator("#api-state", has_text="reachable").wait_for()
        page.locator("#workers-state", has_text="1 alive").wait_for()
        page.locator("#run-state", has_text="running").wait_for()
        page.locator("#stream-state", has_text="live").wait_for()
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        return page.locator("#task-rows tr").evaluate_all("rows => rows.map(r => r.dataset.taskId)")
    finally:
        page.close()


def stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def take(out: Path, browser: Any) -> Shot:
    """Photograph the demo workspace with `browser` (a launched Playwright browser)."""
    with tempfile.TemporaryDirectory() as folder:
        workspace = Workspace(Path(folder) / "workspace")
        env = clean_env(workspace)
        running: list[subprocess.Popen[str]] = []
        try:
            api, api_url = start(["swarm.py", "--port", "0"], env)
            running.append(api)
            panel, url = start(["control_panel.py", "--port", "0"], env)
            running.append(panel)
            seeded = demo.seed(workspace.root, api_url)
            drain(env)
            running.append(
                subprocess.Popen(
                    [sys.executable, "worker.py", "--worker-id", WORKER],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            )
            shown = photograph(browser, url, out, len(seeded))
            queued = [task.id for task in QueueStore(workspace).load().tasks]
        finally:
            for proc in reversed(running):
                stop(proc)
    return Shot(queued=queued, shown=shown)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "panel.png"
    # demo.seed reads its settings from this process's environment
    for key in [k for k in os.environ if k.startswith(("SWARM_", "GROQ_"))]:
        del os.environ[key]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        try:
            take(out, browser)
        finally:
            browser.close()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
