from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from swarm_runtime.contract import ExecutionFields, ToolRoute
from swarm_runtime.errors import StateFileError
from swarm_runtime.phases import routing as tool_router
from swarm_runtime.phases.routing import (
    BUILTIN_TOOLS,
    RouteDecision,
    Tool,
    ToolRouter,
    decision_fields,
    inject_tool_context,
    load_router,
    load_tool_store,
)
from swarm_runtime.store.state_files import Workspace

EXACT, SEMANTIC = ToolRoute.EXACT, ToolRoute.SEMANTIC
COMPOSED, GENERATE = ToolRoute.COMPOSED, ToolRoute.GENERATE

ROBUST_LOAD = """Make this robust:
```python
import json
with open('config.json') as f:
    cfg = json.load(f)
```
It crashes with a traceback when the file is malformed."""

# (prompt, route, tool name). Generic work words ("write", "data", "add", "update") and file
# extensions are not evidence; a tool needs two of its own words, or one of its phrases.
ROUTE_TABLE = [
    # The reference composed both JSON skills for this one: no word of it belongs to a tool.
    ("Update the README with install steps", GENERATE, None),
    # The reference sent this to a test skill. "write" and "parser" alone name no tool here:
    # nothing says JSON, CSV or atomic, so reusing one of them would guess at the task.
    ("Write the data to disk and add a test for the parser", GENERATE, None),
    ("Refactor the payment service to use dependency injection", GENERATE, None),
    ("Update config.json with the new port", GENERATE, None),
    ("Convert the YAML config to JSON", GENERATE, None),
    ("Write a JSON schema for the API response", GENERATE, None),
    ("Read the README and the config docs", GENERATE, None),
    ("Read the error log and summarize failures", GENERATE, None),
    ("Add a retry button to the upload dialog", GENERATE, None),
    ("Parse command line arguments with argparse", GENERATE, None),
    ("Profile the my_slugify_cache hit rate", GENERATE, None),
    ("", GENERATE, None),
    ("  \n\t ", GENERATE, None),
    ("Übersetze die Benutzeroberfläche ins Deutsche 🇩🇪", GENERATE, None),
    ("Use read_json_safe to load config.json", EXACT, "read_json_safe"),
    ("Slugify every article title before saving", EXACT, "slugify"),
    ("Wrap this call:\n```python\nurl = slugify(title)\n```", EXACT, "slugify"),
    # A longer identifier that contains a tool name is a different name: never exact.
    ("Rename read_json_safely to load_settings", SEMANTIC, "read_json_safe"),
    (
        "Load settings from a JSON file and report a clear error when it is malformed",
        SEMANTIC,
        "read_json_safe",
    ),
    (ROBUST_LOAD, SEMANTIC, "read_json_safe"),
    (
        "Save the settings as JSON without corrupting the file on a crash",
        SEMANTIC,
        "write_json_atomic",
    ),
    ("Add retries with exponential backoff to the webhook sender", SEMANTIC, "retry_with_backoff"),
    ("Fetch JSON from the GitHub API with a timeout", SEMANTIC, "http_get_json"),
    ("Parse the uploaded CSV into a list of rows", SEMANTIC, "parse_csv_rows"),
    ("Generate URL slugs for blog post titles", SEMANTIC, "slugify"),
    ("Turn the title «Crème Brûlée — Café» into a URL slug without accents", SEMANTIC, "slugify"),
    (
        "Read the JSON config safely, then write it back atomically",
        COMPOSED,
        "composed_read_json_safe_write_json_atomic",
    ),
    (
        "Fetch the exchange rates from the API and retry with exponential backoff on timeouts",
        COMPOSED,
        "composed_http_get_json_retry_with_backoff",
    ),
    (
        "Download the CSV export over HTTP, parse the rows, and turn each title into a URL slug",
        COMPOSED,
        "composed_http_get_json_parse_csv_rows_slugify",
    ),
    (
        "Call read_json_safe, then write_json_atomic",
        COMPOSED,
        "composed_read_json_safe_write_json_atomic",
    ),
]


