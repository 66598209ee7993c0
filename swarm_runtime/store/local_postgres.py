"""A PostgreSQL server of the workspace's own, for `python3 run.py --with-postgres`.

Its data lives in `<workspace>/postgres/` and is kept across runs: `initdb` on first use,
with a generated password, then `pg_ctl start` on 127.0.0.1 only (no Unix socket), on the
port it had last time when that is free. The full URL, password included, is written
0600 to the workspace's private state (`.swarm/database_url`) for other terminals; what is
printed never holds the password. The server runs as the unprivileged `postgres` user
when the launcher is root, as PostgreSQL refuses to run as root.

One launcher manages a workspace's server at a time: it holds `postgres/launcher.lock`
while it runs. A launcher killed outright leaves a watchdog behind (`watch`), which stops
the server once the runtime's processes have let go of it, and a server still running
when a launcher starts is a leftover: it is stopped and started afresh.

Standard library only: run.py asks `missing_server()` before anything is installed.
"""

from __future__ import annotations

import fcntl
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from swarm_runtime.errors import SwarmError
from swarm_runtime.processes import process_exists
from swarm_runtime.store import durability
from swarm_runtime.store.private import link_refused, make_folder, open_private

BIN_VARIABLE = "SWARM_POSTGRES_BIN"
INSTALL_HINT = f"apt-get install postgresql, or set {BIN_VARIABLE} to the folder of initdb"
SERVER_FOLDER = "postgres"
URL_FILE = "database_url"
SUPERUSER = "swarm"
DATABASE = "postgres"
UNPRIVILEGED_USER = "postgres"
PROGRAM_TIMEOUT_SECONDS = 120.0
# The watchdog lets the runtime's processes finish the task in hand before it stops the
# server (`smart` waits for every client to leave), but no longer than this.
SMART_STOP_SECONDS = 60
LOCK_WAIT_SECONDS = 90.0
WATCH_POLL_SECONDS = 0.5


class LocalPostgresError(SwarmError):
    """The workspace's own server cannot be started; the message says what to do."""


