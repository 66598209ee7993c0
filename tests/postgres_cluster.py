"""A throwaway PostgreSQL cluster for the tests: `initdb` into a temporary folder,
`pg_ctl` on a free loopback port, run as an unprivileged user (the server refuses to
run as root), stopped and removed at the end. Finding the server's programs and the
user to run them as is the runtime's own (`store.local_postgres`, behind
`run.py --with-postgres`).

Without PostgreSQL's server programs the tests that need it skip and say why; with
SWARM_REQUIRE_POSTGRES=1 they fail instead, so CI never passes by skipping them. The
benchmarks start their cluster with `throwaway_cluster` and PostgreSQL's own durability
settings; a missing server is a `ClusterUnavailable` there, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from swarm_runtime.store.local_postgres import (
    LocalPostgresError,
    free_port,
    server_bin_dir,
    unprivileged,
)

SUPERUSER = "swarm"
PASSWORD = "cluster-secret-pw"
# Durability is not what these tests measure: a test cluster need not sync.
FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


class ClusterUnavailable(Exception):
    """No cluster can be started here; the message says why."""


def unavailable(reason: str) -> None:
    import pytest

    if os.environ.get("SWARM_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (SWARM_REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(f"no PostgreSQL for these tests: {reason}")


class Cluster:
    def __init__(
        self, bin_dir: Path, root: Path, port: int, run_as: list[str], options: str = FAST
    ):
        """`options` are the server's settings on its command line, kept across restarts."""
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = port
        self.run_as = run_as
        self.options = options
        self._made = 0

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        command = [*self.run_as, str(self.bin_dir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        self._run(
            "initdb",
            f"--pgdata={self.data}",
            f"--username={SUPERUSER}",
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--no-sync",
            "--encoding=UTF8",
        )
        self.start_server()

    def start_server(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 {self.options}"
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-o",
            options,
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast` keeps every commit (synchronous_commit is off: `immediate` may not)."""
        self._run("pg_ctl", "stop", "-m", mode, "-w", "-D", str(self.data))

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def fresh_database(self) -> str:
        """A new, empty database; its name."""
        self._made += 1
        name = f"swarm_test_{self._made}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def drop(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """The tests' cluster, which need not sync; without a server the tests skip."""
    with ExitStack() as stack:
        try:
            cluster = stack.enter_context(throwaway_cluster(FAST))
        except ClusterUnavailable as exc:
            unavailable(str(exc))
        yield cluster


@contextmanager
def throwaway_cluster(options: str = FAST) -> Iterator[Cluster]:
    """A cluster whose server runs with `options` ("" keeps PostgreSQL's defaults),
    stopped and removed at the end; ClusterUnavailable when none can start here."""
    bin_dir = server_bin_dir()
    if bin_dir is None:
        raise ClusterUnavailable(
            "initdb and pg_ctl not found (set SWARM_POSTGRES_BIN to their folder)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ClusterUnavailable(
            "the driver is not installed: pip install 'swarm-runtime[postgres]'"
        ) from None
    try:
        run_as, user = unprivileged()
    except LocalPostgresError as exc:
        raise ClusterUnavailable(str(exc)) from None
    root = Path(tempfile.mkdtemp(prefix="swarm-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = Cluster(bin_dir, root, free_port(), run_as, options)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            if (cluster.data / "postmaster.pid").exists():
                cluster.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)
