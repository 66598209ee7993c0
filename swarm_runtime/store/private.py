"""State that no other user of the machine can redirect or read.

The state holds prompts, outputs and the execution token, and queue.json decides which
commands run. Another account on the same machine must not be able to make the runtime
write through a planted link (`queue.json -> ~/.bashrc`), read a file the link points
at, or read the state itself. So:

- every state file is opened with O_NOFOLLOW: a link in its place is refused with an
  UnsafeStateError, never followed (the flag costs nothing per open);
- `.swarm/` is 0700 and ours and `sandbox/` a real folder of ours, or the process
  refuses to start and says how to fix it: checked once, when the workspace is opened
  (`Workspace.ensure_layout`), not on every write. The token file must be 0600 and ours
  too: the worker and the API check it as they read it, and refuse to start otherwise;
- files are created 0600 whatever the umask. One left looser (queue.json written by hand
  in a checkout is 0644) is tightened, with a log line, when the workspace is opened or
  when it is next appended to; a replace writes a new 0600 file anyway.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

from swarm_runtime.errors import UnsafeStateError

log = logging.getLogger("swarm.store")

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700
OTHERS = 0o077  # the group and other bits: any of them lets another account in
NO_LINKS = os.O_NOFOLLOW | os.O_CLOEXEC
UID = os.geteuid()


def open_private(path: Path | str, flags: int, mode: int = PRIVATE_FILE) -> int:
    """`os.open` that refuses a link in the file's place instead of following it. A file
    it creates has `mode` or less (the umask can only take bits away)."""
    try:
        return os.open(path, flags | NO_LINKS, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise link_refused(Path(path)) from None
        raise


def open_for_reading(path: Path | str) -> BinaryIO:
    return open(open_private(path, os.O_RDONLY), "rb")


def read_private(path: Path | str) -> bytes:
    with open_for_reading(path) as handle:
        return handle.read()


def link_refused(path: Path) -> UnsafeStateError:
    return UnsafeStateError(path, [link_problem(path)])


def link_problem(path: Path) -> str:
    return (
        "is a symbolic link, and state is never read or written through one (another user"
        f" may have planted it): remove the link (rm {path}) and start again"
    )


# --- decisions ---------------------------------------------------------------------------


def folder_problems(path: Path, info: os.stat_result, uid: int, *, private: bool) -> list[str]:
    """Why another account could redirect or read through this folder (none: usable).
    `private` folders must also be closed to the group and others."""
    if stat.S_ISLNK(info.st_mode):
        return [link_problem(path)]
    if not stat.S_ISDIR(info.st_mode):
        return [f"is not a folder: move it away (mv {path} {path}.old) and start again"]
    problems = _owner_problems(info, uid, "move it away and start again")
    if private and info.st_mode & OTHERS:
        mode = stat.S_IMODE(info.st_mode)
        problems.append(f"is open to other users (mode {mode:04o}): run chmod 700 {path}")
    return problems


def secret_problems(path: Path, info: os.stat_result, uid: int) -> list[str]:
    """Why the token file cannot be trusted to be ours alone: it is refused, not mended,
    since another account may already have read it."""
    renew = "delete it to make a new token, and restart the worker, API and panel"
    if not stat.S_ISREG(info.st_mode):
        return [f"is not a regular file: {renew}"]
    problems = _owner_problems(info, uid, renew)
    if info.st_mode & OTHERS:
        mode = stat.S_IMODE(info.st_mode)
        problems.append(
            f"is readable by other users (mode {mode:04o}): run chmod 600 {path}, or {renew}"
        )
    return problems


def file_problems(info: os.stat_result, uid: int) -> list[str]:
    """Why a state file cannot be used as it is; a loose mode is mended, not listed here."""
    if not stat.S_ISREG(info.st_mode):
        return ["is not a regular file: move it away and start again"]
    return _owner_problems(info, uid, "another user could rewrite it; move it away")


def _owner_problems(info: os.stat_result, uid: int, fix: str) -> list[str]:
    if info.st_uid == uid:
        return []
    return [f"is owned by uid {info.st_uid}, not by this user (uid {uid}): {fix}"]


def is_loose(info: os.stat_result) -> bool:
    return bool(info.st_mode & OTHERS)


# --- checks at opening -------------------------------------------------------------------


def make_folder(path: Path, *, private: bool) -> None:
    """Create `path` (0700 if `private`, whatever the umask) or check the one there.

    Checked with lstat, after creating: `Path.mkdir(exist_ok=True)` is content with a
    link to a folder, which is exactly what must be refused."""
    try:
        os.mkdir(path, PRIVATE_FOLDER if private else 0o777)
        if private:
            os.chmod(path, PRIVATE_FOLDER)
    except FileExistsError:
        pass
    check_folder(path, private=private)


def check_folder(path: Path, *, private: bool) -> None:
    problems = folder_problems(path, os.lstat(path), UID, private=private)
    if problems:
        raise UnsafeStateError(path, problems)


def check_file(path: Path) -> None:
    """Refuse a link, a non-file or another user's file at `path`; tighten a loose mode."""
    try:
        fd = open_private(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    try:
        check_descriptor(path, fd, os.fstat(fd))
    finally:
        os.close(fd)


def check_descriptor(path: Path, fd: int, info: os.stat_result) -> None:
    """What `check_file` decides, for a file already open: free for a writer that has
    `fstat`ed it anyway."""
    problems = file_problems(info, UID)
    if problems:
        raise UnsafeStateError(path, problems)
    if is_loose(info):
        os.fchmod(fd, PRIVATE_FILE)
        log.warning(
            "%s was readable by other users (mode %04o); made it 0600, since it holds"
            " prompts and outputs",
            path,
            stat.S_IMODE(info.st_mode),
        )


def read_secret(path: Path) -> str:
    """The secret in `path`, only if the file is ours alone (see `secret_problems`)."""
    with open_for_reading(path) as handle:
        problems = secret_problems(path, os.fstat(handle.fileno()), UID)
        if problems:
            raise UnsafeStateError(path, problems)
        return handle.read().decode("utf-8").strip()
