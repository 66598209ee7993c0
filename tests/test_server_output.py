"""What the servers print: no line per request unless asked, no terminal escapes, and a
taken port named with the option and the variable that choose another."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
import requests
from conftest import ROOT, RunningProcess, child_env, wait_until
from fake_llm_server import FakeLLMServer
from flask import Flask

from swarm_runtime.store.state_files import Workspace
from swarm_runtime.web.server import serve


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


# --- what each process says when it starts --------------------------------------------------


def wait_for_line(process: RunningProcess, text: str) -> str:
    wait_until(lambda: text in process.output, 20)
    return process.output


def test_every_process_names_its_workspace_and_api_at_start(
    spawn: Callable[..., RunningProcess], workspace: Workspace
) -> None:
    api = spawn(["swarm.py", "--port", "0"], child_env(workspace))
    wait_for_line(api, f"serving the workspace {workspace.root}")
    wait_for_line(api, "llm tasks: the offline model")
    panel = spawn(["control_panel.py", "--port", "0"], child_env(workspace))
    wait_for_line(panel, f"workspace {workspace.root}, execution API {api.url} (from queue.json)")
    worker = subprocess.run(
        [sys.executable, "worker.py", "--once"],
        cwd=ROOT,
        env=child_env(workspace),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"workspace {workspace.root}, execution API {api.url}" in worker.stdout


def test_the_api_says_which_provider_answers_and_status_shows_it(
    spawn: Callable[..., RunningProcess], workspace: Workspace, provider: FakeLLMServer
) -> None:
    env = child_env(workspace, SWARM_LLM_BASE_URL=provider.url, SWARM_LLM_MODEL="gpt-4o-mini")
    api = spawn(["swarm.py", "--port", "0"], env)
    output = wait_for_line(api, "which answers")
    assert "llm tasks: model gpt-4o-mini at 127.0.0.1:" in output

    def answering() -> object:
        return requests.get(f"{api.url}/status", timeout=10).json()["provider_answering"]

    wait_until(answering, 20)


def test_a_provider_that_is_not_there_is_named_at_start(
    spawn: Callable[..., RunningProcess], workspace: Workspace
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = child_env(
        workspace, SWARM_LLM_BASE_URL=f"http://127.0.0.1:{closed}/v1", SWARM_LLM_MODEL="m"
    )
    api = spawn(["swarm.py", "--port", "0"], env)
    output = wait_for_line(api, "which does not answer")
    assert "ConnectionError" in output
    status = requests.get(f"{api.url}/status", timeout=10).json()
    assert status["provider_answering"] is False and status["provider_error"]


@pytest.mark.parametrize("script", ["swarm.py", "control_panel.py", "worker.py"])
def test_a_provider_url_without_a_model_stops_every_process_at_start(
    workspace: Workspace, script: str
) -> None:
    env = child_env(workspace, SWARM_LLM_BASE_URL="http://127.0.0.1:9/v1")
    result = subprocess.run(
        [sys.executable, script, "--once"] if script == "worker.py" else [sys.executable, script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "SWARM_LLM_BASE_URL is set but SWARM_LLM_MODEL is not" in result.stderr


def test_a_stop_before_the_serving_loop_still_ends_cleanly() -> None:
    """SIGTERM right after the "listening on" line, before waitress's loop runs, once
    escaped as a traceback and exit 1 instead of a clean stop."""
    app = Flask(__name__)

    def stopped_at_once(_url: str) -> None:
        raise KeyboardInterrupt  # what the SIGTERM handler raises

    app.extensions["on_listening"] = stopped_at_once
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert serve(app, 0, "test server") == 0
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
