"""Control panel latency with a 1 MB and a 1 GB execution log.

The log is generated once per size from real event records (`event_log.build_event`,
the four events of an approved task, with a realistic result and safety report), for
as many tasks as fill the size; queue.json holds the last 200 of them in both cases.
The panel is the real app (`control_panel.create_app`), indexed once (timed: the
one-off cost of opening a large log), then asked through Flask's test client for the
task list (`/api/tasks`) and the event backlog (`/api/events`), alternating between the
two panels request by request. Comparison point: the same requests with the 1 MB log.
Target: latency with 1 GB <= 1.5x latency with 1 MB.

    python benchmarks/bench_panel.py [--log-mb 1024] [--requests N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchlib import Figure, free_bytes, median, print_table, seconds

from swarm_runtime.contract import ReviewEvent, Status
from swarm_runtime.panel.app import create_app
from swarm_runtime.settings import Settings
from swarm_runtime.store.events import build_event
from swarm_runtime.store.state_files import Workspace, atomic_write_json

NAME = "4 control panel"
SMALL_MB = 1
QUEUE_TASKS = 200
HOST = {"Host": "127.0.0.1:8421"}
ENDPOINTS = {"task list": "/api/tasks", "event backlog": "/api/events"}
TARGET_RATIO = 1.5
PLACEHOLDER = "task-PLACEHOLDER"
SUMMARY = (
    "Wrote the loader in config_loader.py: it reads the JSON file, validates the keys "
    "against the schema, and falls back to defaults for missing optional values. "
) * 3


def task_events(task_id: str) -> bytes:
    """The four lines a worker writes for one approved task."""
    common = {"mode": "llm", "model": "llama-3.1-8b-instant"}
    report = {
        "passed": True,
        "checks": ["constitutional", "workspace", "network", "injection"],
        "blocked_reason": None,
        "matches": [],
    }
    done = {
        "started_at": "2026-01-05T10:00:00+00:00",
        "completed_at": "2026-01-05T10:00:02+00:00",
        "result_summary": SUMMARY,
        "budget_used": 0.00042,
        "safety_passed": True,
        "tool_route": "generate",
        "tool_confidence": 0.0,
    }
    review = {
        "review_verdict": "APPROVE",
        "review_confidence": 0.92,
        "review_issues": [],
        "review_attempt": 0,
        "quality_gate_status": "needs_qa",
    }
    records = [
        build_event(task_id, "host-4242", Status.IN_PROGRESS, attempt=1, **common),
        build_event(task_id, "host-4242", Status.COMPLETED, safety_report=report, **done, **common),
        build_event(task_id, "host-4242", Status.PENDING_REVIEW, ReviewEvent, **done, **review),
        build_event(
            task_id,
            "host-4242",
            Status.APPROVED,
            ReviewEvent,
            **done,
            **review,
            phase5_reward_applied=True,
            phase5_reward_tokens_awarded=10,
        ),
    ]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def write_log(workspace: Workspace, size: int) -> int:
    """Fill the log to `size` bytes; returns the number of tasks written."""
    template = task_events(PLACEHOLDER).decode()
    written = tasks = 0
    with open(workspace.log_path, "wb") as handle:
        while written < size:
            per_block = min(2000, (size - written) // len(template) + 1)
            block = "".join(
                template.replace(PLACEHOLDER, f"task-{tasks + i:07d}") for i in range(per_block)
            ).encode()
            handle.write(block)
            written += len(block)
            tasks += per_block
    return tasks


def write_queue(workspace: Workspace, tasks: int) -> None:
    shown = range(max(0, tasks - QUEUE_TASKS), tasks)
    atomic_write_json(
        workspace.queue_path,
        {
            "version": "1.1",
            "api_endpoint": "http://127.0.0.1:8420",
            "tasks": [
                {
                    "id": f"task-{n:07d}",
                    "prompt": f"Write config loader number {n}",
                    "status": "approved",
                    "attempts": 1,
                }
                for n in shown
            ],
            "completed": [f"task-{n:07d}" for n in shown],
            "failed": [],
        },
    )


class Subject:
    """One workspace with a generated log, and the panel app indexed over it."""

    def __init__(self, folder: Path, size_mb: int):
        self.workspace = Workspace(folder)
        self.workspace.ensure_layout()
        write_queue(self.workspace, write_log(self.workspace, size_mb * 1024 * 1024))
        self.log_bytes = self.workspace.log_path.stat().st_size
        self.app = create_app(Settings(workspace=self.workspace.root))
        self.panel = self.app.extensions["panel"]
        self.index_seconds = seconds(self.panel.index.refresh)
        self.client = self.app.test_client()

    def get_ms(self, url: str) -> float:
        start = time.perf_counter()
        response = self.client.get(url, headers=HOST)
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
        return elapsed


def interleaved(small: Subject, large: Subject, url: str, requests: int) -> tuple[float, float]:
    """Alternate the two panels request by request, so that whatever else the machine is
    doing slows both alike; medians after a few warm-up requests."""
    samples: tuple[list[float], list[float]] = ([], [])
    for number in range(requests + 3):
        for subject, kept in zip((small, large), samples, strict=True):
            elapsed = subject.get_ms(url)
            if number >= 3:
                kept.append(elapsed)
    return median(samples[0]), median(samples[1])


def run(
    quick: bool = False, log_mb: int | None = None, requests: int | None = None
) -> list[Figure]:
    log_mb = log_mb or (128 if quick else 1024)
    requests = requests or (30 if quick else 100)
    needed = (log_mb + SMALL_MB) * 1024 * 1024 + 512 * 1024 * 1024
    free = free_bytes(Path(tempfile.gettempdir()))
    if free < needed:
        reason = f"skipped: {free / 2**30:.1f} GiB free, {needed / 2**30:.1f} GiB needed"
        print(f"  {reason}")
        return [Figure(NAME, f"{log_mb} MB log", reason)]
    with tempfile.TemporaryDirectory() as small_dir, tempfile.TemporaryDirectory() as large_dir:
        small, large = Subject(Path(small_dir), SMALL_MB), Subject(Path(large_dir), log_mb)
        try:
            return figures(small, large, requests)
        finally:
            small.panel.close()
            large.panel.close()


def figures(small: Subject, large: Subject, requests: int) -> list[Figure]:
    size = large.log_bytes
    label = f"{size / 2**30:.2f} GB" if size >= 2**30 else f"{size / 2**20:.0f} MB"
    print(
        f"  index: {small.log_bytes / 2**20:.1f} MB in {small.index_seconds * 1000:.0f} ms, "
        f"{label} in {large.index_seconds:.1f} s",
        flush=True,
    )
    result = []
    for name, url in ENDPOINTS.items():
        small_ms, large_ms = interleaved(small, large, url, requests)
        ratio = large_ms / small_ms
        print(f"  {name}: {small_ms:.2f} ms (1 MB) vs {large_ms:.2f} ms ({label})", flush=True)
        result.append(
            Figure(
                NAME,
                f"{name}, {label} vs 1 MB log",
                f"{large_ms:.2f} vs {small_ms:.2f} ms = {ratio:.2f}x",
                f"<= {TARGET_RATIO}x",
                ratio <= TARGET_RATIO,
            )
        )
    result.append(
        Figure(
            NAME,
            f"one-off index of the {label} log",
            f"{large.index_seconds:.1f} s ({size / 2**20 / large.index_seconds:.0f} MB/s)",
        )
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-mb", type=int, help="size of the large log (default 1024)")
    parser.add_argument("--requests", type=int, help="requests per endpoint (default 100)")
    parser.add_argument("--quick", action="store_true", help="a 128 MB log, fewer requests")
    args = parser.parse_args()
    print_table(run(args.quick, args.log_mb, args.requests))


if __name__ == "__main__":
    main()
