"""Packaging smoke test: the built wheel, installed in a fresh virtual environment far from
the checkout, must be the whole runtime.

Build the wheel from a copy of the checkout; check that it holds every file of
`swarm_runtime` (the panel's templates and static files too) and no other top-level
module; install it into a new venv in a temp folder (dependencies from the package index);
then, from another temp folder with nothing of the checkout on sys.path: run the design
card's imports against the installed package, start `swarm-api` and `swarm-panel`, drain a
local and an llm task (offline model) with `swarm-worker --once` until both are approved,
fetch the panel page with its script and stylesheet, and stop both servers with SIGTERM.

Run by `python3 run.py check`. Exits 1 with one line naming the step that failed.
"""

from __future__ import annotations

import ast
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "swarm_runtime"
DESIGN_CARD = (
    "worker.py",
    "swarm.py",
    "control_panel.py",
    "runtime_contract.py",
    "safety_gateway.py",
    "tool_router.py",
    "swarm_enrichment.py",
)
TASKS = {"smoke-local": ["echo hello", "--mode", "local"], "smoke-llm": ["Write a haiku"]}
LEAKY_VARIABLES = ("SWARM_", "GROQ_", "CONTROL_PANEL_")
UNSET_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
INSTALL_TIMEOUT = 600.0
COMMAND_TIMEOUT = 120.0
READY_TIMEOUT = 30.0
HTTP_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0

# Run by the fresh venv's python with -I: what it imports can only come from the wheel.
IMPORTS = """
import json, sys
checkout = sys.argv[1]
assert checkout not in sys.path, f"the checkout is on sys.path: {sys.path}"
{imports}
import importlib.resources, swarm_runtime
assert swarm_runtime.__file__.startswith(sys.prefix), swarm_runtime.__file__
panel = importlib.resources.files("swarm_runtime.panel")
missing = [n for n in sys.argv[2:] if not (panel / n).is_file()]
assert not missing, f"panel files missing from the installed package: {missing}"
print(swarm_runtime.__file__)
"""
SET_ENDPOINT = """
import sys
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace
settings = Settings.from_env()
QueueStore.for_settings(Workspace(settings.workspace), settings).set_api_endpoint(sys.argv[1])
"""
STATUSES = """
import json
from swarm_runtime.queue.store import QueueStore
from swarm_runtime.settings import Settings
from swarm_runtime.store.state_files import Workspace
settings = Settings.from_env()
document = QueueStore.for_settings(Workspace(settings.workspace), settings).load()
print(json.dumps({task.id: task.status.value for task in document.tasks}))
"""


class SmokeFailure(Exception):
    """One step of the smoke test went wrong; the message says which and why."""


def main() -> int:
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="swarm-smoke-") as temp:
            summary = smoke(Path(temp))
    except SmokeFailure as exc:
        print(f"package smoke test failed: {exc}", file=sys.stderr)
        return 1
    print(f"package smoke test passed in {time.monotonic() - started:.1f} s")
    for line in summary:
        print(f"  {line}")
    return 0


def smoke(temp: Path) -> list[str]:
    source = temp / "source"
    wheel = build_wheel(source, temp / "dist")
    files = package_files(source)
    top_level = check_wheel(wheel, files)
    python = install(wheel, temp / "venv")
    run_dir = temp / "run"
    run_dir.mkdir()
    env = clean_env(temp / "workspace")
    check_imports(python, files, run_dir, env)
    with servers(python.parent, run_dir, env) as (api_url, panel_url):
        statuses = drain_tasks(python, api_url, run_dir, env)
        assets = fetch_panel(panel_url)
    return [
        f"wheel      {wheel.name}: top level {', '.join(top_level)}",
        f"installed  in a fresh venv; the design card's {len(DESIGN_CARD)} imports resolve there",
        f"servers    swarm-api {api_url}, swarm-panel {panel_url}; both exit 0 on SIGTERM",
        f"tasks      {', '.join(f'{key} {value}' for key, value in statuses.items())}",
        f"panel      {', '.join(assets)}",
    ]


