"""The PostgreSQL database named by SWARM_DATABASE_URL: a pool of connections, the
schema brought up to date on connect, and every driver failure turned into one
`StoreUnavailable` that names the URL without its password and says what to check.

psycopg is imported here and only here, when a database is asked for, so a file-only
install never needs it.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from swarm_runtime.errors import StoreUnavailable
from swarm_runtime.store.schema import migrate, schema_version

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

log = logging.getLogger("swarm.store")
CONNECT_TIMEOUT_SECONDS = 5
POOL_SIZE = 4
# How long a transaction waits for a pooled connection (the server may be restarting).
CHECKOUT_TIMEOUT_SECONDS = 10.0
# ... but past this first wait, only while the server takes connections: one that refuses
# them is reported at once, not after the whole wait (a panel's header reads five things).
FIRST_CHECKOUT_WAIT_SECONDS = 1.0
# The pool doubles its wait between reconnection attempts until this long has passed, then
# gives up that attempt; the next transaction starts afresh. Without a bound the wait grows
# to minutes, and a process sees the server back only that long after it is.
RECONNECT_TIMEOUT_SECONDS = 5.0
MISSING_DRIVER = (
    "the PostgreSQL driver is not installed; install it with "
    "pip install 'swarm-runtime[postgres]', or unset SWARM_DATABASE_URL"
)
# What the server or the driver said (every word found) -> the problem and what to check.
CREDENTIALS = "check the user and password in SWARM_DATABASE_URL"
MALFORMED = (
    "not a valid PostgreSQL URL",
    "write SWARM_DATABASE_URL as postgresql://user:password@host:port/database",
)
HINTS: tuple[tuple[tuple[str, ...], tuple[str, str]], ...] = (
    (("password authentication failed",), ("the server refused the credentials", CREDENTIALS)),
    (("no password supplied",), ("the server wants a password", CREDENTIALS)),
    (("role", "does not exist"), ("the server knows no such user", CREDENTIALS)),
    (
        ("database", "does not exist"),
        ("no such database", "create it (createdb) or fix its name in SWARM_DATABASE_URL"),
    ),
    (("invalid",), MALFORMED),
    (("missing",), MALFORMED),
)
UNREACHABLE = (
    "the server cannot be reached",
    "check that PostgreSQL runs and accepts connections at the host and port in SWARM_DATABASE_URL",
)


def redact(url: str) -> str:
    """The URL as it may be shown: any password replaced by `***`."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "(an unparsable URL)"


def explain(message: str) -> tuple[str, str]:
    """The problem and the hint for what the driver said when it failed to connect."""
    lowered = message.casefold()
    for words, explained in HINTS:
        if all(word in lowered for word in words):
            return explained
    return UNREACHABLE


class Database:
    """One pool per process. `transaction()` is the only way in: a failure of the server
    or of the network comes out as StoreUnavailable, and the transaction is then either
    committed or not at all (PostgreSQL's own guarantee)."""

    def __init__(
        self,
        url: str,
        pool: ConnectionPool[Any],
        checkout_timeout: float = CHECKOUT_TIMEOUT_SECONDS,
    ):
        self.url = redact(url)
        self._conninfo = url
        self._pool = pool
        self.checkout_timeout = checkout_timeout
        self._probing = threading.Lock()

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        pool_size: int = POOL_SIZE,
        checkout_timeout: float = CHECKOUT_TIMEOUT_SECONDS,
    ) -> Database:
        """Connect once to diagnose and migrate, then open the pool."""
        psycopg, pool_module = _driver(url)
        try:
            with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                migrate(conn)
        except psycopg.Error as exc:
            raise cls._unavailable(url, exc) from None
        pool = pool_module.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=True,
            check=check_if_touched,
            reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
            kwargs={
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "autocommit": True,
                "options": "-c plan_cache_mode=force_generic_plan",
            },
            name="swarm",
        )
        return cls(url, pool, checkout_timeout)

    @staticmethod
    def _unavailable(url: str, exc: BaseException) -> StoreUnavailable:
        problem, hint = explain(str(exc))
        return StoreUnavailable(redact(url), problem, hint)

    @contextmanager
    def transaction(
        self, *, holding: int | None = None, shared: bool = False
    ) -> Iterator[Connection[Any]]:
        """A connection inside one transaction, committed when the block ends and rolled
        back if it raises.

        `holding` names an advisory lock (`shared` or not) the transaction takes as it
        begins, in the same round trip: for short transactions the waiting is most of
        the cost, and a lock taken in the first statement holds for every later one.

        Inside another transaction on the same database in this thread (a queue
        transition's, whose effects write the gate and the reward), the block joins it
        as a savepoint instead: it commits with the transition or not at all."""
        import psycopg
        import psycopg_pool
        from psycopg.pq import TransactionStatus

        outer = _open_transactions().get(self.url)
        if outer is not None:
            with joined(outer, holding, shared) as conn:
                yield conn
            return
        begin = "BEGIN" if holding is None else f"BEGIN; SELECT {lock_call(holding, shared)}"
        try:
            with self._pooled() as conn:
                conn.execute(begin.encode())
                try:
                    with _opened(self.url, conn):
                        yield conn
                except BaseException:
                    rollback_quietly(conn)
                    raise
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.execute(b"COMMIT")  # unless the block ended it (`committing`)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            problem, hint = (
                UNREACHABLE if isinstance(exc, psycopg_pool.PoolTimeout) else explain(str(exc))
            )
            raise StoreUnavailable(self.url, problem, hint) from None

    @contextmanager
    def _pooled(self) -> Iterator[Connection[Any]]:
        """A pooled connection. The pool reconnects on its own, with a backoff, so a
        checkout that waits in vain asks the server directly whether it is there at all:
        a stopped server is an OperationalError in a second, not after the whole wait."""
        from psycopg_pool import PoolTimeout

        first = min(self.checkout_timeout, FIRST_CHECKOUT_WAIT_SECONDS)
        try:
            conn = self._pool.getconn(timeout=first)
        except PoolTimeout:
            if first >= self.checkout_timeout:
                raise
            self._probe()
            conn = self._pool.getconn(timeout=self.checkout_timeout - first)
        try:
            with conn:  # a pooled connection is not closed here, only given back
                yield conn
        finally:
            self._pool.putconn(conn)

    def _probe(self) -> None:
        """An OperationalError unless the server takes a connection now. One thread asks at
        a time: the many waiters of a pool that is only busy must not flood the server."""
        import psycopg

        if not self._probing.acquire(blocking=False):
            return
        try:
            psycopg.connect(self._conninfo, connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
        finally:
            self._probing.release()

    def listener(self, channel: str) -> Connection[Any]:
        """A connection of its own, outside the pool, that LISTENs on `channel`."""
        import psycopg

        try:
            conn = psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
            )
            conn.execute(f"LISTEN {channel}")
        except psycopg.Error as exc:
            raise self._unavailable(self._conninfo, exc) from None
        return conn

    def close(self) -> None:
        self._pool.close()


