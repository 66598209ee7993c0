"""Local mode: turn a task's command line into a checked plan, then run it in the sandbox.

A regex filter over a command line is not a boundary: a directory in front of an allowed
name, a `GIT_*=` prefix or an unchecked `--output=` value each ran code or wrote outside the
workspace. So a command is refused unless every rule in this module lets it through, and the
rules are evaluated as pure functions over the text (denylist, no shell syntax, an
allowlisted executable resolved on a fixed PATH, a table of allowed flags per command, paths
that stay inside the sandbox). What survives becomes a `CommandPlan` that runs without a
shell, in `<workspace>/sandbox/`, with an environment built from nothing, a timeout that
kills the whole process group and a cap on the output kept.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple

from swarm_runtime.contract import TRUNCATION_MARKER
from swarm_runtime.errors import PolicyViolation, SwarmError

TRUSTED_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_ALLOWLIST = ("echo", "ls", "pwd", "cat", "rg", "git")
DEFAULT_OUTPUT_CAP = 65536
ARG_MAX = os.sysconf("SC_ARG_MAX")
# Linux caps each argument at 32 pages whatever ARG_MAX says.
MAX_ARG_STRLEN = 32 * os.sysconf("SC_PAGE_SIZE")

# Kinds of value a flag or an operand takes.
PATH, TEXT, NUMBER = "path", "text", "number"

GIT_SAFETY_CONFIG = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "core.pager=cat",
    "-c", "protocol.allow=never",
)  # fmt: skip
GIT_IDENTITY = "swarm-runtime"


@dataclass(frozen=True)
class CommandPlan:
    """A command that passed every rule: exactly what will be executed, and where."""

    executable: str
    argv: tuple[str, ...]
    cwd: Path
    env: dict[str, str]


class ArgumentListTooLong(SwarmError):
    """exec refused the command (E2BIG): the request's fault, so no retry can help."""

    def __init__(self, plan: CommandPlan):
        size = sum(len(os.fsencode(arg)) + 1 for arg in plan.argv)
        longest = max(len(os.fsencode(arg)) for arg in plan.argv)
        super().__init__(
            f"the command's argument list is too long to run ({size} bytes, the longest "
            f"argument {longest}): the system limit is {ARG_MAX} bytes for all arguments "
            f"and environment together, and {MAX_ARG_STRLEN} bytes for any one argument"
        )


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None
    output: str
    timed_out: bool
    duration: float
    truncated: bool


# --- raw-string rules ----------------------------------------------------------------


class DenyRule(NamedTuple):
    rule: str
    pattern: re.Pattern[str]
    reason: str


def _deny(rule: str, pattern: str, reason: str) -> DenyRule:
    return DenyRule(rule, re.compile(pattern, re.IGNORECASE | re.DOTALL), reason)


_START, _END = r"(?<![\w.-])", r"(?![\w.-])"
_NETWORK_TOOLS = "nc|ncat|netcat|socat|telnet|ssh|scp|sftp|ftp|rsync|curl|wget"


def _after_first(lead: str, rest: str) -> str:
    """`lead`, then `rest` anywhere after it. Only the first lead is tried, since `rest` can
    match after a later lead only where it also matches after the first; scanning to the
    end again from every lead made a repeated `curl|` cost cubic time."""
    return rf"\A(?>.*?{lead}){rest}"


