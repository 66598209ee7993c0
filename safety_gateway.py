"""The design's name for the phase-1 safety gateway; it lives in swarm_runtime.safety."""

from swarm_runtime.safety.gateway import (
    RuleMatch,
    SafetyGateway,
    build_report,
    evaluate,
    fold,
)

__all__ = [
    "SafetyGateway",
    "RuleMatch",
    "build_report",
    "evaluate",
    "fold",
]
