"""swarm.py's execution API: /cycle, /plan, /status, loopback only, token-guarded."""

from swarm_runtime.api.app import create_app, main

__all__ = ["create_app", "main"]
