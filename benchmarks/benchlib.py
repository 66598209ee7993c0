"""What the benchmarks share: medians, the result table, the machine, real child processes.

Absolute times differ between machines, so every benchmark measures its comparison
point in the same run and reports the ratio beside the time. A `Figure` is one row of
the table that `run_all.py` prints: the measured value, the target, and whether it met it.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from swarm_runtime.processes import stop_gracefully

ROOT = Path(__file__).resolve().parent.parent

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+\S*)")
START_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Figure:
    benchmark: str
    measure: str
    value: str
    target: str = ""
    passed: bool | None = None

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "MISS", None: ""}[self.passed]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def print_table(figures: list[Figure]) -> None:
    header = ("benchmark", "measure", "value", "target", "")
    rows = [header] + [(f.benchmark, f.measure, f.value, f.target, f.verdict) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for number, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if number == 0:
            print("  ".join("-" * width for width in widths))


def machine() -> dict[str, str]:
    """What the figures came from; no paths, only what another reader can compare."""
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": f"{_meminfo_gib():.1f} GiB",
        "filesystem": _filesystem_of(Path(os.environ.get("TMPDIR", "/tmp"))),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _filesystem_of(folder: Path) -> str:
    """The filesystem type holding the temp folder the benchmarks write to."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _device, mount, fstype, *_ = line.split()
            inside = str(folder.resolve()).startswith(mount.rstrip("/") + "/") or mount == "/"
            if inside and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def print_machine() -> None:
    for name, value in machine().items():
        print(f"  {name:<11} {value}")


def load_average() -> str:
    """Other work on the machine moves every figure; the table says how busy it was."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def durable_write_ms(folder: Path, rounds: int = 50, size: int = 2048) -> float:
    """One atomic state-file write on this disk (temp file, fsync, rename, fsync folder):
    the unit that every durable step of the runtime pays at least once."""
    from swarm_runtime.store.state_files import atomic_write_bytes

    path, data, samples = folder / "durable-write-probe.json", b"x" * size, []
    for _ in range(rounds):
        start = time.perf_counter()
        atomic_write_bytes(path, data)
        samples.append((time.perf_counter() - start) * 1000)
    path.unlink()
    return median(samples)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def clean_env(workspace: Path, **extra: str) -> dict[str, str]:
    """The host's SWARM_* settings never leak into a measured process."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SWARM_", "GROQ_", "CONTROL_PANEL_"))
    }
    env.update(SWARM_WORKSPACE=str(workspace), PYTHONUNBUFFERED="1", **extra)
    return env


class Child:
    """A runtime process (swarm.py, worker.py) started from the project root."""

    def __init__(self, args: list[str], env: dict[str, str], *, wait_for_url: bool):
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE if wait_for_url else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if wait_for_url else subprocess.DEVNULL,
        )
        self.url = self._read_url() if wait_for_url else None

    def _read_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = LISTENING.search(line)
            if match:
                threading.Thread(target=self._drain, daemon=True).start()
                return match.group(1)
        self.stop()
        raise RuntimeError("process did not announce its URL:\n" + "".join(seen))

    def _drain(self) -> None:
        """Keep reading, so a chatty process never blocks on a full pipe."""
        for _line in self.proc.stdout:
            pass

    def stop(self) -> None:
        stop_gracefully(self.proc)
