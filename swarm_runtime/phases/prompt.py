"""The exact text an llm task sends: its prompt wrapped by phases 2, 3 and 4.

Order matters and is fixed here, once: the user's intent first (so nothing that
follows can drown it), then the tool context, then the task itself, carrying the
subtasks' results for a planned parent and the critic's feedback for a retry.
Every llm task carries the intent block, planned or not; a subtask's block is its
parent's intent, never a second one extracted from its own step. Local commands
are never composed: the text that runs is the command as written.
Routing looks at the operator's own words, never at the wrapped text, so the
runtime's headings cannot pull a tool in; a subtask is routed on its own feature,
so a documentation step does not inherit the code tool its parent asked for.
Text written by a model earlier (a subtask's result, the critic's feedback, a stored
tool) passes through the caller's `screen` before it joins the prompt, so that what an
earlier answer said can never make the operator's own task fail its safety check.
"""

from __future__ import annotations

from collections.abc import Callable

from swarm_runtime.contract import QueueDocument, Task, Verdict
from swarm_runtime.phases.critic import retry_prompt
from swarm_runtime.phases.decomposition import parent_prompt_with_results
from swarm_runtime.phases.intent import inject_intent, intent_from_task
from swarm_runtime.phases.routing import RouteDecision, inject_tool_context

MISSING_RESULT = "(no result recorded: the subtask is no longer in queue.json)"


def as_is(text: str) -> str:
    return text


def compose_prompt(
    task: Task,
    decision: RouteDecision,
    subtask_results: list[tuple[str, str, str | None]],
    screen: Callable[[str], str] = as_is,
) -> str:
    text = task.prompt or ""
    if subtask_results:
        screened: list[tuple[str, str, str | None]] = [
            (sid, screen(feature), screen(result or "")) for sid, feature, result in subtask_results
        ]
        text = parent_prompt_with_results(text, screened)
    review = task.review
    if review and review.verdict == Verdict.REJECT and review.issues:
        text = retry_prompt(text, map(screen, review.issues), map(screen, review.suggestions))
    text = inject_tool_context(text, decision, screen)
    return inject_intent(text, intent_from_task(task))


def routing_text(task: Task) -> str:
    return task.phase4_feature or task.prompt or ""


def subtask_results(task: Task, doc: QueueDocument) -> list[tuple[str, str, str | None]]:
    """(id, feature, result) for each subtask of a planned parent, in plan order."""
    plan = task.phase4_plan or {}
    ids, features = plan.get("subtasks") or [], plan.get("features") or []
    results: list[tuple[str, str, str | None]] = []
    for index, subtask_id in enumerate(ids):
        feature = features[index] if index < len(features) else ""
        subtask = doc.find(subtask_id)
        execution = subtask.execution if subtask else None
        result = (execution.result_summary or execution.output) if execution else None
        results.append((subtask_id, feature, result or MISSING_RESULT))
    return results