# --- the wheel ------------------------------------------------------------------------


def build_wheel(source: Path, dist: Path) -> Path:
    """Build from a copy, so the build leaves no build/ or egg-info in the checkout."""
    ignore = shutil.ignore_patterns(
        ".*", "__pycache__", "build", "dist", "*.egg-info", "workspace", "sandbox"
    )
    shutil.copytree(ROOT, source, ignore=ignore)
    run("build the wheel", [sys.executable, "-m", "build", "--wheel", "--outdir", dist, source])
    wheels = list(dist.glob("*.whl"))
    if len(wheels) != 1:
        raise SmokeFailure(f"build the wheel: expected one wheel in the output, found {wheels}")
    return wheels[0]


def check_wheel(wheel: Path, files: set[str]) -> list[str]:
    """Every file of the package is shipped, and nothing else is at the top level: root
    modules named `worker` or `swarm` would collide with others in site-packages."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    top_level = sorted({name.split("/")[0] for name in names if not is_metadata(name)})
    if top_level != [PACKAGE]:
        raise SmokeFailure(f"wheel contents: top level should be only {PACKAGE}, is {top_level}")
    missing = sorted(files - names)
    if missing:
        raise SmokeFailure(f"wheel contents: missing {', '.join(missing)}")
    return top_level


def is_metadata(name: str) -> bool:
    return name.split("/")[0].endswith((".dist-info", ".data"))


def package_files(source: Path) -> set[str]:
    """The package's files in the copy the wheel was built from, as the wheel names them."""
    files = (source / PACKAGE).rglob("*")
    return {
        path.relative_to(source).as_posix()
        for path in files
        if path.is_file() and "__pycache__" not in path.parts
    }