@pytest.fixture(scope="module")
def router() -> ToolRouter:
    return ToolRouter(BUILTIN_TOOLS)


def builtin(name: str) -> Tool:
    return next(tool for tool in BUILTIN_TOOLS if tool.name == name)


def write_store(workspace: Workspace, document: Any) -> Path:
    workspace.tool_store_path.write_text(json.dumps(document), encoding="utf-8")
    return workspace.tool_store_path


def store_entry(**overrides: Any) -> dict[str, Any]:
    entry = {
        "description": "Roll out a Helm chart to a Kubernetes cluster",
        "keywords": ["helm", "kubernetes"],
        "code": "def deploy() -> None: ...\n",
    }
    return {**entry, **overrides}


# --- routing --------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "route", "tool_name"), ROUTE_TABLE)
def test_route_table(
    router: ToolRouter, prompt: str, route: ToolRoute, tool_name: str | None
) -> None:
    decision = router.route(prompt)
    assert (decision.route, decision.tool.name if decision.tool else None) == (route, tool_name)


@pytest.mark.parametrize(("prompt", "route", "tool_name"), ROUTE_TABLE)
def test_confidence_fits_the_route(
    router: ToolRouter, prompt: str, route: ToolRoute, tool_name: str | None
) -> None:
    confidence = router.route(prompt).confidence
    if route == GENERATE:
        assert confidence == 0.0
    elif route == EXACT:
        assert confidence == 1.0
    elif route == SEMANTIC:
        assert tool_router.SEMANTIC_THRESHOLD <= confidence < 1.0
    else:
        assert tool_router.COMPONENT_THRESHOLD <= confidence <= 1.0


def test_unrelated_prompt_gets_no_tool_code(router: ToolRouter) -> None:
    """The reference injected JSON helpers into a README task."""
    prompt = "Update the README with install steps"
    assert inject_tool_context(prompt, router.route(prompt)) == prompt


def test_composed_tool_runs_the_parts_in_the_order_the_task_names_them(
    router: ToolRouter,
) -> None:
    decision = router.route("Read the JSON config safely, then write it back atomically")
    read, write = builtin("read_json_safe"), builtin("write_json_atomic")
    assert decision.components == ("read_json_safe", "write_json_atomic")
    assert decision.tool.code == (
        f"# --- Skill: read_json_safe ---\n{read.code.strip()}\n\n"
        f"# --- Skill: write_json_atomic ---\n{write.code.strip()}"
    )
    assert decision.tool.source == "builtin"
    ast.parse(decision.tool.code)


def test_an_exact_name_and_a_semantic_part_compose_below_full_confidence(
    router: ToolRouter,
) -> None:
    prompt = "Use read_json_safe to load the config, then save it back atomically, no corruption"
    decision = router.route(prompt)
    assert (decision.route, decision.components) == (
        COMPOSED,
        ("read_json_safe", "write_json_atomic"),
    )
    assert 0.5 < decision.confidence < 1.0, "an exact part (1.0) and a semantic part (< 1.0)"


def test_more_than_three_exact_names_keep_the_first_three_by_position(
    router: ToolRouter,
) -> None:
    decision = router.route("Chain read_json_safe, slugify, http_get_json and parse_csv_rows")
    assert decision.route == COMPOSED
    assert decision.components == ("read_json_safe", "slugify", "http_get_json")
    assert decision.confidence == 1.0


def test_a_wrapped_prompt_is_routed_by_its_task_not_the_injected_code(
    router: ToolRouter,
) -> None:
    """The reference routed the already-wrapped prompt, so injected code picked tools."""
    prompt = "Update the README with install steps"
    wrapped = inject_tool_context(prompt, router.route("Slugify the title"))
    assert "slugify" in wrapped
    assert router.route(wrapped) == router.route(prompt)


def test_routing_is_deterministic(router: ToolRouter) -> None:
    prompts = [prompt for prompt, _, _ in ROUTE_TABLE]
    assert [router.route(p) for p in prompts] == [
        ToolRouter(BUILTIN_TOOLS).route(p) for p in prompts
    ]


