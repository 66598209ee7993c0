"""What runs inside the peers' workers for bench_peers.py: the two task bodies, and the
start of Huey's consumer or of one RQ `SimpleWorker`.

Nothing here imports swarm_runtime, and Huey, RQ and redis are imported only where they
are used: the runtime never depends on them, and the other benchmarks run without them.

    python benchmarks/peer_workers.py huey DB READY_FOLDER WORKERS
    python benchmarks/peer_workers.py rq REDIS_URL QUEUE
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

# Our idle worker looks for new work every 20 ms; Huey's workers poll SQLite as often
# (its defaults, 0.1 s growing to 10 s while idle, would charge it a wait on the first task).
POLL_SECONDS = 0.02
PROVIDER_TIMEOUT_SECONDS = 30.0


def run_echo(number: int) -> str:
    """The local task: the same `echo` our runtime's tasks run."""
    done = subprocess.run(["echo", f"task {number}"], capture_output=True, text=True, check=True)
    return done.stdout


def chat_body(number: int) -> dict[str, Any]:
    """The request swarm.py sends the provider for the llm task `Say hello to N`, as the
    fake provider received it (the runtime puts the task's intent before the prompt)."""
    prompt = f"Say hello to {number}"
    content = f"## USER INTENT (Do not deviate)\nGoal: {prompt}\n## END USER INTENT\n\n{prompt}"
    return {
        "model": "local-model",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 1024,
        "temperature": 0.2,
    }


def ask_provider(base_url: str, number: int) -> str:
    """The llm task: one chat completion, its reply returned."""
    response = _session().post(
        f"{base_url}/chat/completions", json=chat_body(number), timeout=PROVIDER_TIMEOUT_SECONDS
    )
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


@functools.cache
def _session() -> requests.Session:
    """One pooled session per process, never through a proxy, as swarm.py's for a
    loopback provider."""
    session = requests.Session()
    session.trust_env = False
    return session


@dataclass(frozen=True)
class HueyApp:
    """A Huey on one SQLite file with its storage's defaults (WAL, SQLite's own
    synchronous=FULL: every commit waits for the disk), and the two tasks."""

    huey: Any
    echo: Any
    chat: Any


def huey_app(db: Path, ready: Path | None = None) -> HueyApp:
    """The same app for the side that enqueues and the consumer: tasks are named, so
    both find them whatever the module is called. Each worker that starts leaves its pid
    in `ready`."""
    from huey import SqliteHuey

    huey = SqliteHuey("bench", filename=str(db))
    if ready is not None:
        huey.on_startup("ready")(lambda: (ready / str(os.getpid())).touch())
    return HueyApp(huey, huey.task(name="echo")(run_echo), huey.task(name="chat")(ask_provider))


def serve_huey(db: Path, ready: Path, workers: int) -> None:
    """Huey's consumer with `workers` worker processes (as ours are processes)."""
    consumer = huey_app(db, ready).huey.create_consumer(
        workers=workers,
        worker_type="process",
        initial_delay=POLL_SECONDS,
        max_delay=POLL_SECONDS,
        backoff=1.0,
    )
    consumer.run()


def serve_rq(url: str, queue: str) -> None:
    """One RQ SimpleWorker: jobs run in its own process, no fork per job. It waits for
    work in a blocking pop, so it needs no polling interval."""
    from redis import Redis
    from rq import Queue, SimpleWorker

    connection = Redis.from_url(url)
    worker = SimpleWorker([Queue(queue, connection=connection)], connection=connection)
    worker.work(logging_level="WARNING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    systems = parser.add_subparsers(dest="system", required=True)
    huey = systems.add_parser("huey")
    huey.add_argument("db", type=Path)
    huey.add_argument("ready", type=Path)
    huey.add_argument("workers", type=int)
    rq = systems.add_parser("rq")
    rq.add_argument("url")
    rq.add_argument("queue")
    args = parser.parse_args()
    if args.system == "huey":
        serve_huey(args.db, args.ready, args.workers)
    else:
        serve_rq(args.url, args.queue)


if __name__ == "__main__":
    # As the module the enqueuing side imports: Huey names a task after its module.
    import peer_workers

    peer_workers.main()