def install(wheel: Path, target: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(target)
    python = target / "bin" / "python"
    pip: list[Path | str] = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    pip += ["-q", wheel]
    run("install the wheel into a fresh venv", pip, cwd=target, timeout=INSTALL_TIMEOUT)
    return python


# --- the installed package ------------------------------------------------------------


def clean_env(workspace: Path) -> dict[str, str]:
    """Nothing of the checkout on the path and no provider configured: the offline model."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(LEAKY_VARIABLES) and key not in UNSET_VARIABLES
    }
    env.update(SWARM_WORKSPACE=str(workspace), PYTHONUNBUFFERED="1")
    return env


def check_imports(python: Path, files: set[str], cwd: Path, env: dict[str, str]) -> None:
    script = IMPORTS.replace("{imports}", "\n".join(design_card_imports()))
    panel = f"{PACKAGE}/panel/"
    panel_data = [
        name.removeprefix(panel)
        for name in sorted(files)
        if name.startswith(panel) and not name.endswith(".py")
    ]
    step = "import the design card's names from the installed package"
    run(step, [python, "-I", "-c", script, str(ROOT), *panel_data], cwd=cwd, env=env)


def design_card_imports() -> list[str]:
    """The `from swarm_runtime... import ...` lines of the seven root files, verbatim."""
    lines = []
    for name in DESIGN_CARD:
        tree = ast.parse((ROOT / name).read_text(), filename=name)
        lines += [
            ast.unparse(node)
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE)
        ]
    if len(lines) < len(DESIGN_CARD):
        raise SmokeFailure(f"design card: expected an import of {PACKAGE} in each root file")
    return lines


@contextmanager
def servers(bin_dir: Path, cwd: Path, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    api = Server("swarm-api", [bin_dir / "swarm-api", "--port", "0"], cwd, env)
    try:
        panel = Server("swarm-panel", [bin_dir / "swarm-panel", "--port", "0"], cwd, env)
        try:
            yield api.url, panel.url
            panel.stop()
        finally:
            panel.kill()
        api.stop()
    finally:
        api.kill()


class Server:
    """A console script that serves until SIGTERM; its URL is read from its output."""

    def __init__(self, name: str, args: list[Path | str], cwd: Path, env: dict[str, str]):
        self.name = name
        self.lines: list[str] = []
        self._urls: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for_url()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        marker = "listening on http://127.0.0.1:"
        for line in self.proc.stdout:
            self.lines.append(line)
            if marker in line:
                self._urls.put(line.split("listening on ", 1)[1].strip())
        self._urls.put(None)

    def _wait_for_url(self) -> str:
        try:
            url = self._urls.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            url = None
        if url is None:
            self.kill()
            raise SmokeFailure(f"start {self.name}: no 'listening on' line{self.output()}")
        return url

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SmokeFailure(
                f"stop {self.name}: still running {STOP_TIMEOUT:g} s after SIGTERM"
            ) from None
        self._reader.join(timeout=STOP_TIMEOUT)
        if code != 0:
            raise SmokeFailure(f"stop {self.name}: exit {code} on SIGTERM{self.output()}")

    def kill(self) -> None:
        """After a failure: leave no process behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        self._reader.join(timeout=STOP_TIMEOUT)

    def output(self) -> str:
        return "; its output ends:\n" + "".join(self.lines[-20:]) if self.lines else ""


def drain_tasks(python: Path, api_url: str, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    worker = str(python.parent / "swarm-worker")
    run("point the queue at swarm-api", [python, "-I", "-c", SET_ENDPOINT, api_url], cwd, env)
    for task_id, args in TASKS.items():
        run(f"swarm-worker add {task_id}", [worker, "add", task_id, *args], cwd, env)
    run("swarm-worker --once", [worker, "--once"], cwd, env)
    read = run("read the queue", [python, "-I", "-c", STATUSES], cwd, env)
    statuses: dict[str, str] = json.loads(read.stdout)
    finished = {task_id: statuses.get(task_id, "missing") for task_id in TASKS}
    if set(finished.values()) != {"approved"}:
        raise SmokeFailure(f"swarm-worker --once: tasks should end approved, are {finished}")
    return finished


# --- the panel page -------------------------------------------------------------------


class AssetLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.script: str | None = None
        self.stylesheet: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.script = found["src"]
        if tag == "link" and found.get("rel") == "stylesheet":
            self.stylesheet = found.get("href")


def fetch_panel(panel_url: str) -> list[str]:
    page = fetch(panel_url, "/", "text/html")
    links = AssetLinks()
    links.feed(page.decode())
    if links.script is None or links.stylesheet is None:
        raise SmokeFailure("panel page: no <script src> or <link rel=stylesheet> in the page")
    fetch(panel_url, links.script, "javascript")
    fetch(panel_url, links.stylesheet, "text/css")
    return ["/ text/html", f"{links.script} javascript", f"{links.stylesheet} text/css"]


def fetch(base: str, path: str, content_type: str) -> bytes:
    """GET with the Host the panel's guard expects (127.0.0.1:<port>)."""
    try:
        with urllib.request.urlopen(base + path, timeout=HTTP_TIMEOUT) as response:
            status, kind = response.status, response.headers["Content-Type"]
            body: bytes = response.read()
    except OSError as exc:
        raise SmokeFailure(f"panel GET {path}: {exc}") from exc
    if status != 200 or content_type not in (kind or ""):
        raise SmokeFailure(f"panel GET {path}: {status} {kind}, expected 200 {content_type}")
    return body


# --- commands -------------------------------------------------------------------------


def run(
    step: str,
    args: list[Path | str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run one command of a step; its output is shown only when it fails."""
    try:
        done = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise SmokeFailure(f"{step}: no result within {timeout:g} s") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-20:]
        details = "\n".join(output)
        raise SmokeFailure(f"{step}: exit {done.returncode}\n{details}")
    return done


if __name__ == "__main__":
    sys.exit(main())