def test_operator_tools_route_by_name_and_by_meaning() -> None:
    helm = Tool(name="deploy_helm_chart", **store_entry())
    router = ToolRouter([*BUILTIN_TOOLS, helm])
    assert router.route("Run deploy_helm_chart for staging").route == EXACT
    decision = router.route("Roll out the new release to Kubernetes with Helm")
    assert (decision.route, decision.tool) == (SEMANTIC, helm)


def test_composed_tool_with_an_operator_part_is_not_presented_as_builtin() -> None:
    helm = Tool(name="deploy_helm_chart", **store_entry())
    decision = ToolRouter([*BUILTIN_TOOLS, helm]).route("Run deploy_helm_chart, then slugify")
    assert decision.route == COMPOSED
    assert decision.tool.source == "store"


def test_router_refuses_two_tools_with_one_name() -> None:
    with pytest.raises(ValueError, match="unique"):
        ToolRouter([builtin("slugify"), builtin("slugify")])


# --- the prompt and the event -----------------------------------------------------------


def test_inject_tool_context_text() -> None:
    tool = Tool(name="greet", description="Say hello\npolitely.", code="print('hi')\n")
    decision = RouteDecision(route=SEMANTIC, tool=tool, confidence=0.875, components=("greet",))
    assert inject_tool_context("Greet the user", decision) == (
        "RELEVANT TOOL CONTEXT (reuse before new generation)\n"
        "TOOL_NAME: greet\n"
        "TOOL_ROUTE: semantic\n"
        "TOOL_CONFIDENCE: 0.88\n"
        "TOOL_DESCRIPTION: Say hello politely.\n"
        "\n"
        "print('hi')\n"
        "\n"
        "TASK:\n"
        "Greet the user"
    )


def test_inject_tool_context_wraps_once(router: ToolRouter) -> None:
    decision = router.route("Use read_json_safe to load config.json")
    wrapped = inject_tool_context("Use read_json_safe to load config.json", decision)
    assert inject_tool_context(wrapped, decision) == wrapped


def test_decision_fields_for_a_match_and_for_generate(router: ToolRouter) -> None:
    exact = decision_fields(router.route("Use read_json_safe to load config.json"))
    assert exact == {"tool_route": "exact", "tool_name": "read_json_safe", "tool_confidence": 1.0}
    generate = decision_fields(router.route("Update the README with install steps"))
    assert generate == {"tool_route": "generate", "tool_name": None, "tool_confidence": None}
    ExecutionFields.model_validate(exact)


def test_decision_needs_a_tool_unless_it_is_generate() -> None:
    with pytest.raises(ValueError):
        RouteDecision(route=SEMANTIC, confidence=0.9)
    with pytest.raises(ValueError):
        RouteDecision(route=GENERATE, tool=builtin("slugify"))


# --- the tool store ---------------------------------------------------------------------


def test_valid_store_loads_in_order(workspace: Workspace) -> None:
    path = write_store(
        workspace, {"deploy_helm_chart": store_entry(), "notify": store_entry(keywords=[])}
    )
    tools = load_tool_store(path)
    assert [tool.name for tool in tools] == ["deploy_helm_chart", "notify"]
    assert tools[0].keywords == ("helm", "kubernetes")
    assert {tool.source for tool in tools} == {"store"}


def test_missing_store_is_empty(workspace: Workspace) -> None:
    assert load_tool_store(workspace.tool_store_path) == []
    assert load_router(workspace).tools == BUILTIN_TOOLS


