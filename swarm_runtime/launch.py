"""Starting a process from the checkout's root files (`python3 worker.py`, `swarm.py`,
`control_panel.py`) with whatever Python the operator typed.

Only the standard library is used here, so this works before anything is installed.
When the interpreter lacks the runtime's dependencies and the checkout has its `.venv`
(made by `python3 run.py`), the command runs again inside it, as run.py itself does;
without one, the operator gets one line saying what to run, not a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
VENV_PYTHON = CHECKOUT / ".venv" / "bin" / "python"
# Each root file of the checkout, and the module whose main() it runs.
TARGETS = {
    "worker": "swarm_runtime.cli",
    "swarm": "swarm_runtime.api",
    "control_panel": "swarm_runtime.panel",
}
# Imported only once a database is asked for, long after the imports `launch` sees fail;
# with SWARM_DATABASE_URL set it is a dependency like the others.
DATABASE_VARIABLE, DATABASE_DRIVER = "SWARM_DATABASE_URL", "psycopg"


def worker() -> int:
    return launch(TARGETS["worker"])


def swarm() -> int:
    return launch(TARGETS["swarm"])


def control_panel() -> int:
    return launch(TARGETS["control_panel"])


def launch(module: str) -> int:
    """Run `module.main()` and return its exit code."""
    try:
        main = importlib.import_module(module).main
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] == "swarm_runtime":
            raise
        return rerun_in_venv(exc.name)
    if os.environ.get(DATABASE_VARIABLE, "").strip() and not importable(DATABASE_DRIVER):
        return rerun_in_venv(DATABASE_DRIVER)
    code: int = main()
    return code


def importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def rerun_in_venv(missing: str) -> int:
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])
    print(
        f"error: this Python ({sys.executable}) lacks swarm-runtime's dependencies (no module "
        f"named {missing!r}); run `python3 run.py` once in {CHECKOUT} to install them into "
        ".venv/, then run this command again",
        file=sys.stderr,
    )
    return 2