@contextmanager
def committing(conn: Connection[Any]) -> Iterator[None]:
    """A transaction's last statements, those the block sends, sent with its COMMIT in
    one round trip; a block that raises commits nothing."""
    with conn.pipeline():
        yield
        conn.execute(b"COMMIT")


def lock_call(key: int, shared: bool) -> str:
    """The SQL that takes advisory lock `key` until the transaction ends."""
    return f"pg_advisory_xact_lock{'_shared' if shared else ''}({int(key)})"


def rollback_quietly(conn: Connection[Any]) -> None:
    """Undo the transaction; a connection too broken for that is dropped by the pool."""
    import psycopg

    try:
        conn.execute(b"ROLLBACK")
    except psycopg.Error:
        log.debug("rollback failed; the connection is closed and replaced")


def check_if_touched(conn: Connection[Any]) -> None:
    """Before a pooled connection is lent: ask the server only when the connection has
    something to read while idle, which is how a connection the server closed (a
    restart, an administrator) looks; asking every time would cost a round trip per
    transaction."""
    from psycopg_pool import ConnectionPool

    if conn.closed:
        raise ConnectionError("the connection is closed")
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


def installed_schema_version(url: str) -> int:
    """The schema version the database holds, read without migrating it (0: none yet)."""
    psycopg, _ = _driver(url)
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            return schema_version(conn)
    except psycopg.Error as exc:
        raise Database._unavailable(url, exc) from None


def _driver(url: str) -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise StoreUnavailable(redact(url), "no driver", MISSING_DRIVER) from None
    return psycopg, psycopg_pool


# --- transactions joined by the ones opened inside them ---------------------------------

_threads = threading.local()


def _open_transactions() -> dict[str, Connection[Any]]:
    """This thread's open transaction on each database (by URL)."""
    opened: dict[str, Connection[Any]] | None = getattr(_threads, "opened", None)
    if opened is None:
        opened = _threads.opened = {}
    return opened


@contextmanager
def _opened(url: str, conn: Connection[Any]) -> Iterator[None]:
    opened = _open_transactions()
    opened[url] = conn
    try:
        yield
    finally:
        del opened[url]


@contextmanager
def joined(conn: Connection[Any], holding: int | None, shared: bool) -> Iterator[Connection[Any]]:
    """A savepoint in the open transaction: what the block wrote is undone if it raises
    (and the transaction goes on), and commits with the transaction otherwise."""
    conn.execute(b"SAVEPOINT joined")
    if holding is not None:
        conn.execute(f"SELECT {lock_call(holding, shared)}".encode())
    try:
        yield conn
    except BaseException:
        conn.execute(b"ROLLBACK TO SAVEPOINT joined")
        raise
    conn.execute(b"RELEASE SAVEPOINT joined")
