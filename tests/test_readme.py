"""Every command block in README.md, run as written, in order, in a copy of the checkout,
so the README cannot drift from the product.

A block runs each of its commands to exit 0 unless a comment above it says otherwise:
`background` starts a runtime and waits until it is up (it runs until the next one starts
or the walk ends), `follow` expects a first line and then stops the command with Ctrl-C,
`collect` runs a pytest command with `--collect-only` (the suite does not run itself), and
`ci` expects the command, verbatim, in .ci/run, which runs it. A block is one terminal: an
`export` in it holds for the commands after it in that block. `beside` starts a second
runtime next to the one running (another host on the same machine): its `export` lines
run first, as in any block, and the rest run until the walk ends or a `background`
block starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT
from launched import RUNNING, committed_copy, plain_env

README = ROOT / "README.md"
MODES = ("run", "background", "beside", "follow", "collect", "ci")
MARK = "<!-- readme-test: "
COMMAND_SECONDS = 300.0
READY_SECONDS = 90.0


@dataclass(frozen=True)
class Block:
    line: int
    mode: str
    commands: tuple[str, ...]


def bash_blocks(text: str) -> list[Block]:
    """The ```bash blocks, each with its mode and its commands (a trailing backslash
    continues a command on the next line)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    mode, index = "run", 0
    while index < len(lines):
        line = lines[index]
        if line.startswith(MARK):
            mode = line.removeprefix(MARK).removesuffix(" -->").strip()
        elif line.strip() == "```bash":
            fence = index + 1  # the line number of the opening fence
            body, index = fenced_body(lines, index + 1)
            blocks.append(Block(fence, mode, tuple(commands_of(body))))
            mode = "run"
        elif line.strip():
            mode = "run"
        index += 1
    return blocks


def fenced_body(lines: list[str], start: int) -> tuple[list[str], int]:
    end = start
    while lines[end].strip() != "```":
        end += 1
    return lines[start:end], end


def commands_of(body: list[str]) -> Iterator[str]:
    pending = ""
    for raw in body:
        line = raw.split("  #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        command = (pending + line).strip()
        pending = ""
        if command:
            yield command


def json_blocks(text: str) -> list[str]:
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        if line.strip() == "```json":
            body, _ = fenced_body(lines, index + 1)
            found.append("\n".join(body))
    return found


# --- what can be checked without running anything ---------------------------------------


def test_every_block_has_a_known_mode_and_a_command() -> None:
    blocks = bash_blocks(README.read_text())
    assert len(blocks) >= 10
    assert all(block.mode in MODES and block.commands for block in blocks), blocks


def test_the_blocks_for_ci_are_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [c for b in bash_blocks(README.read_text()) if b.mode == "ci" for c in b.commands]
    assert commands, "the README shows the test command"
    for command in commands:
        assert any(line.strip().endswith(command) for line in ci), command


def test_the_json_examples_parse_line_by_line_or_whole() -> None:
    """A whole document parses; in an excerpt of a log, every line not trimmed with "…"."""
    for text in json_blocks(README.read_text()):
        if text.lstrip().startswith("{\n"):
            json.loads(text)
            continue
        for line in text.splitlines():
            if line.startswith("{") and line.endswith("}") and "…" not in line:
                json.loads(line)


@pytest.mark.parametrize(
    "command, name",
    [
        ('export SWARM_DATABASE_URL="$(cat f)"', "SWARM_DATABASE_URL"),
        ("export A=1", "A"),
        ("exporter A=1", None),
        ("python3 worker.py export --out q.json", None),
    ],
)
def test_an_export_is_kept_for_its_block(command: str, name: str | None) -> None:
    assert exported_name(command) == name


def test_the_parser_joins_continued_lines_and_reads_marks() -> None:
    text = "<!-- readme-test: ci -->\n```bash\na \\\nb  # note\n# only a comment\nc\n```\n"
    assert bash_blocks(text) == [Block(2, "ci", ("a b", "c"))]


# --- the walk -------------------------------------------------------------------------------


@pytest.fixture
def checkout() -> Iterator[Path]:
    """A committed copy of the checkout with an environment that is already installed:
    run.py finds its stamp current and installs nothing. Not under pytest's temporary
    folder, which is closed to other users: `run.py --with-postgres` started by root runs
    its server as `postgres`, which must reach the workspace."""
    folder = Path(tempfile.mkdtemp(prefix="swarm-readme-"))
    folder.chmod(0o711)
    try:
        yield installed_copy(folder / "checkout")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def installed_copy(destination: Path) -> Path:
    copy = committed_copy(destination)
    venv = copy / ".venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy2(Path(sys.prefix) / "pyvenv.cfg", venv / "pyvenv.cfg")
    (venv / "lib").symlink_to(Path(sys.prefix) / "lib")
    (venv / "bin" / "python").symlink_to(Path(sys.prefix) / "bin" / "python")
    version = hashlib.sha256((copy / "pyproject.toml").read_bytes()).hexdigest()
    (venv / ".swarm-installed").write_text(f"{version} test")
    return copy


class Walk:
    def __init__(self, checkout: Path):
        self.checkout = checkout
        self.base_env = plain_env() | {"SWARM_API_PORT": "0", "CONTROL_PANEL_PORT": "0"}
        self.exported: dict[str, str] = {}
        self.background: list[subprocess.Popen[str]] = []

    @property
    def env(self) -> dict[str, str]:
        return self.base_env | self.exported

    def new_block(self) -> None:
        self.exported = {}

    def start(self, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.checkout,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def run(self, command: str, *extra: str) -> None:
        exported = exported_name(command)
        if exported is not None:  # print what it set, to keep for the rest of the block
            command = f'{command} && printf %s "${exported}"'
        result = subprocess.run(
            ["bash", "-c", " ".join([command, *extra])],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        if exported is not None:
            self.exported[exported] = result.stdout

    def in_background(self, command: str) -> None:
        self.stop_background()
        self.beside(command)

    def beside(self, command: str) -> None:
        if exported_name(command) is not None:
            self.run(command)
            return
        self.background.append(self.start(command))
        assert first_line_with(self.background[-1], RUNNING, READY_SECONDS), command

    def follow(self, command: str) -> None:
        process = self.start(command)
        assert first_line_with(process, "", READY_SECONDS), command
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 0, command

    def stop_background(self) -> None:
        """The last started stops first: a second host before the first one's database."""
        while self.background:
            process = self.background.pop()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                assert process.wait(timeout=60) == 0


def exported_name(command: str) -> str | None:
    """NAME, for a command `export NAME=...`."""
    name = command.removeprefix("export ").partition("=")[0]
    return name if command.startswith("export ") and name.isidentifier() else None


def first_line_with(process: subprocess.Popen[str], text: str, seconds: float) -> bool:
    """Reads the process's output until a line holds `text` (any line, for "")."""
    assert process.stdout is not None
    deadline = time.monotonic() + seconds
    for line in process.stdout:
        if text in line and line.strip():
            return True
        if time.monotonic() > deadline:
            return False
    return False


def test_every_command_in_the_readme_works_as_written(checkout: Path) -> None:
    walk = Walk(checkout)
    try:
        for block in bash_blocks(README.read_text()):
            walk.new_block()
            for command in block.commands:
                if block.mode == "background":
                    walk.in_background(command)
                elif block.mode == "beside":
                    walk.beside(command)
                elif block.mode == "follow":
                    walk.follow(command)
                elif block.mode == "collect":
                    walk.run(command, "--collect-only", "-q")
                elif block.mode == "run":
                    walk.run(command)
    finally:
        walk.stop_background()