def test_store_with_bad_json_is_reported_not_treated_as_empty(workspace: Workspace) -> None:
    """The reference read a store holding a // comment as empty and said nothing."""
    workspace.tool_store_path.write_text("{\n  // my tools\n}\n", encoding="utf-8")
    with pytest.raises(StateFileError, match="invalid JSON at line 2") as caught:
        load_tool_store(workspace.tool_store_path)
    assert caught.value.path == workspace.tool_store_path
    with pytest.raises(StateFileError):
        load_router(workspace)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ([], "must be a JSON object mapping tool names"),
        ({"my_tool": "print(1)"}, "tools.my_tool: must be an object with description"),
        (
            {"my_tool": store_entry(keywords="helm")},
            "tools.my_tool.keywords: must be a list of strings",
        ),
        (
            {"my_tool": store_entry(keywords=["helm", 3])},
            "tools.my_tool.keywords: must be a list of strings",
        ),
        ({"my_tool": store_entry(description=5)}, "tools.my_tool.description: must be a string"),
        ({"my_tool": store_entry(code="  ")}, "tools.my_tool.code: must be a non-empty string"),
        ({"my_tool": {"description": "d"}}, "tools.my_tool.code: Field required"),
        ({"my tool": store_entry()}, "tools.my tool.name: must be an identifier"),
        ({"my_tool": store_entry(keyword=["helm"])}, "tools.my_tool.keyword: unknown field"),
    ],
)
def test_store_problems_name_the_path_and_the_field(
    workspace: Workspace, document: Any, problem: str
) -> None:
    path = write_store(workspace, document)
    with pytest.raises(StateFileError) as caught:
        load_tool_store(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_store_reports_every_broken_tool_at_once(workspace: Workspace) -> None:
    path = write_store(
        workspace, {"a": store_entry(code=1), "ok": store_entry(), "b": store_entry(keywords=None)}
    )
    with pytest.raises(StateFileError) as caught:
        load_tool_store(path)
    assert [p.split(":")[0] for p in caught.value.problems] == ["tools.a.code", "tools.b.keywords"]


def test_store_tool_overrides_the_builtin_of_the_same_name(workspace: Workspace) -> None:
    write_store(workspace, {"slugify": store_entry(code="def slugify(text): ...\n")})
    router = load_router(workspace)
    assert [tool.name for tool in router.tools] == [tool.name for tool in BUILTIN_TOOLS]
    decision = router.route("Slugify the title")
    assert (decision.tool.source, decision.tool.code) == ("store", "def slugify(text): ...\n")


# --- the built-in skills ----------------------------------------------------------------


@pytest.mark.parametrize("tool", BUILTIN_TOOLS, ids=lambda tool: tool.name)
def test_builtin_code_parses_and_defines_its_function(tool: Tool) -> None:
    tree = ast.parse(tool.code)
    assert tool.name in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert tool.source == "builtin"
    assert tool.description and tool.keywords


def skill(name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {}
    exec(compile(builtin(name).code, name, "exec"), namespace)
    return namespace[name]


def test_json_skills_round_trip_and_name_the_fault(tmp_path: Path) -> None:
    read_json_safe, write_json_atomic = skill("read_json_safe"), skill("write_json_atomic")
    path = tmp_path / "config.json"
    assert read_json_safe(path, default={}) == {}
    write_json_atomic(path, {"name": "Crème"})
    assert read_json_safe(path) == {"name": "Crème"}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    path.write_text('{"a": 1,}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"config\.json: invalid JSON at line 1"):
        read_json_safe(path)


def test_text_skills() -> None:
    assert skill("slugify")("  Crème Brûlée: the Recipe!  ") == "creme-brulee-the-recipe"
    parse_csv_rows = skill("parse_csv_rows")
    assert parse_csv_rows("\ufeffid, name\n1,Ada\n\n2,Bob\n") == [
        {"id": "1", "name": "Ada"},
        {"id": "2", "name": "Bob"},
    ]
    with pytest.raises(ValueError, match="line 3: expected 2 fields, got 3"):
        parse_csv_rows("id,name\n1,Ada\n2,Bob,extra\n")


def test_retry_skill_retries_then_reraises() -> None:
    retry_with_backoff = skill("retry_with_backoff")
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("try again")
        return "ok"

    assert retry_with_backoff(flaky, attempts=3, base_delay=0) == "ok"
    assert len(calls) == 3
    with pytest.raises(ConnectionError, match="try again"):
        retry_with_backoff(flaky_forever, attempts=2, base_delay=0)


def flaky_forever() -> None:
    raise ConnectionError("try again")