# Checked in order on the raw text; group 1 is what the reason names.
DENYLIST: tuple[DenyRule, ...] = (
    _deny(
        "deny.download_to_shell",
        # The directory before the shell stops at a pipe: a path through `|` also matches
        # from that later pipe, and so is not read again for every pipe before it.
        _after_first(
            rf"{_START}(curl|wget){_END}",
            rf".*\|\s*(?:sudo\s+)?(?:[^\s/|]*+/)*(?:ba|da|k|z|c|tc|fi)?sh{_END}",
        ),
        "download piped into a shell ('{}' output must never run as code)",
    ),
    _deny(
        "deny.network_tool",
        rf"{_START}({_NETWORK_TOOLS}){_END}",
        "network tool '{}' is not permitted (no outbound connections from tasks)",
    ),
    _deny(
        "deny.network_tool",
        r"(python[\d.]*\s+-m\s*(?:http\.server|SimpleHTTPServer))",
        "network tool '{}' is not permitted (no listening servers from tasks)",
    ),
    _deny(
        "deny.recursive_delete",
        _after_first(rf"{_START}rm\s", r"(?:.*\s)?(-(?=[a-z]*r)[a-z]++|--recursive)(?![\w-])"),
        "recursive delete 'rm {}' is not permitted (it can wipe the workspace)",
    ),
    _deny(
        "deny.disk_format",
        rf"{_START}(mkfs(?:\.\w+)?)(?![\w-])",
        "disk formatting command '{}' is not permitted",
    ),
    _deny(
        "deny.raw_disk_write",
        _after_first(rf"{_START}(dd)\s", r"(?:.*\s)?(?:if|of)="),
        "raw disk copy with '{}' is not permitted (it can overwrite devices)",
    ),
    _deny(
        "deny.power_control",
        rf"{_START}(shutdown|reboot|poweroff|halt){_END}",
        "host power control '{}' is not permitted",
    ),
    _deny(
        "deny.credential_file",
        r"(/etc/(?:passwd|shadow|gshadow|sudoers))(?![\w-])",
        "system credential file '{}' is off limits to tasks",
    ),
    _deny(
        "deny.ssh_keys",
        r"(?<![\w.])(\.ssh)(?![\w-])",
        "SSH key directory '{}' is off limits to tasks",
    ),
)

SHELL_METACHARACTERS = ("$(", "${", "`", ";", "&", "|", "<", ">", "\n", "\r", "\x00")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def denylist_violation(command: str) -> PolicyViolation | None:
    for rule in DENYLIST:
        match = rule.pattern.search(command)
        if match:
            return PolicyViolation(rule.rule, rule.reason.format(match.group(1)))
    return None


def metacharacter_violation(command: str) -> PolicyViolation | None:
    for char in SHELL_METACHARACTERS:
        if char in command:
            reason = f"shell metacharacter {char!r} is not permitted (commands run without a shell)"
            return PolicyViolation("shell_metacharacter", reason)
    return None


def tokenize(command: str) -> list[str]:
    """The command as argv, after the rules that read the raw text."""
    if not command.strip():
        raise PolicyViolation("empty", "the command is empty")
    violation = denylist_violation(command) or metacharacter_violation(command)
    if violation:
        raise violation
    try:
        tokens = shlex.split(command, posix=True)
    except ValueError as exc:
        raise PolicyViolation("unparsable", f"the command cannot be parsed ({exc})") from None
    if not tokens or not tokens[0]:
        raise PolicyViolation("empty", "the command names no executable")
    return tokens


def executable_name(tokens: list[str]) -> str:
    """argv[0], refused when it could smuggle in an environment or a binary of its own."""
    first = tokens[0]
    if ENV_ASSIGNMENT.match(first):
        name = first.partition("=")[0]
        reason = f"environment assignment '{name}=' is not allowed (the child environment is fixed)"
        raise PolicyViolation("env_assignment", reason)
    if "/" in first:
        reason = "executables are resolved on a fixed trusted PATH; paths are not allowed"
        raise PolicyViolation("executable_path", f"{reason} ({first!r})")
    return first


# --- arguments -----------------------------------------------------------------------


@dataclass(frozen=True)
class ArgSpec:
    """What one command (or git subcommand) accepts.

    `flags` maps each allowed flag to the kind of value it takes (None: no value). A flag
    written with its value (`--porcelain=v2`) may be listed as a flag of its own.
    `operands` is the kind of the non-flag arguments (None: none allowed). When
    `pattern_flags` is set, the first operand is a pattern unless one of them was given.
    """

    flags: Mapping[str, str | None]
    operands: str | None = PATH
    pattern_flags: frozenset[str] = frozenset()
    numeric_flags: bool = False
    inject: tuple[str, ...] = ()