def server_bin_dir(environ: dict[str, str] | None = None) -> Path | None:
    """SWARM_POSTGRES_BIN, else the newest Debian-style install, else pg_ctl on PATH."""
    named = (os.environ if environ is None else environ).get(BIN_VARIABLE)
    candidates = [named] if named else sorted(glob.glob("/usr/lib/postgresql/*/bin"))[::-1]
    on_path = shutil.which("pg_ctl")
    if not named and on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def unprivileged() -> tuple[list[str], pwd.struct_passwd | None]:
    """How to run the server's programs: as ourselves, or, as root, as `postgres`."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise LocalPostgresError(
            f"PostgreSQL will not run as root, and there is no {UNPRIVILEGED_USER!r} user "
            f"to run it as: {INSTALL_HINT}, or start run.py as an ordinary user"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", UNPRIVILEGED_USER, "--"], user
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise LocalPostgresError(
            "PostgreSQL will not run as root, and neither runuser nor setpriv is installed "
            "to run it as another user: start run.py as an ordinary user"
        )
    ids = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    return [setpriv, *ids], user


def missing_server() -> str | None:
    """Why no server can be started here (one line, saying what to install), or None."""
    if server_bin_dir() is None:
        return f"--with-postgres needs PostgreSQL's server programs: {INSTALL_HINT}"
    try:
        unprivileged()
    except LocalPostgresError as exc:
        return str(exc)
    return None


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def database_url(password: str, port: int) -> str:
    return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{port}/{DATABASE}"


def password_and_port(text: str) -> tuple[str, int] | None:
    """The password and port a URL file written by `database_url` holds."""
    try:
        parts = urlsplit(text.strip())
        password, port = parts.password, parts.port
    except ValueError:
        return None
    return (password, port) if password and port else None


class LocalPostgres:
    def __init__(self, workspace: Path, state_dir: Path, bin_dir: Path | None = None):
        """`state_dir` is the workspace's private folder, where the URL file goes."""
        self.folder = workspace / SERVER_FOLDER
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.url_file = state_dir / URL_FILE
        found = bin_dir or server_bin_dir()
        if found is None:
            raise LocalPostgresError(f"PostgreSQL's server programs are missing: {INSTALL_HINT}")
        self.bin_dir = found
        self.run_as, self.user = unprivileged()
        self._lock: int | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def shown_url(self) -> str:
        """The URL as it may be printed: the password is in `url_file` only."""
        return database_url("***", self.port)

    # --- starting ------------------------------------------------------------------------

    def start(self, say: Callable[[str], None]) -> str:
        """Start the server (initialising it on first use) and return its full URL; from
        here on, `shutdown()` stops it, or the watchdog does if this process dies first."""
        self._make_folder()
        self.hold_lock(say)
        self._watchdog = self.watchdog(os.getpid())
        try:
            return self._start(say)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, say: Callable[[str], None]) -> str:
        if self._running():
            say("stopping the PostgreSQL server an earlier run left running")
            self._program("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.data))
        password, port = self._credentials()
        if not (self.data / "PG_VERSION").exists():
            say(f"initialising PostgreSQL in {self.folder} (first use) ...")
            self._initdb(password)
        self.port = port if port and port_is_free(port) else free_port()
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        self._program(
            "pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.log), "-o", options
        )
        url = database_url(password, self.port)
        write_private(self.url_file, url + "\n")
        return url

    def _make_folder(self) -> None:
        """0700 and the server's own: as root, handed to `postgres`, who must be able to
        reach it through every folder above."""
        if self.user is None:
            make_folder(self.folder, private=True)
            return
        try:
            os.mkdir(self.folder, 0o700)
        except FileExistsError:
            if self.folder.is_symlink():
                raise link_refused(self.folder) from None
        os.chown(self.folder, self.user.pw_uid, self.user.pw_gid, follow_symlinks=False)
        reach = subprocess.run([*self.run_as, "test", "-w", str(self.folder)], check=False)
        if reach.returncode != 0:
            raise LocalPostgresError(
                f"PostgreSQL runs as the user {UNPRIVILEGED_USER!r} when started by root, "
                f"and it cannot reach {self.folder} (a folder above it is closed to other "
                "users): choose a workspace it can reach with --workspace, or start run.py "
                "as an ordinary user"
            )

    def _credentials(self) -> tuple[str, int | None]:
        """Last run's password and port; a new password for a server not made yet."""
        try:
            with open(open_private(self.url_file, os.O_RDONLY)) as handle:
                found = password_and_port(handle.read())
        except FileNotFoundError:
            found = None
        if found is not None:
            return found[0], found[1]
        if (self.data / "PG_VERSION").exists():
            raise LocalPostgresError(
                f"{self.url_file} is missing or unreadable, and it held the password of "
                f"the server in {self.folder}: restore it, or remove {self.folder} to start "
                "with an empty database"
            )
        return secrets.token_urlsafe(24), None

    def _initdb(self, password: str) -> None:
        pwfile = self.folder / "initdb-password"
        write_private(pwfile, password)
        try:
            if self.user is not None:
                os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
            self._program(
                "initdb",
                f"--pgdata={self.data}",
                f"--username={SUPERUSER}",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    # --- stopping ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the server, then let go of it: the watchdog first, the lock last."""
        if self._watchdog is not None:
            self._watchdog.terminate()
            self._watchdog.wait()
        try:
            self.stop()
        finally:
            self.release()

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends the sessions and keeps every commit; `smart` waits for them first."""
        if self._running():
            wait = ["-t", str(SMART_STOP_SECONDS)] if mode == "smart" else []
            self._program("pg_ctl", "stop", "-m", mode, "-w", *wait, "-D", str(self.data))

    def watchdog(self, supervisor: int) -> subprocess.Popen[bytes]:
        """A process, in a session of its own (Ctrl-C in the terminal must not reach it),
        that stops the server if `supervisor` dies without doing so."""
        return subprocess.Popen(
            [sys.executable, "-m", __name__, str(supervisor), str(self.folder.parent)]
            + [str(self.url_file.parent), str(self.bin_dir)],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )

    def watch(self, supervisor: int) -> None:
        """Wait until `supervisor` is gone, then take over the lock and stop the server;
        a new launcher that took the lock first manages the server instead."""
        while os.getppid() == supervisor and process_exists(supervisor):
            time.sleep(WATCH_POLL_SECONDS)
        if not self.try_lock():
            return
        try:
            self.stop("smart")
        except LocalPostgresError:
            self.stop("fast")

    # --- the launcher's lock -------------------------------------------------------------

    def try_lock(self) -> bool:
        fd = os.open(self.folder / "launcher.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock = fd
        return True

    def hold_lock(self, say: Callable[[str], None]) -> None:
        """Wait for the watchdog of a killed launcher to finish stopping the server."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        if self.try_lock():
            return
        say(f"waiting for another launcher, or its watchdog, to let go of {self.folder} ...")
        while not self.try_lock():
            if time.monotonic() > deadline:
                raise LocalPostgresError(
                    f"another run.py --with-postgres is using {self.folder}: stop it, or "
                    "choose another workspace with --workspace"
                )
            time.sleep(WATCH_POLL_SECONDS)

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # --- the programs --------------------------------------------------------------------

    def _running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        status = [*self.run_as, str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data)]
        return subprocess.run(status, capture_output=True, check=False).returncode == 0

    def _program(self, program: str, *args: str) -> None:
        """In a session of its own: a second Ctrl-C in the terminal must not cut
        `initdb` or `pg_ctl stop` short (the launcher stops when they are done)."""
        command = [*self.run_as, str(self.bin_dir / program), *args]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=PROGRAM_TIMEOUT_SECONDS,
            check=False,
            start_new_session=True,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            raise LocalPostgresError(
                f"{program} failed (exit {done.returncode}); see {self.log}:\n{output}"
            )


def write_private(path: Path, text: str) -> None:
    """0600 and never through a link; renamed into place so a reader never sees half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with open(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        durability.fsync(handle.fileno(), durability.kind_of(path, durability.REWRITE))
    os.replace(temporary, path)


def main(argv: list[str]) -> int:
    """The watchdog: SUPERVISOR_PID WORKSPACE STATE_DIR BIN_DIR."""
    supervisor, workspace, state_dir, bin_dir = argv
    LocalPostgres(Path(workspace), Path(state_dir), Path(bin_dir)).watch(int(supervisor))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
