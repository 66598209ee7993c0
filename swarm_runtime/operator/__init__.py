"""The operator's terminal: what the control panel shows and does, as commands.

status, fleet, tasks, show, events (--follow), add, requeue, cancel, requeue-failed,
pause and resume (each of a host or of the fleet), through the same store, validation
and events as the panel (queue.operations).
"""

from swarm_runtime.operator.cli import add_operator_commands, run_command

__all__ = ["add_operator_commands", "run_command"]
