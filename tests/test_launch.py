"""The root files started with a Python that lacks the runtime's dependencies: inside a
checkout with .venv they run there; without one, one line says what to run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BARE_PYTHON = [str(Path(sys.base_prefix) / "bin" / "python3"), "-S"]  # no site-packages


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "swarm_runtime", copy / "swarm_runtime")
    for name in ("worker.py", "swarm.py", "control_panel.py"):
        shutil.copy2(ROOT / name, copy / name)
    return copy


@pytest.mark.parametrize("script", ["worker.py", "swarm.py", "control_panel.py"])
def test_without_an_environment_one_line_says_what_to_run(checkout: Path, script: str) -> None:
    result = subprocess.run(
        [*BARE_PYTHON, script, "--help"], cwd=checkout, capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "run `python3 run.py` once" in result.stderr and "no module named" in result.stderr


def test_with_the_checkouts_environment_the_command_runs_there(checkout: Path) -> None:
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    result = subprocess.run(
        [*BARE_PYTHON, "worker.py", "--help"], cwd=checkout, capture_output=True, text=True
    )
    assert result.returncode == 0 and "usage:" in result.stdout


def test_a_named_database_makes_its_driver_a_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python with the runtime's other dependencies but not psycopg ran the command and
    failed with a traceback deep in the store: the driver is imported only once a store is
    asked for, after the imports that send a command to .venv."""
    from swarm_runtime import launch

    reruns: list[str] = []
    monkeypatch.setattr(launch, "importable", lambda name: name != "psycopg")
    monkeypatch.setattr(launch, "rerun_in_venv", lambda missing: reruns.append(missing) or 3)
    monkeypatch.setenv("SWARM_DATABASE_URL", "postgresql://u:p@127.0.0.1:5432/d")
    assert launch.launch("swarm_runtime.cli") == 3 and reruns == ["psycopg"]
    monkeypatch.delenv("SWARM_DATABASE_URL")
    monkeypatch.setattr(sys, "argv", ["worker.py", "--help"])
    with pytest.raises(SystemExit):  # without a database the command runs as it is
        launch.launch("swarm_runtime.cli")
    assert reruns == ["psycopg"]
