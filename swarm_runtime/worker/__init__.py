"""The worker: claim, check, dispatch, review, reward; one task at a time."""

from swarm_runtime.worker.cli import WORKER_OPTION_DEFAULTS, add_worker_options, run_worker

__all__ = ["WORKER_OPTION_DEFAULTS", "add_worker_options", "run_worker"]