def _flags(plain: str, valued: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """A flag table: `plain` flags take no value, `valued` ones take a value of that kind."""
    flags: dict[str, str | None] = dict.fromkeys(plain.split())
    flags.update(valued or {})
    return flags


COMMAND_SPECS: dict[str, ArgSpec] = {
    "echo": ArgSpec(_flags("-n -e -E"), operands=TEXT),
    "ls": ArgSpec(
        _flags("-a -A -l -h -R -1 -t -S -r -d -F --all --almost-all --human-readable --recursive")
    ),
    "cat": ArgSpec(_flags("-n -b -s -A -E -T -v --number")),
    "pwd": ArgSpec(_flags("-L -P"), operands=None),
    "rg": ArgSpec(
        _flags(
            "-i -S -s -n -N -l -c -w -F -v --ignore-case --smart-case --case-sensitive"
            " --line-number --no-line-number --files --files-with-matches --count"
            " --word-regexp --fixed-strings --hidden --invert-match",
            {
                "-e": TEXT, "--regexp": TEXT, "-g": PATH, "--glob": PATH, "-t": TEXT,
                "--type": TEXT, "-m": NUMBER, "--max-count": NUMBER, "-C": NUMBER,
                "--context": NUMBER, "-A": NUMBER, "-B": NUMBER,
            },
        ),
        pattern_flags=frozenset({"-e", "--regexp", "--files"}),
    ),
}  # fmt: skip

# Added to every diff-producing git command, whatever the repository's config says.
_NO_EXTERNAL_PROGRAMS = ("--no-ext-diff", "--no-textconv")
_DIFF_FLAGS = (
    "--stat --shortstat --numstat --name-only --name-status --no-color -p --patch"
    " --no-patch -w --ignore-all-space -b --ignore-space-change -R --word-diff"
)
_LOG_FLAGS = _flags(
    "--oneline --graph --decorate --all --reverse --abbrev-commit --first-parent"
    f" --no-merges --merges {_DIFF_FLAGS}",
    {
        "-n": NUMBER, "--max-count": NUMBER, "--skip": NUMBER, "--format": TEXT,
        "--pretty": TEXT, "--author": TEXT, "--grep": TEXT, "--since": TEXT, "--until": TEXT,
        "-U": NUMBER, "--unified": NUMBER,
    },
)  # fmt: skip

GIT_READ_SPECS: dict[str, ArgSpec] = {
    "status": ArgSpec(
        _flags(
            "-s --short -b --branch --long -z --ignored --porcelain --porcelain=v1"
            " --porcelain=v2 --untracked-files=no --untracked-files=normal --untracked-files=all"
        )
    ),
    "log": ArgSpec(_LOG_FLAGS, numeric_flags=True, inject=_NO_EXTERNAL_PROGRAMS),
    "show": ArgSpec(_LOG_FLAGS, inject=_NO_EXTERNAL_PROGRAMS),
    "diff": ArgSpec(
        _flags(
            f"{_DIFF_FLAGS} --cached --staged --exit-code --quiet",
            {"-U": NUMBER, "--unified": NUMBER},
        ),
        inject=_NO_EXTERNAL_PROGRAMS,
    ),
    "rev-parse": ArgSpec(
        _flags(
            "--show-toplevel --show-prefix --abbrev-ref --short --verify -q --quiet"
            " --is-inside-work-tree --git-dir --symbolic-full-name"
        )
    ),
    "ls-files": ArgSpec(
        _flags("-c --cached -m --modified -o --others -d --deleted -s --stage -z"
               " --exclude-standard")
    ),
}  # fmt: skip
GIT_WRITE_SPECS: dict[str, ArgSpec] = {
    "add": ArgSpec(_flags("-A --all -u --update -n --dry-run -v --verbose")),
    "commit": ArgSpec(
        _flags(
            "-a --all -q --quiet --allow-empty --amend --no-edit",
            {"-m": TEXT, "--message": TEXT},
        )
    ),
    "checkout": ArgSpec(_flags("-q --quiet", {"-b": TEXT})),
    "restore": ArgSpec(
        _flags("-S --staged -W --worktree -q --quiet", {"-s": TEXT, "--source": TEXT})
    ),
    "reset": ArgSpec(_flags("--soft --mixed --hard -q --quiet")),
    "branch": ArgSpec(
        _flags("-a --all -l --list -v --verbose --show-current -d --delete -m --move")
    ),
    "init": ArgSpec(_flags("-q --quiet", {"-b": TEXT, "--initial-branch": TEXT})),
}

GIT_GLOBAL_OPTION = "git global option '{}' is not allowed (the runtime sets git's options itself)"

# Why some refused flags are dangerous, so the refusal explains itself.
FLAG_DANGERS: dict[str, dict[str, str]] = {
    "rg": {
        "--pre": "it runs a program on every file searched",
        "--pre-glob": "it picks the files --pre runs a program on",
        "-z": "it runs decompression programs",
        "--search-zip": "it runs decompression programs",
        "-L": "it follows symlinks out of the sandbox",
        "--follow": "it follows symlinks out of the sandbox",
    },
    "git": {
        "--output": "it writes a file",
        "-o": "it writes a file",
        "--ext-diff": "it runs an external diff program",
        "--textconv": "it runs conversion programs",
        "--exec": "it runs a program",
        "--upload-pack": "it runs a program",
        "--receive-pack": "it runs a program",
        "--config": "it changes git's configuration",
        "--config-env": "it changes git's configuration",
    },
}


def flag_kind(command: str, spec: ArgSpec, flag: str) -> str | None:
    """The kind of value `flag` takes; refuses any flag the table does not list."""
    if flag in spec.flags:
        return spec.flags[flag]
    reason = f"flag '{flag}' is not allowed for {command}"
    danger = FLAG_DANGERS.get(command.split()[0], {}).get(flag)
    raise PolicyViolation("flag_not_allowed", f"{reason} ({danger})" if danger else reason)


def long_option(command: str, spec: ArgSpec, token: str) -> tuple[str, str | None]:
    """`--name` or `--name=value`; a value is never taken from the next token."""
    if token in spec.flags and spec.flags[token] is None:
        return token, None
    name, has_value, value = token.partition("=")
    kind = flag_kind(command, spec, name)
    if kind is None and has_value:
        raise PolicyViolation("flag_value", f"{command} flag '{name}' takes no value")
    if kind is not None and not has_value:
        raise PolicyViolation("flag_value", f"{command} flag '{name}' needs {name}=VALUE")
    return name, value if has_value else None


def short_options(
    command: str, spec: ArgSpec, token: str, rest: list[str]
) -> list[tuple[str, str | None]]:
    """`-x`, a cluster `-la`, or a valued `-n5` / `-n 5` (the value ends the cluster)."""
    if spec.numeric_flags and token[1:].isascii() and token[1:].isdigit():
        return [("-n", token[1:])]
    found: list[tuple[str, str | None]] = []
    for index, char in enumerate(token[1:], start=2):
        flag = f"-{char}"
        if flag_kind(command, spec, flag) is None:
            found.append((flag, None))
            continue
        value = token[index:] or (rest.pop(0) if rest else None)
        if value is None:
            raise PolicyViolation("flag_value", f"{command} flag '{flag}' needs a value")
        found.append((flag, value))
        break
    return found


def split_arguments(
    command: str, spec: ArgSpec, args: Iterable[str]
) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Flags (with their values) and operands, parsed the way getopt-style tools do."""
    options: list[tuple[str, str | None]] = []
    operands: list[str] = []
    rest = list(args)
    while rest:
        token = rest.pop(0)
        if token == "--":
            operands.extend(rest)
            break
        if token == "-" or not token.startswith("-"):
            operands.append(token)
        elif token.startswith("--"):
            options.append(long_option(command, spec, token))
        else:
            options.extend(short_options(command, spec, token, rest))
    return options, operands


def path_problem(token: str, root: Path) -> str | None:
    """Why `token`, opened from the sandbox, could reach outside it; None when it cannot."""
    if URL.match(token):
        return f"URL {token!r} is not allowed (tasks have no network)"
    if token.startswith("~"):
        return f"home-relative path {token!r} is not allowed"
    if ".." in PurePosixPath(token).parts:
        return f"path {token!r} climbs out with '..'"
    try:
        resolved = (root / token).resolve()
    except (OSError, RuntimeError):
        return f"path {token!r} cannot be resolved"
    if not resolved.is_relative_to(root):
        return f"path {token!r} resolves outside the sandbox"
    return None


def check_value(label: str, kind: str | None, value: str, root: Path) -> None:
    """`label` names the command, or the command and flag, the value was given to."""
    if kind is None:
        raise PolicyViolation("unexpected_argument", f"{label} takes no argument {value!r}")
    if kind == NUMBER and not (value.isascii() and value.isdigit()):
        raise PolicyViolation("flag_value", f"{label} expects a number, not {value!r}")
    problem = path_problem(value, root) if kind == PATH else None
    if problem:
        raise PolicyViolation("path_escape", problem)


def check_arguments(command: str, spec: ArgSpec, args: Iterable[str], root: Path) -> None:
    options, operands = split_arguments(command, spec, args)
    for flag, value in options:
        if value is not None:
            check_value(f"{command} {flag}", spec.flags[flag], value, root)
    kinds = [spec.operands] * len(operands)
    if kinds and spec.pattern_flags and not any(f in spec.pattern_flags for f, _ in options):
        kinds[0] = TEXT
    for kind, operand in zip(kinds, operands, strict=True):
        check_value(command, kind, operand, root)


def git_arguments(args: list[str], root: Path, allow_write: bool) -> list[str]:
    """A git subcommand checked against its table, behind the options the runtime fixes."""
    if not args:
        raise PolicyViolation("git_subcommand", "git needs a subcommand")
    subcommand, rest = args[0], args[1:]
    if subcommand.startswith("-"):
        option = subcommand.partition("=")[0]
        raise PolicyViolation("flag_not_allowed", GIT_GLOBAL_OPTION.format(option))
    specs = {**GIT_READ_SPECS, **(GIT_WRITE_SPECS if allow_write else {})}
    if subcommand not in specs:
        allowed = ", ".join(sorted(specs))
        reason = f"git subcommand '{subcommand}' is not allowed (allowed: {allowed})"
        raise PolicyViolation("git_subcommand", reason)
    spec = specs[subcommand]
    check_arguments(f"git {subcommand}", spec, rest, root)
    return [*GIT_SAFETY_CONFIG, subcommand, *spec.inject, *rest]


# --- the policy ----------------------------------------------------------------------


def child_env(root: Path, executable: str) -> dict[str, str]:
    """Built from nothing, so no key or token of the runtime ever reaches a task."""
    env = {"PATH": TRUSTED_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(root)}
    if executable == "git":
        env.update(git_env(root))
    return env


def git_env(root: Path) -> dict[str, str]:
    """Pin git to the sandbox repository and to no configuration but its own."""
    return {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CEILING_DIRECTORIES": str(root.parent),
        "GIT_DIR": str(root / ".git"),
        "GIT_WORK_TREE": str(root),
        "GIT_EDITOR": "true",
        "GIT_AUTHOR_NAME": GIT_IDENTITY,
        "GIT_AUTHOR_EMAIL": f"{GIT_IDENTITY}@localhost",
        "GIT_COMMITTER_NAME": GIT_IDENTITY,
        "GIT_COMMITTER_EMAIL": f"{GIT_IDENTITY}@localhost",
    }


class LocalCommandPolicy:
    """Decides whether a command line may run, and if so exactly how (a `CommandPlan`)."""

    def __init__(
        self,
        sandbox: Path,
        allowlist: Iterable[str] = DEFAULT_ALLOWLIST,
        *,
        git_allow_write: bool = False,
    ):
        self.root = Path(sandbox).resolve()
        self.allowlist = frozenset(allowlist)
        self.git_allow_write = git_allow_write
        unknown = sorted(self.allowlist - {*COMMAND_SPECS, "git"})
        if unknown:
            raise ValueError(f"no argument rules for {', '.join(unknown)}; cannot allow them")

    def check(self, command: str) -> CommandPlan:
        """The plan for `command`, or PolicyViolation naming the first rule it breaks."""
        tokens = tokenize(command)
        name = executable_name(tokens)
        if name not in self.allowlist:
            allowed = ", ".join(sorted(self.allowlist))
            raise PolicyViolation("allowlist", f"'{name}' is not in allowlist (allowed: {allowed})")
        args = tokens[1:]
        if name == "git":
            args = git_arguments(args, self.root, self.git_allow_write)
        else:
            check_arguments(name, COMMAND_SPECS[name], args, self.root)
        executable = shutil.which(name, path=TRUSTED_PATH)
        if executable is None:
            reason = f"'{name}' is not installed on the trusted PATH ({TRUSTED_PATH})"
            raise PolicyViolation("not_installed", reason)
        return CommandPlan(name, (executable, *args), self.root, child_env(self.root, name))


def prepare_sandbox(sandbox: Path) -> None:
    """Create the sandbox and give it a git repository of its own.

    Without one, git run from the sandbox would find and change the enclosing repository.
    Safe to call on every start.
    """
    sandbox.mkdir(parents=True, exist_ok=True)
    git_dir = sandbox / ".git"
    if git_dir.is_symlink() or git_dir.is_file():
        raise SwarmError(f"{git_dir} must be a directory: a link or gitdir file points elsewhere")
    if git_dir.exists() or shutil.which("git", path=TRUSTED_PATH) is None:
        return
    plan = LocalCommandPolicy(sandbox, ("git",), git_allow_write=True).check("git init -q")
    result = run_command(plan, timeout=30)
    if result.exit_code != 0:
        raise SwarmError(f"cannot create the sandbox repository in {sandbox}: {result.output}")


# --- running -------------------------------------------------------------------------


class _Capture:
    """Keeps the first `cap` bytes and only counts the rest, so a flood cannot fill memory."""

    def __init__(self, cap: int):
        self.cap = cap
        self.head = bytearray()
        self.total = 0

    def drain(self, stream: IO[bytes], deadline: float) -> bool:
        """Read until end of file (True) or until the deadline passes (False)."""
        poller = _poller(stream.fileno())
        while (remaining := deadline - time.monotonic()) > 0:
            if not poller.poll(_milliseconds(remaining)):
                continue
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return True
            self.total += len(chunk)
            self.head += chunk[: max(0, self.cap - len(self.head))]
        return False

    def text(self) -> tuple[str, bool]:
        dropped = self.total - len(self.head)
        text = self.head.decode("utf-8", errors="replace")
        if dropped:
            return text + TRUNCATION_MARKER.format(dropped=dropped), True
        return text, False


def _poller(fd: int) -> select.poll:
    """A poll object on one descriptor: readable, or hung up. Unlike a selector it
    opens no epoll descriptor of its own, a few microseconds and two system calls less
    on each local command."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return poller


def _milliseconds(seconds: float) -> int:
    """poll's timeout, rounded up: rounded down, the last millisecond would spin."""
    return math.ceil(max(0.0, seconds) * 1000)


def _wait(process: subprocess.Popen[bytes], capture: _Capture, deadline: float) -> int | None:
    assert process.stdout is not None
    if not capture.drain(process.stdout, deadline):
        return None
    return _exit_code(process, deadline)


def _exit_code(process: subprocess.Popen[bytes], deadline: float) -> int | None:
    """The exit code, or None if the process outlives the deadline. Waited for on a pidfd
    where the kernel has them: `Popen.wait(timeout=)` polls with sleeps of 0.5 ms and
    more, which cost every local command about half a millisecond."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        return _exit_code_polled(process, deadline)
    try:
        if not _poller(pidfd).poll(_milliseconds(deadline - time.monotonic())):
            return None
    finally:
        os.close(pidfd)
    return process.wait()


def _exit_code_polled(process: subprocess.Popen[bytes], deadline: float) -> int | None:
    try:
        return process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_command(
    plan: CommandPlan, *, timeout: float, output_cap: int = DEFAULT_OUTPUT_CAP
) -> CommandResult:
    """Run a checked plan without a shell; stdout and stderr come back merged.

    The command gets its own session, so on timeout the whole process group is killed,
    not just its leader. A command killed by a signal reports a negative exit code.
    """
    started = time.monotonic()
    capture = _Capture(output_cap)
    with _spawn(plan) as process:
        exit_code = _wait(process, capture, started + timeout)
        if exit_code is None:
            _kill_group(process)
            assert process.stdout is not None
            capture.drain(process.stdout, time.monotonic() + 1.0)
    output, truncated = capture.text()
    return CommandResult(
        exit_code=exit_code,
        output=output,
        timed_out=exit_code is None,
        duration=time.monotonic() - started,
        truncated=truncated,
    )


def _spawn(plan: CommandPlan) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            plan.argv,
            shell=False,
            cwd=plan.cwd,
            env=plan.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        if exc.errno == errno.E2BIG:
            raise ArgumentListTooLong(plan) from exc
        raise
