"""One command to install and start the runtime, one to check it, one to run the tests.

    python3 run.py          install what running needs into .venv, then start swarm.py,
                            control_panel.py and worker.py on ./workspace (with demo
                            tasks) until Ctrl-C; `python3 run.py --help` for the options
                            (`--with-postgres` keeps the shared state in a PostgreSQL
                            server of the workspace's own, started and stopped with them)
    python3 run.py check    install into .venv (with test extras), then run in order
                            ruff check, ruff format --check, mypy, lint-imports and the
                            packaging smoke test (tests/helpers/package_smoke.py: the wheel
                            in a fresh venv); stops at the first step that fails
    python3 run.py test     install into .venv (with test extras), then run the test suite
    python3 run.py bench    install into .venv (with test extras, and the bench extras, the
                            peers that the `peers` benchmark measures, when it is among those
                            run), then run the benchmarks and print one table (`bench
                            --quick`, `bench queue panel`: see benchmarks/run_all.py)

Only the standard library is used until the virtual environment exists; then the
script re-executes itself inside it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from swarm_runtime.processes import stop_gracefully

if TYPE_CHECKING:
    from swarm_runtime.store.local_postgres import LocalPostgres

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_BIN = VENV / "bin"
VENV_PYTHON = VENV_BIN / "python"
STAMP = VENV / ".swarm-installed"
READY_TIMEOUT_SECONDS = 30.0
CHECKS = (
    ("ruff check", ["ruff", "check", "."]),
    ("ruff format --check", ["ruff", "format", "--check", "."]),
    ("mypy", ["mypy"]),
    ("lint-imports", ["lint-imports"]),
    ("packaging smoke test", ["python", "tests/helpers/package_smoke.py"]),
)


def ensure_environment(
    *, with_test_extras: bool, with_postgres: bool = False, with_bench_extras: bool = False
) -> None:
    """Create .venv and install the project once per version of pyproject.toml: what
    running needs for the runtime (with the PostgreSQL driver when `--with-postgres` or
    SWARM_DATABASE_URL asks for a database), plus the test extras (pytest, playwright, the
    linters, the driver) for `check`, `test` and `bench`, and the bench extras (the peers
    that the `peers` benchmark measures) for a `bench` that runs it. The first install
    needs the package index."""
    if sys.version_info < (3, 11):  # noqa: UP036 (runs under any python3, before the venv)
        sys.exit(f"swarm-runtime needs Python 3.11 or newer (this is {sys.version.split()[0]})")
    version = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    installed = STAMP.read_text() if STAMP.exists() else ""
    wanted = {
        "with_test_extras": with_test_extras,
        "with_postgres": with_postgres,
        "with_bench_extras": with_bench_extras,
    }
    if not needs_install(installed, version, **wanted):
        return
    if not VENV_PYTHON.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    target, extras = install_target(**wanted)
    print(f"installing swarm-runtime ({extras}) into .venv ...", flush=True)
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-e", target], check=True)
    STAMP.write_text(f"{version} {extras}")


# What the stamp may say was installed, each holding everything the ones before it hold.
INSTALLS = ("run", "postgres", "test", "bench")


def needs_install(
    stamp: str,
    version: str,
    *,
    with_test_extras: bool,
    with_postgres: bool = False,
    with_bench_extras: bool = False,
) -> bool:
    """The stamp says which pyproject.toml was installed, and with which extras; running
    needs the project, `--with-postgres` its driver too, checking and testing the test
    extras, benchmarking everything."""
    installed = stamp.split()
    if installed[:1] != [version] or len(installed) != 2 or installed[1] not in INSTALLS:
        return True
    _, wanted = install_target(
        with_test_extras=with_test_extras,
        with_postgres=with_postgres,
        with_bench_extras=with_bench_extras,
    )
    return INSTALLS.index(installed[1]) < INSTALLS.index(wanted)


def install_target(
    *, with_test_extras: bool, with_postgres: bool = False, with_bench_extras: bool = False
) -> tuple[str, str]:
    """What pip installs, and the word the stamp keeps for it."""
    if with_bench_extras:
        return f"{ROOT}[test,bench]", "bench"
    if with_test_extras:
        return f"{ROOT}[test]", "test"
    return (f"{ROOT}[postgres]", "postgres") if with_postgres else (str(ROOT), "run")


def inside_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


COMMANDS = ("up", "check", "test", "bench")


def parse_up(argv: list[str]) -> argparse.Namespace:
    """The runtime's own options. Parsed before anything is installed, so `--help` and a
    mistyped option answer at once."""
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Install what running needs into .venv, then start swarm.py, "
        "control_panel.py and a worker on one workspace until Ctrl-C. Other commands: "
        "check, test [pytest args], bench [names] (see the top of run.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path(os.environ.get("SWARM_WORKSPACE") or "workspace"),
        help="the workspace folder (SWARM_WORKSPACE)",
    )
    parser.add_argument(
        "--api-port",
        type=int,
        default=port_default("SWARM_API_PORT", 8420),
        help="port of swarm.py on 127.0.0.1, 0 for any free one (SWARM_API_PORT)",
    )
    parser.add_argument(
        "--panel-port",
        type=int,
        default=port_default("CONTROL_PANEL_PORT", 8421),
        help="port of the control panel on 127.0.0.1 (CONTROL_PANEL_PORT)",
    )
    parser.add_argument(
        "--with-postgres",
        action="store_true",
        help="keep the queue, events, budget and the rest of the shared state in a "
        "PostgreSQL server of the workspace's own (data in WORKSPACE/postgres/, the URL "
        "for other terminals in WORKSPACE/.swarm/database_url), started and stopped with "
        "the runtime; needs PostgreSQL's server programs (apt-get install postgresql, or "
        "SWARM_POSTGRES_BIN)",
    )
    return parser.parse_args(argv)


def port_default(variable: str, default: int) -> int:
    raw = os.environ.get(variable, "").strip()
    return int(raw) if raw.isdigit() else default


def main(argv: list[str]) -> int:
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command is None and argv and not argv[0].startswith("-"):
        print(
            f"run.py: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    options = parse_up(argv[1:] if command == "up" else argv) if command in (None, "up") else None
    with_postgres = options is not None and options.with_postgres
    if with_postgres and (problem := postgres_problem()):
        print(f"run.py: {problem}", file=sys.stderr)
        return 1
    if not inside_venv():
        extras = command in ("check", "test", "bench")
        driver = with_postgres or bool(os.environ.get("SWARM_DATABASE_URL", "").strip())
        peers = command == "bench" and runs_peers(argv[1:])
        ensure_environment(with_test_extras=extras, with_postgres=driver, with_bench_extras=peers)
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), str(Path(__file__).resolve()), *argv])
    if command == "check":
        return run_checks()
    if command == "test":
        return subprocess.call([sys.executable, "-m", "pytest", *argv[1:]], cwd=ROOT)
    if command == "bench":
        runner = ROOT / "benchmarks" / "run_all.py"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}  # the fake provider lives there
        return subprocess.call([sys.executable, str(runner), *argv[1:]], cwd=ROOT, env=env)
    assert options is not None
    return start_runtime(options)


def runs_peers(bench_args: list[str]) -> bool:
    """Whether `run.py bench ARGS` runs the peers benchmark: when it names no benchmark
    (all run), or names `peers`. `--log-mb`'s value is not a name."""
    names = [
        arg
        for before, arg in zip(["", *bench_args], bench_args, strict=False)
        if not arg.startswith("-") and before != "--log-mb"
    ]
    return not names or "peers" in names


