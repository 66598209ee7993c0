"""What a local command costs, in the same units as an llm call, so that rewards for
finishing under budget mean the same for both kinds of work.

The rule is the reference runtime's: run time at $0.01 a second, scaled by the task's
intensity (low 0.5, medium 1, high 1.5), held within the task's own budget range. A task
that sends no range is charged the scaled run time itself. The figure is exact; only a
display rounds it.
"""

from __future__ import annotations

from typing import Literal

Intensity = Literal["low", "medium", "high"]
DOLLARS_PER_SECOND = 0.01
INTENSITY_FACTOR: dict[str, float] = {"low": 0.5, "medium": 1.0, "high": 1.5}


def local_charge(
    seconds: float,
    intensity: Intensity | None,
    min_budget: float | None,
    max_budget: float | None,
) -> float:
    charge = max(0.0, seconds) * DOLLARS_PER_SECOND * INTENSITY_FACTOR[intensity or "medium"]
    if min_budget is not None:
        charge = max(charge, min_budget)
    if max_budget is not None:
        charge = min(charge, max_budget)
    return charge
