"""The operator's page: watch the runtime live and operate the queue."""

from swarm_runtime.panel.app import create_app, main

__all__ = ["create_app", "main"]