def postgres_problem() -> str | None:
    """Why `--with-postgres` cannot start a server here, asked before installing anything."""
    if os.environ.get("SWARM_DATABASE_URL", "").strip():
        return (
            "SWARM_DATABASE_URL is set, and --with-postgres starts a database of its own: "
            "unset the variable, or leave out --with-postgres to use the database it names"
        )
    from swarm_runtime.store.local_postgres import missing_server

    return missing_server()


def run_checks() -> int:
    """Each step is a tool from .venv/bin, run from the checkout with its own config."""
    started = time.monotonic()
    for step, (tool, *args) in CHECKS:
        print(f"--- {step}", flush=True)
        code = subprocess.call([str(VENV_BIN / tool), *args], cwd=ROOT)
        if code != 0:
            print(f"check failed: {step} (exit {code})", file=sys.stderr)
            return 1
    steps = ", ".join(step for step, _ in CHECKS)
    print(f"check passed ({steps}) in {time.monotonic() - started:.0f} s")
    return 0


# --- the running runtime (inside .venv) -----------------------------------------------


def start_runtime(options: argparse.Namespace) -> int:
    """Both servers first, then the demo tasks, then the worker: nothing is seeded into a
    runtime that is not up. Every child is told run.py's pid and stops if run.py dies,
    even by `kill -9`; a hangup (the terminal closed) stops them like Ctrl-C."""
    from swarm_runtime import demo
    from swarm_runtime.errors import SwarmError

    workspace = options.workspace.resolve()
    env = {
        **os.environ,
        "SWARM_WORKSPACE": str(workspace),
        "SWARM_API_PORT": str(options.api_port),
        "CONTROL_PANEL_PORT": str(options.panel_port),
        "SWARM_SUPERVISOR_PID": str(os.getpid()),
        "PYTHONUNBUFFERED": "1",
    }
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    children: list[Child] = []
    database: LocalPostgres | None = None
    try:
        if options.with_postgres:
            database = start_database(workspace, env)
        api = Child.start("swarm", ["swarm.py"], env, children)
        panel = Child.start("panel", ["control_panel.py"], env, children)
        api_url = api.wait_for_url("--api-port")
        panel_url = panel.wait_for_url("--panel-port")
        demo.seed(workspace, api_url)
        Child.start("worker", ["worker.py"], worker_env(env, api_url), children)
        print(demo.banner(workspace, api_url, panel_url), flush=True)
        if database is not None:
            print(database_banner(database), flush=True)
        while not stop.wait(0.5):
            dead = [c for c in children if c.proc.poll() is not None]
            if dead:
                print(f"{dead[0].name} exited with code {dead[0].proc.returncode}; stopping")
                return 1
        return 0
    except (RuntimeError, SwarmError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        if database is not None:
            database.shutdown()
        print("all processes stopped", flush=True)


def worker_env(env: dict[str, str], api_url: str) -> dict[str, str]:
    """The worker sends to the API started beside it, on the port it took (with
    --api-port 0 too), not to the queue's `api_endpoint`: with a database, every host
    shares that one, and another host's API serves another workspace."""
    return {**env, "SWARM_API_PORT": str(urlsplit(api_url).port)}


def start_database(workspace: Path, env: dict[str, str]) -> LocalPostgres:
    """The workspace's own server, named to every process by SWARM_DATABASE_URL (to the
    demo's seeding too, which runs here)."""
    from swarm_runtime.store.local_postgres import LocalPostgres
    from swarm_runtime.store.state_files import Workspace

    layout = Workspace(workspace)
    layout.ensure_layout()
    database = LocalPostgres(layout.root, layout.state_dir)
    url = database.start(lambda line: print(f"[postgres] {line}", flush=True))
    env["SWARM_DATABASE_URL"] = os.environ["SWARM_DATABASE_URL"] = url
    print(f"[postgres] listening on {database.shown_url}", flush=True)
    return database


def database_banner(database: LocalPostgres) -> str:
    """Where the database is, and how another terminal reaches it, without the password."""
    return (
        f"  database        {database.shown_url} (data in {database.folder})\n"
        f'  other terminals export SWARM_DATABASE_URL="$(cat {database.url_file})"\n'
    )


class Child:
    """A runtime process whose output is echoed with its name in front."""

    def __init__(self, name: str, proc: subprocess.Popen[str]):
        self.name = name
        self.proc = proc
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._echo, daemon=True).start()

    @classmethod
    def start(cls, name: str, args: list[str], env: dict[str, str], into: list[Child]) -> Child:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            text=True,
            bufsize=1,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = cls(name, proc)
        into.append(child)
        return child

    def _echo(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self.url is None and "listening on http://127.0.0.1:" in line:
                self.url = line.rsplit("listening on ", 1)[1].strip()
                self._ready.set()
            print(f"[{self.name}] {line}", end="", flush=True)
        self._ready.set()

    def wait_for_url(self, port_option: str) -> str:
        self._ready.wait(READY_TIMEOUT_SECONDS)
        if self.url is None:
            raise RuntimeError(
                f"{self.name} did not start (see its output above); if its port is taken, "
                f"choose another with {port_option}"
            )
        return self.url

    def stop(self) -> None:
        stop_gracefully(self.proc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
