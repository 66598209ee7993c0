"""The shape of the repository: one package, the design card's files at the root holding
no logic, public names pinned, and layers that point one way."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

from swarm_runtime import launch

PACKAGE = ROOT / "swarm_runtime"
ENTRY_POINTS = {
    # worker.py runs the command line that joins the worker and the operator's commands.
    "worker": "swarm_runtime.cli",
    "swarm": "swarm_runtime.api",
    "control_panel": "swarm_runtime.panel",
}
CONSOLE_SCRIPTS = {
    "swarm": "swarm_runtime.cli:swarm_main",
    "swarm-worker": "swarm_runtime.cli:main",
    "swarm-api": "swarm_runtime.api:main",
    "swarm-panel": "swarm_runtime.panel:main",
}
FACADES = {
    "runtime_contract": "swarm_runtime.contract",
    "safety_gateway": "swarm_runtime.safety.gateway",
    "tool_router": "swarm_runtime.phases.routing",
    "swarm_enrichment": "swarm_runtime.phases.rewards",
}
ROOT_MODULES = {*ENTRY_POINTS, *FACADES, "run"}
GUARD = 'if __name__ == "__main__":\n    sys.exit(main())\n'
MAIN_GUARD = ast.dump(ast.parse(GUARD).body[0])
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

EXPORTS = {
    "runtime_contract": [
        "ACCEPTING_VERDICTS",
        "API_AUDIT_FILE",
        "APPROVED_STATUSES",
        "ActionRule",
        "ApiRetryEvent",
        "BALANCES_FILE",
        "BUDGET_LEDGER_FILE",
        "CLAIMABLE_STATUSES",
        "ChangeStatus",
        "CycleRequest",
        "CycleResponse",
        "DEFAULT_API_ENDPOINT",
        "DEFAULT_API_PORT",
        "DEFAULT_INTENSITY",
        "DEFAULT_MAX_BUDGET",
        "DEFAULT_MIN_BUDGET",
        "DEFAULT_PANEL_PORT",
        "DEFAULT_TASK_TYPE",
        "EVENT_FIELD_CAP_BYTES",
        "EXECUTION_LOG_FILE",
        "ErrorBody",
        "Event",
        "ExecutionEvent",
        "ExecutionFacts",
        "ExecutionFields",
        "ExecutionRecord",
        "FAILED_STATUSES",
        "KNOWN_EXECUTION_STATUSES",
        "LOCAL_MODEL",
        "Lease",
        "LeaseEvent",
        "Mode",
        "OFFLINE_MODEL",
        "OPERATOR_ACTIONS",
        "OperatorAction",
        "OperatorEvent",
        "Outcome",
        "PANEL_WORKER_ID",
        "PAUSE_FILE",
        "PlanEvent",
        "PlanFields",
        "QUALITY_GATE_FILE",
        "QUEUE_ARCHIVE_FILE",
        "QUEUE_CONTRACT_VERSION",
        "QUEUE_FILE",
        "QUEUE_JOURNAL_FILE",
        "QualityGateFields",
        "QualityGateStatus",
        "QueueDocument",
        "QueueJournalRecord",
        "REQUIRED_QUEUE_KEYS",
        "REWARD_LEDGER_FILE",
        "ReviewEvent",
        "ReviewFields",
        "ReviewRecord",
        "RewardFields",
        "SAFETY_AUDIT_FILE",
        "SANDBOX_DIR",
        "STATE_DIR",
        "Status",
        "TASK_DEFAULTS",
        "TASK_ID_PATTERN",
        "TASK_SPELLINGS",
        "TOKEN_FILE",
        "TOKEN_HEADER",
        "TOOL_STORE_FILE",
        "TRANSITIONS",
        "TRUNCATION_MARKER",
        "Task",
        "TaskId",
        "ToolRoute",
        "Usage",
        "Verdict",
        "WORKERS_DIR",
        "WorkerPresence",
        "action_allowed",
        "allowed_actions",
        "can_transition",
        "check_task_fields",
        "describe_statuses",
        "describe_validation_error",
        "empty_queue",
        "final_statuses",
        "implied_mode",
        "is_known_execution_status",
        "is_parked",
        "is_valid_task_id",
        "iso",
        "normalize_queue",
        "normalize_task",
        "queue_problems",
        "satisfying_statuses",
        "spelled_fields",
        "statuses_leading_to",
        "task_allows",
        "utc_now",
        "validate_queue_contract",
        "with_spellings",
    ],
    "safety_gateway": ["RuleMatch", "SafetyGateway", "build_report", "evaluate", "fold"],
    "tool_router": [
        "BUILTIN_TOOLS",
        "RouteDecision",
        "Tool",
        "ToolRouter",
        "decision_fields",
        "inject_tool_context",
        "load_router",
        "load_tool_store",
        "task_text",
    ],
    "swarm_enrichment": [
        "Balances",
        "Grant",
        "RewardBook",
        "RewardLedger",
        "RewardOutcome",
        "grant_key",
        "is_under_budget",
        "reward_tokens",
    ],
    "swarm_runtime.worker": ["WORKER_OPTION_DEFAULTS", "add_worker_options", "run_worker"],
    "swarm_runtime.operator": ["add_operator_commands", "run_command"],
    "swarm_runtime.api": ["create_app", "main"],
    "swarm_runtime.panel": ["create_app", "main"],
}


@pytest.fixture
def root_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The root files are scripts and facades, importable as a user at the root would."""
    monkeypatch.syspath_prepend(str(ROOT))


