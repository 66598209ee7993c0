"""The only module that writes state files: atomic JSON documents and locked JSONL appends.

A JSON document is replaced, never edited: write a temp file in the same folder,
flush, fsync, `os.replace`, fsync the folder. A crash at any instant leaves the old
file or the new one, never half of either. Every read-modify-write happens under an
exclusive `flock` on `<file>.lock` and re-reads inside it.

No state file is opened through a symbolic link, and every one is created 0600: see
`private`, whose folder checks run once, when the workspace is opened.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import marshal
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from itertools import repeat
from pathlib import Path
from typing import Any, TypeVar

from swarm_runtime.contract import (
    API_AUDIT_FILE,
    API_ENDPOINT_FILE,
    BALANCES_FILE,
    BUDGET_LEDGER_FILE,
    EXECUTION_LOG_FILE,
    PAUSE_FILE,
    QUALITY_GATE_FILE,
    QUEUE_ARCHIVE_FILE,
    QUEUE_FILE,
    QUEUE_JOURNAL_FILE,
    REWARD_LEDGER_FILE,
    SAFETY_AUDIT_FILE,
    SANDBOX_DIR,
    STATE_DIR,
    TOKEN_FILE,
    TOOL_STORE_FILE,
    WORKERS_DIR,
)
from swarm_runtime.errors import StateFileError
from swarm_runtime.processes import process_exists
from swarm_runtime.store import durability, failpoints, private
from swarm_runtime.store.private import PRIVATE_FILE, open_private

T = TypeVar("T")
LOCK_TIMEOUT_SECONDS = 30.0
LOCK_POLL_SECONDS = 0.002
TEMP_SUFFIX = ".tmp"
TEMP_ATTEMPTS = 100
_C1_CONTROL = re.compile("[\x80-\x9f]")
# marshal's last format without back-references: from 3 on, an object that something
# else also holds is written as a reference, so two equal records could differ in bytes.
MARSHAL_VERSION = 2


class Workspace:
    """Where all runtime state lives, and the one lock object per state file of this process."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        self.state_dir = self.root / STATE_DIR
        self.sandbox = self.root / SANDBOX_DIR
        self.queue_path = self.root / QUEUE_FILE
        self.log_path = self.root / EXECUTION_LOG_FILE
        self.quality_gate_path = self.root / QUALITY_GATE_FILE
        self.token_path = self.state_dir / TOKEN_FILE
        self.budget_ledger_path = self.state_dir / BUDGET_LEDGER_FILE
        self.api_audit_path = self.state_dir / API_AUDIT_FILE
        self.safety_audit_path = self.state_dir / SAFETY_AUDIT_FILE
        self.queue_archive_path = self.state_dir / QUEUE_ARCHIVE_FILE
        self.queue_journal_path = self.state_dir / QUEUE_JOURNAL_FILE
        self.pause_path = self.state_dir / PAUSE_FILE
        self.api_endpoint_path = self.state_dir / API_ENDPOINT_FILE
        self.reward_ledger_path = self.state_dir / REWARD_LEDGER_FILE
        self.balances_path = self.state_dir / BALANCES_FILE
        self.tool_store_path = self.state_dir / TOOL_STORE_FILE
        self.workers_dir = self.state_dir / WORKERS_DIR
        self._locks: dict[Path, FileLock] = {}

    def ensure_layout(self) -> None:
        """Create the folders, refuse state another user could redirect or read, and clear
        temp files that writers which died left behind.

        Every process runs this when it starts: checking the folders here is what lets
        each write skip them (see `private`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        private.make_folder(self.state_dir, private=True)
        private.make_folder(self.sandbox, private=False)
        for path in self.state_files():
            private.check_file(path)
        for folder in (self.root, self.state_dir):
            sweep_stale_temp_files(folder)

    def check_folders(self) -> None:
        """Refuse a `.swarm/` or `sandbox/` that is a link, not ours, or (`.swarm/`) open to
        others: one lstat each, for a caller about to use them long after start."""
        private.check_folder(self.state_dir, private=True)
        private.check_folder(self.sandbox, private=False)

    def state_files(self) -> tuple[Path, ...]:
        """The files holding prompts, outputs and ledgers (the token is checked where it is
        used: `store.token.resolve_token`)."""
        return (
            self.queue_path,
            self.log_path,
            self.quality_gate_path,
            self.budget_ledger_path,
            self.api_audit_path,
            self.safety_audit_path,
            self.queue_archive_path,
            self.queue_journal_path,
            self.pause_path,
            self.reward_ledger_path,
            self.balances_path,
            self.tool_store_path,
        )

    def lock(self, path: Path) -> FileLock:
        """The lock guarding `path`, created once per process and shared by its threads."""
        if path not in self._locks:
            self._locks[path] = FileLock(f"{path}.lock")
        return self._locks[path]


class FileLock:
    """An exclusive lock on a lock file that binds processes and the threads of one process.

    Each thread's outermost `with` opens the lock file and takes `flock` on that descriptor
    (two descriptors exclude each other even in one process); inner `with`s in the same
    thread only count. The kernel drops the lock when its holder dies. The `filelock`
    package did the same in about 250 us per lock and unlock, more than the fsync of a
    small file, and a task takes about fifteen locks."""

    def __init__(self, lock_path: str, timeout: float = LOCK_TIMEOUT_SECONDS):
        self.lock_path = lock_path
        self.timeout = timeout
        self._held = threading.local()

    def __enter__(self) -> FileLock:
        depth = getattr(self._held, "depth", 0)
        if depth == 0:
            self._held.fd = self._acquire()
        self._held.depth = depth + 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._held.depth -= 1
        if self._held.depth == 0:
            fd, self._held.fd = self._held.fd, None
            os.close(fd)  # closing the descriptor releases the flock

    def _acquire(self) -> int:
        fd = open_private(self.lock_path, os.O_RDWR | os.O_CREAT)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TimeoutError(
                        f"could not lock {self.lock_path} within {self.timeout:g} s"
                    ) from None
                time.sleep(LOCK_POLL_SECONDS)
            except BaseException:
                os.close(fd)
                raise


def atomic_write_bytes(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Rename into place so a reader never sees half a file, even after a crash.

    The temp file's name carries the writer's pid, so a temp left by a writer that died
    can be told from one still being written (see `sweep_stale_temp_files`). A failed
    write raises OSError naming `path`, not the temp file, and leaves `path` untouched.
    The rename replaces whatever has the name, a link included: it never writes through
    one."""
    fd, temp_name = _create_temp(path)
    crash_test = failpoints.any_armed()
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, mode)  # the umask may have taken bits away; it never adds any
            _write_temp(handle, data, path, crash_test)
        if crash_test:
            failpoints.failpoint(f"write:{path.name}:before_rename")
        os.replace(temp_name, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        if isinstance(exc, OSError) and exc.filename != str(path):
            raise _naming(path, exc) from exc
        raise
    if crash_test:
        failpoints.failpoint(f"write:{path.name}:renamed")
    fsync_directory(path.parent)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new file next to `path` that only we can read, under a name nobody else holds:
    O_EXCL and O_NOFOLLOW, so nothing planted under that name is opened."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    prefix = f"{path.parent}/.{path.name}.{os.getpid()}."
    for _ in range(TEMP_ATTEMPTS):
        temp_name = prefix + secrets.token_hex(4) + TEMP_SUFFIX
        try:
            return open_private(temp_name, flags), temp_name
        except FileExistsError:
            continue
        except OSError as exc:
            raise _naming(path, exc) from exc
    raise _naming(path, FileExistsError(errno.EEXIST, "no free temp file name"))


def _write_temp(handle: Any, data: bytes, path: Path, crash_test: bool) -> None:
    """Write, flush and fsync; under a crash test, half the bytes reach the disk first."""
    kind = durability.kind_of(path, durability.REWRITE)
    if crash_test:
        handle.write(data[: len(data) // 2])
        handle.flush()
        durability.fsync(handle.fileno(), kind)
        failpoints.failpoint(f"write:{path.name}:partial")
        data = data[len(data) // 2 :]
    handle.write(data)
    handle.flush()
    durability.fsync(handle.fileno(), kind)


def sweep_stale_temp_files(folder: Path) -> list[Path]:
    """Remove `.<file>.<pid>.<random>.tmp` files whose writer is gone: the crash's leftovers.

    Readers never look at temp files, so a leftover is harmless but untidy; a temp of a
    live process (a write in progress) is left alone."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        pid = _temp_writer_pid(entry.name)
        if pid is None or process_exists(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _temp_writer_pid(name: str) -> int | None:
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


def _naming(path: Path, exc: OSError) -> OSError:
    """The same error about the state file itself, so the message tells the operator which
    file could not be written ("[Errno 28] No space left on device: '.../queue.json'")."""
    return OSError(exc.errno, exc.strerror, str(path))


def file_version(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size), or None if absent: a file replaced atomically gets a new
    version, and so does a file appended to. A link is not followed: it is a version of
    its own, which the read that follows refuses."""
    try:
        stat = os.lstat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        durability.fsync(fd, durability.FOLDER)
    finally:
        os.close(fd)


_encode = json.JSONEncoder(ensure_ascii=False).encode


def dump_json(document: Any) -> bytes:
    """Readable, and encoded by json's C encoder: a document's keys one per line, each record
    of a top-level list or mapping on a line of its own. (`indent=` would switch json to
    its pure-Python encoder, ten times slower: most of a worker's CPU per task.)"""
    if not _str_keyed(document):
        return (_encode(document) + "\n").encode("utf-8")
    fields = (f"  {_encode(key)}: {_one_record_per_line(value)}" for key, value in document.items())
    return ("{\n" + ",\n".join(fields) + "\n}\n").encode("utf-8")


def _one_record_per_line(value: Any) -> str:
    if isinstance(value, list) and value:
        return "[\n    " + ",\n    ".join(map(_encode, value)) + "\n  ]"
    if _str_keyed(value):
        records = (f"{_encode(key)}: {_encode(item)}" for key, item in value.items())
        return "{\n    " + ",\n    ".join(records) + "\n  }"
    return _encode(value)


def _str_keyed(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(map(isinstance, value, repeat(str)))


class EncodingMemo:
    """`dump_json` for one document written again and again with most of its records
    unchanged (the quality gate, the reward ledger): a record this memo encoded for the
    last document is not encoded again, its text is reused. The bytes are dump_json's,
    errors included.

    A record is known by its `marshal` bytes, never by `==`: `True == 1 == 1.0`, `0.0 ==
    -0.0` and dicts in another key order are equal but encode differently, whereas marshal
    gives each exact type its own code, floats bit for bit, keys in order, and refuses
    anything else (a subclass, a Decimal). A record with the same marshal bytes is
    identical to the one the text was made from, and that one was decoded from those
    bytes: a private copy nobody can change. Marshalling costs a fifth of encoding.

    Only the last document's records are kept: the memo is about the size of the file."""

    def __init__(self) -> None:
        self._texts: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        """How many records it remembers: those of the last document, no more."""
        return len(self._texts)

    def dump(self, document: Any) -> bytes:
        if not _str_keyed(document):
            self._texts = {}
            return dump_json(document)
        texts: dict[bytes, bytes] = {}
        pieces = [b"{\n"]
        try:
            for key, value in document.items():
                pieces += self._field(key, value, texts)
                pieces.append(b",\n")
        except UnicodeEncodeError:
            return dump_json(document)  # raises it as dump_json does, at the same position
        pieces[-1] = b"\n}\n"
        self._texts = texts
        # One join: every large block built on the way costs the first touch of its pages.
        return b"".join(pieces)

    def _field(self, key: str, value: Any, texts: dict[bytes, bytes]) -> list[bytes]:
        """One field's pieces, as `_one_record_per_line` lays it out. A record is the tuple
        its line is made from, `(item,)` in a list and `(key, value)` in a mapping: the
        tuple's length keeps the two kinds apart in the memo."""
        head = f"  {_encode(key)}: ".encode()
        if isinstance(value, list) and value:
            lines = self._lines(list(zip(value)), _item_text, texts)
            return [head, b"[\n    ", *_separated(b",\n    ", lines), b"\n  ]"]
        if _str_keyed(value):
            lines = self._lines(list(value.items()), _pair_text, texts)
            return [head, b"{\n    ", *_separated(b",\n    ", lines), b"\n  }"]
        return [head, _encode(value).encode()]

    def _lines(
        self,
        records: list[tuple[Any, ...]],
        text_of: Callable[[Any], str],
        texts: dict[bytes, bytes],
    ) -> list[bytes]:
        """Each record's line, encoded only if the memo lacks it. Marshalling and looking up
        run in C, record after record: the Python loop only looks for the few misses."""
        try:
            marshalled = list(map(marshal.dumps, records, repeat(MARSHAL_VERSION)))
        except ValueError:  # a type marshal refuses: nothing exact to know the field by
            return [text_of(record).encode() for record in records]
        known = map(self._texts.get, marshalled)
        lines = [
            _text_of_copy(marshalled_record, record, text_of).encode() if line is None else line
            for line, marshalled_record, record in zip(known, marshalled, records, strict=True)
        ]
        texts.update(zip(marshalled, lines, strict=True))
        return lines


def _separated(separator: bytes, lines: list[bytes]) -> list[bytes]:
    pieces = [separator] * (2 * len(lines) - 1)
    pieces[::2] = lines
    return pieces


def _item_text(record: tuple[Any]) -> str:
    return _encode(record[0])


def _pair_text(record: tuple[str, Any]) -> str:
    return f"{_encode(record[0])}: {_encode(record[1])}"


def _text_of_copy(marshalled: bytes, record: tuple[Any, ...], text_of: Callable[[Any], str]) -> str:
    """The text of the copy decoded from `marshalled`, so the memo's text always belongs to its
    bytes, whatever later becomes of `record`. Where the copy cannot be encoded, neither can
    the record, and the error raised is the record's own (marshal writes a bytearray as
    bytes, and json's message names the type)."""
    try:
        return text_of(marshal.loads(marshalled))
    except (TypeError, ValueError):
        text_of(record)
        raise


def atomic_write_json(path: Path, document: Any, mode: int = PRIVATE_FILE) -> None:
    atomic_write_bytes(path, dump_json(document), mode)


def read_json(path: Path, default: Callable[[], T] | None = None) -> Any:
    """Parse a JSON file; a missing file gives `default()`, a broken one a StateFileError,
    a link in its place an UnsafeStateError."""
    try:
        raw = private.read_private(path)
    except FileNotFoundError:
        if default is None:
            raise StateFileError(path, ["file does not exist"]) from None
        return default()
    return parse_json(path, raw)


def parse_json(path: Path, raw: bytes) -> Any:
    """The bytes of `path` as JSON, or a StateFileError saying where they break."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StateFileError(path, [f"not UTF-8 text (byte {exc.start})"]) from None
    except json.JSONDecodeError as exc:
        raise StateFileError(
            path, [f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]
        ) from None


def json_line(record: dict[str, Any]) -> str:
    """One record as a JSONL line. C0 controls are escaped by JSON itself; C1 controls
    (U+0080-U+009F, such as U+009B, a one-character terminal escape) are escaped here, so
    `tail -f` on a log cannot drive the terminal. A JSON reader sees the same text."""
    text = json.dumps(record, ensure_ascii=False, default=str)
    return _C1_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def append_line(
    workspace: Workspace, path: Path, record: dict[str, Any], *, durable: bool = True
) -> None:
    """Append one JSON line with a single write() under the file's lock.

    One write per line means concurrent readers and writers never see interleaved
    records; the lock keeps writers from different processes in order. `durable`
    fsyncs before returning; audit trails on hot paths may skip it."""
    line = json_line(record).encode("utf-8")
    with workspace.lock(path):
        _append(path, line, durable=durable)


def append_lines(
    workspace: Workspace, path: Path, records: list[dict[str, Any]], *, durable: bool = True
) -> None:
    """Several records in one append: an archive batch lands whole or not at all.
    `durable` as for `append_line`: a copy whose durability is elsewhere skips the fsync."""
    if not records:
        return
    data = "".join(json_line(r) for r in records)
    with workspace.lock(path):
        _append(path, data.encode("utf-8"), durable=durable)


def _append(path: Path, payload: bytes, *, durable: bool) -> None:
    """Append whole lines or nothing: a write cut short (a full disk) is truncated away,
    and a torn last line left by an earlier crash is ended first, so the new records
    never run on from it. Errors name `path`. A file made loose by hand is tightened
    here, from the `fstat` the append needs anyway."""
    try:
        fd = open_private(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    except OSError as exc:
        raise _naming(path, exc) from exc
    try:
        info = os.fstat(fd)
        private.check_descriptor(path, fd, info)
        size = info.st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            payload = b"\n" + payload
        try:
            _write_all(fd, payload)
            if durable:
                durability.fsync(fd, durability.kind_of(path, durability.APPEND))
        except OSError as exc:
            os.ftruncate(fd, size)
            raise _naming(path, exc) from exc
    finally:
        os.close(fd)


def append_after(path: Path, offset: int, payload: bytes, *, durable: bool = True) -> int:
    """Append `payload` at `offset`, cutting off whatever lies past it: the torn tail of
    a writer that died mid-append, which its reader never counted as written. Durably,
    unless the caller makes it durable itself (`queue.group_commit`).

    For a journal that exists and whose reader knows where its last complete record
    ends. The caller holds the file's lock. Returns the new end; a failed write leaves
    the file as it was."""
    try:
        fd = open_private(path, os.O_WRONLY)
    except OSError as exc:
        raise _naming(path, exc) from exc
    try:
        if os.fstat(fd).st_size != offset:
            os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        kind = durability.kind_of(path, durability.APPEND)
        try:
            if failpoints.any_armed():
                _write_all(fd, payload[: len(payload) // 2])
                durability.fsync(fd, kind)
                failpoints.failpoint(f"append:{path.name}:partial")
                os.lseek(fd, offset, os.SEEK_SET)
            _write_all(fd, payload)
            if durable:
                durability.fsync(fd, kind)
        except OSError as exc:
            os.ftruncate(fd, offset)
            raise _naming(path, exc) from exc
    finally:
        os.close(fd)
    return offset + len(payload)


def _open_to_write(path: Path) -> tuple[int, os.stat_result]:
    """`path` opened for writing in place (made if missing) and checked as a state file,
    with its stat; an error names `path`."""
    try:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT)
    except OSError as exc:
        raise _naming(path, exc) from exc
    try:
        info = os.fstat(fd)
        private.check_descriptor(path, fd, info)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def write_at(path: Path, offset: int, payload: bytes) -> None:
    """Write `payload` at `offset` of `path` (made if missing), cutting off whatever lay
    past it, without an fsync: for a file whose durability another file already holds
    (the event log, whose lines are in the queue journal until `sync_file`). A write cut
    short is cut off again. The caller holds the file's lock."""
    fd, info = _open_to_write(path)
    try:
        if info.st_size != offset:
            os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        try:
            _write_all(fd, payload)
        except OSError as exc:
            os.ftruncate(fd, offset)
            raise _naming(path, exc) from exc
    finally:
        os.close(fd)


def overwrite_in_place(path: Path, payload: bytes) -> None:
    """Write `payload` over the start of `path` (made if missing), without an fsync and
    without cutting the file: for a fixed-width record rewritten whole each time (the
    queue journal's sync mark). Cutting such a file to nothing and writing it again, as
    `write_at` would, cost 420 us a write on ext4 against 10 us in place (the block freed
    and allocated again), and the mark is written after every group fsync, under the
    lock every writer waits at. The caller holds the file's lock."""
    fd, _ = _open_to_write(path)
    try:
        written = os.pwrite(fd, payload, 0)
    except OSError as exc:
        raise _naming(path, exc) from exc
    finally:
        os.close(fd)
    if written != len(payload):  # a fixed-width record is one small write; never seen
        raise _naming(path, OSError(errno.EIO, "short write"))


def sync_file(path: Path, how: str) -> None:
    """Make everything written to `path` durable (nothing to do if it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        durability.fsync(fd, durability.kind_of(path, how))
    except OSError as exc:
        raise _naming(path, exc) from exc
    finally:
        os.close(fd)


def _write_all(fd: int, payload: bytes) -> None:
    """os.write may write less than asked (a signal, a nearly full disk): write the rest."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]


def remove_durably(path: Path) -> None:
    """Delete `path` (if there) and make the deletion survive a crash."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
        fsync_directory(path.parent)


def create_secret_file(path: Path, secret: str) -> bool:
    """Publish `secret` at `path` exclusively, mode 0600 from its first byte.

    The secret is written to a private temp file first and hard-linked into place, so
    the final name never exists half-written and two racing processes agree on one
    winner. Returns False when another process got there first."""
    fd, temp_name = _create_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secret + "\n")
            handle.flush()
            durability.fsync(handle.fileno(), durability.kind_of(path, durability.CREATE))
        try:
            os.link(temp_name, path)
        except FileExistsError:
            return False
        fsync_directory(path.parent)
        return True
    finally:
        os.unlink(temp_name)
