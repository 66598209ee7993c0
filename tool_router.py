"""Tool-first routing (phase 3): decide whether a known tool should shape a prompt.

The router is deterministic and never calls a model. Until operator tools and
built-in skills are registered, every prompt routes to `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

GENERATE = "generate"


@dataclass(frozen=True)
class RouteDecision:
    route: str
    tool_name: str | None = None
    confidence: float = 0.0


def route(prompt: str) -> RouteDecision:
    """With no tools registered there is nothing to reuse: generate from scratch."""
    return RouteDecision(GENERATE)