# --- the repository root ------------------------------------------------------------------


def test_the_root_holds_only_the_design_cards_files_and_run_py() -> None:
    assert {path.stem for path in ROOT.glob("*.py")} == ROOT_MODULES


def logic_in(source: str, *, entry_point: bool) -> list[str]:
    """Statements other than a docstring, imports, `__all__` and, in an entry point, the
    `if __name__ == "__main__": sys.exit(main())` block."""
    body = ast.parse(source).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    guards = [node for node in body if ast.dump(node) == MAIN_GUARD]
    found = [f"line {node.lineno}: {ast.unparse(node)[:60]}" for node in body if is_logic(node)]
    if entry_point and len(guards) != 1:
        found.append(f'{len(guards)} `if __name__ == "__main__": sys.exit(main())` blocks')
    if not entry_point and guards:
        found.append("a facade runs main()")
    return found


def is_logic(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import | ast.ImportFrom) or ast.dump(node) == MAIN_GUARD:
        return False
    return not is_all_of_names(node)


def is_all_of_names(node: ast.stmt) -> bool:
    """`__all__ = [...]` listing plain strings."""
    if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.List | ast.Tuple)):
        return False
    targets = [ast.unparse(target) for target in node.targets]
    names = [element for element in node.value.elts if isinstance(element, ast.Constant)]
    strings = len(names) == len(node.value.elts) and all(isinstance(n.value, str) for n in names)
    return targets == ["__all__"] and strings


NO_GUARD = '0 `if __name__ == "__main__": sys.exit(main())` blocks'


@pytest.mark.parametrize(
    ("source", "entry_point", "logic"),
    [
        ('"""Doc."""\nimport sys\nfrom m import main\n__all__ = ["main"]\n', False, []),
        (f"import sys\nfrom m import main\n{GUARD}", True, []),
        ("from m import main\n", True, [NO_GUARD]),
        ("from m import x\nx = x or 1\n", False, ["line 2: x = x or 1"]),
        ("__all__ = [n for n in dir()]\n", False, ["line 1: __all__ = [n for n in dir()]"]),
        ('__all__ = ["a", b]\n', False, ["line 1: __all__ = ['a', b]"]),
        ("def main():\n    pass\n", False, ["line 1: def main():\n    pass"]),
        (
            'if __name__ == "__main__":\n    main()\n',
            True,
            [
                "line 1: if __name__ == '__main__':\n    main()",
                NO_GUARD,
            ],
        ),
        (f"import sys\n{GUARD}", False, ["a facade runs main()"]),
    ],
)
def test_logic_in_tells_wiring_from_logic(source: str, entry_point: bool, logic: list[str]) -> None:
    assert logic_in(source, entry_point=entry_point) == logic


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_an_entry_point_only_calls_main(name: str) -> None:
    assert logic_in((ROOT / f"{name}.py").read_text(), entry_point=True) == []


