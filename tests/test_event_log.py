"""execution_log.jsonl as written: one JSON line per event, safe to `tail -f`."""

from __future__ import annotations

import json

import pytest

from swarm_runtime.contract import Status
from swarm_runtime.store.events import EventLog
from swarm_runtime.store.state_files import Workspace

C1_CONTROLS = ["\x80", "\x85", "\x9b", "\x9d", "\x9f"]


@pytest.mark.parametrize("control", C1_CONTROLS)
def test_c1_control_characters_are_escaped_in_the_log(workspace: Workspace, control: str) -> None:
    """U+009B is a one-character CSI: written raw, an output could drive the terminal of
    whoever tails the log. JSON escapes C0 controls itself, but not C1."""
    output = f"before{control}31mafter é"
    EventLog(workspace, "w1").emit("t-1", Status.COMPLETED, output=output)
    raw = workspace.log_path.read_bytes()
    assert not any(bytes([0xC2, byte]) in raw for byte in range(0x80, 0xA0))
    assert f"\\u{ord(control):04x}".encode() in raw
    assert json.loads(raw)["output"] == output
