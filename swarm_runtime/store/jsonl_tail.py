"""Following a JSONL file by byte offset: each call reads only what was appended since.

A file that was truncated, rotated (a new inode) or rewritten under the last offset read
is read again from its first byte, under a new `epoch`, so a reader that remembers a
position knows it no longer means anything. Both the panel's log index and the command
line's `events --follow` read the runtime's logs through it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import NamedTuple

READ_BLOCK_BYTES = 4 * 1024 * 1024
FINGERPRINT_BYTES = 64


class Line(NamedTuple):
    offset: int
    number: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data) + 1


class Batch(NamedTuple):
    reset: bool
    lines: list[Line]
    read: int


def _new_epoch() -> str:
    return secrets.token_hex(4)


class JsonlTail:
    """The complete lines appended to one file since the previous `poll`.

    A last line without its newline is kept back (buffered) until it is complete, so a
    reader never sees half of a record that a writer is still appending."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.epoch = _new_epoch()
        self.resets = 0
        self.offset = 0
        self.lines = 0
        self.size = 0
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._pending = b""
        self._fingerprint = b""

    @property
    def read_to(self) -> int:
        return self.offset + len(self._pending)

    def poll(self, max_bytes: int = READ_BLOCK_BYTES) -> Batch:
        reset = self._follow_file()
        if self._fd is None or self.read_to >= self.size:
            return Batch(reset, [], 0)
        want = min(max_bytes, self.size - self.read_to)
        chunk = os.pread(self._fd, want, self.read_to)
        self._fingerprint = (self._fingerprint + chunk)[-FINGERPRINT_BYTES:]
        return Batch(reset, self._split(chunk), len(chunk))

    def pread(self, length: int, offset: int) -> bytes:
        """Bytes of the file being followed (the old one after a rotation, until the next poll)."""
        if self._fd is None or length <= 0:
            return b""
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._identity = None, None

    def _follow_file(self) -> bool:
        """Open the file, or notice that it was cut, replaced or rewritten. True on a reset."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            had_data = self._fd is not None and self.read_to > 0
            self._restart(None)
            return had_data
        identity = (stat.st_dev, stat.st_ino)
        if self._fd is None:
            self._restart(identity)
            self.size = stat.st_size
            return False
        changed = identity != self._identity or stat.st_size < self.read_to or not self._same_tail()
        if changed:
            self._restart(identity)
        self.size = stat.st_size
        return changed

    def _same_tail(self) -> bool:
        """The last bytes we read are still there: the file was not rewritten in place."""
        start = self.read_to - len(self._fingerprint)
        return self.pread(len(self._fingerprint), start) == self._fingerprint

    def _restart(self, identity: tuple[int, int] | None) -> None:
        was_open = self._fd is not None
        self.close()
        if was_open:
            self.epoch = _new_epoch()
            self.resets += 1
        self.offset = self.lines = self.size = 0
        self._pending = self._fingerprint = b""
        if identity is not None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return
            stat = os.fstat(self._fd)
            self._identity = (stat.st_dev, stat.st_ino)

    def _split(self, chunk: bytes) -> list[Line]:
        data = self._pending + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._pending = data
            return []
        self._pending = data[cut + 1 :]
        lines = []
        offset, number = self.offset, self.lines
        for part in data[:cut].split(b"\n"):
            number += 1
            lines.append(Line(offset, number, part))
            offset += len(part) + 1
        self.offset, self.lines = offset, number
        return lines