@pytest.mark.parametrize("name", sorted(FACADES))
def test_a_facade_only_re_exports(name: str) -> None:
    assert logic_in((ROOT / f"{name}.py").read_text(), entry_point=False) == []


# --- the package never reaches back to the root ---------------------------------------------


def root_imports(source: str) -> list[str]:
    """Absolute imports of a root module (`import worker`, `from run import x`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [f"line {node.lineno}: {name}" for name in names if is_root_module(name)]
    return found


def is_root_module(name: str) -> bool:
    return name.split(".")[0] in ROOT_MODULES


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import worker", ["line 1: worker"]),
        ("import os, swarm.x", ["line 1: swarm.x"]),
        ("from run import main", ["line 1: run"]),
        ("def f():\n    from safety_gateway import SafetyGateway", ["line 2: safety_gateway"]),
        ("from swarm_runtime import worker", []),
        ("from . import worker", []),
        ("import swarm_runtime.worker", []),
    ],
)
def test_root_imports_finds_every_import_of_a_root_module(source: str, found: list[str]) -> None:
    assert root_imports(source) == found


def test_nothing_in_the_package_imports_a_root_module() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := root_imports(path.read_text()))
    }
    assert offenders == {}


# --- what each public name exports -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_exported_members(name: str, root_on_path: None) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert sorted(exported) == EXPORTS[name]
    assert len(set(exported)) == len(exported)
    assert [member for member in exported if not hasattr(module, member)] == []


@pytest.mark.parametrize("name", sorted(FACADES))
def test_a_facade_binds_the_package_objects_and_nothing_else(name: str, root_on_path: None) -> None:
    facade = importlib.import_module(name)
    package_module = importlib.import_module(FACADES[name])
    public = sorted(member for member in vars(facade) if not member.startswith("_"))
    assert public == sorted(facade.__all__)
    assert [m for m in public if getattr(facade, m) is not getattr(package_module, m)] == []


def test_the_design_cards_imports_work_as_written(root_on_path: None) -> None:
    from runtime_contract import KNOWN_EXECUTION_STATUSES
    from safety_gateway import SafetyGateway
    from swarm_runtime.contract import KNOWN_EXECUTION_STATUSES as in_package
    from swarm_runtime.safety.gateway import SafetyGateway as gateway_in_package

    assert KNOWN_EXECUTION_STATUSES is in_package
    assert SafetyGateway is gateway_in_package


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_an_entry_point_runs_the_packages_main(name: str, root_on_path: None) -> None:
    """Through the launcher, which turns a missing dependency into one line."""
    script = importlib.import_module(name)
    assert script.main is getattr(launch, name)
    assert launch.TARGETS[name] == ENTRY_POINTS[name]
    assert callable(importlib.import_module(ENTRY_POINTS[name]).main)


def test_the_console_scripts_run_the_same_mains() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == CONSOLE_SCRIPTS
    assert {target.split(":")[0] for target in CONSOLE_SCRIPTS.values()} == set(
        ENTRY_POINTS.values()
    )


# --- layers ----------------------------------------------------------------------------------


def lint_imports(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_import_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layer_contract(tmp_path: Path) -> None:
    """The contract can fail: a copy of the package whose store imports the worker."""
    shutil.copytree(PACKAGE, tmp_path / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / PACKAGE.name / "store" / "upward.py").write_text("import swarm_runtime.worker\n")
    result = lint_imports(tmp_path, PYTHONPATH=str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert "swarm_runtime.store.upward -> swarm_runtime.worker" in result.stdout
