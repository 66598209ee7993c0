"""What the servers print: no line per request unless asked, no terminal escapes, and a
taken port named with the option and the variable that choose another."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
import requests
from conftest import ROOT, RunningProcess, child_env

from swarm_runtime.store.state_files import Workspace


def served_twice(spawn: Callable[..., RunningProcess], workspace: Workspace, *flags: str) -> str:
    process = spawn(["swarm.py", "--port", "0", *flags], child_env(workspace))
    for _ in range(2):
        assert requests.get(f"{process.url}/status", timeout=10).status_code == 200
    assert process.stop() == 0
    return process.output


def test_no_access_line_per_request_by_default(
    spawn: Callable[..., RunningProcess], workspace: Workspace
) -> None:
    output = served_twice(spawn, workspace)
    assert "GET /status" not in output and "\x1b" not in output


def test_access_log_on_request(spawn: Callable[..., RunningProcess], workspace: Workspace) -> None:
    output = served_twice(spawn, workspace, "--access-log")
    assert output.count("GET /status 200") == 2 and "\x1b" not in output


@pytest.mark.parametrize(
    "script, variable", [("swarm.py", "SWARM_API_PORT"), ("control_panel.py", "CONTROL_PANEL_PORT")]
)
def test_a_taken_port_is_one_line_naming_how_to_choose_another(
    workspace: Workspace, script: str, variable: str
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, script, "--port", str(port)],
            cwd=ROOT,
            env=child_env(workspace),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"error: port {port} on 127.0.0.1 is in use" in result.stderr
    assert f"--port or {variable}" in result.stderr and "Traceback" not in result.stderr
