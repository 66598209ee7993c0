"""The worker: claim, check, dispatch, review, reward; one task at a time."""

from swarm_runtime.worker.cli import main

__all__ = ["main"]
