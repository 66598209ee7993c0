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
"""

from __future__ import annotations

from swarm_runtime.contract import QueueDocument, Task, Verdict
from swarm_runtime.phases.critic import retry_prompt
from swarm_runtime.phases.decomposition import parent_prompt_with_results
from swarm_runtime.phases.intent import inject_intent, intent_from_task
from swarm_runtime.phases.routing import RouteDecision, inject_tool_context

MISSING_RESULT = "(no result recorded: the subtask is no longer in queue.json)"


def compose_prompt(
    task: Task, decision: RouteDecision, subtask_results: list[tuple[str, str, str | None]]
) -> str:
    text = task.prompt or ""
    if subtask_results:
        text = parent_prompt_with_results(text, subtask_results)
    if task.review and task.review.verdict == Verdict.REJECT and task.review.issues:
        text = retry_prompt(text, task.review.issues, task.review.suggestions)
    text = inject_tool_context(text, decision)
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
