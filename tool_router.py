"""The design's name for phase-3 tool-first routing; it lives in swarm_runtime.phases.routing."""

from swarm_runtime.phases.routing import (
    BUILTIN_TOOLS,
    RouteDecision,
    Tool,
    ToolRouter,
    decision_fields,
    inject_tool_context,
    load_router,
    load_tool_store,
    task_text,
)

__all__ = [
    "BUILTIN_TOOLS",
    "RouteDecision",
    "Tool",
    "ToolRouter",
    "decision_fields",
    "inject_tool_context",
    "load_router",
    "load_tool_store",
    "task_text",
]
