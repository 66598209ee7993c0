"""The worker's critic: deterministic checks always, a second model when configured.

The second opinion goes through `POST /cycle` like any other llm call, so the
SecureAPIWrapper's budget, rate limit and audit apply to it too. Whatever stops the
critic from reaching a verdict raises ReviewUnavailable: the task is then parked in
`pending_review`, never approved by default.
"""

from __future__ import annotations

from pathlib import Path

from swarm_runtime.contract import (
    DEFAULT_MAX_BUDGET,
    CycleRequest,
    ExecutionRecord,
    Mode,
    Status,
    Task,
)
from swarm_runtime.errors import ReviewUnavailable
from swarm_runtime.phases.critic import (
    Review,
    Submission,
    combine,
    deterministic_review,
    llm_review_prompt,
    parse_llm_verdict,
    submission_from,
)
from swarm_runtime.worker.cycle_client import CycleClient, EndpointRefused

CRITIC_TIMEOUT_SECONDS = 60.0
CRITIC_MAX_TOKENS = 512


class Critic:
    def __init__(self, sandbox: Path, client: CycleClient, critic_model: str | None):
        self.sandbox = sandbox
        self.client = client
        self.critic_model = critic_model

    def review(self, task: Task, execution: ExecutionRecord, endpoint: str) -> Review:
        submission = submission_from(task, execution)
        verdict = deterministic_review(submission, self.sandbox)
        if not self.critic_model or submission.mode == Mode.LOCAL or not verdict.accepted:
            return verdict
        return combine(verdict, self._second_opinion(task, execution, endpoint, submission))

    def _second_opinion(
        self, task: Task, execution: ExecutionRecord, endpoint: str, submission: Submission
    ) -> Review:
        if self.critic_model == execution.model:
            raise ReviewUnavailable(
                f"SWARM_CRITIC_MODEL {self.critic_model!r} is the model that wrote the answer; "
                "a critic must be a different model"
            )
        request = CycleRequest(
            prompt=llm_review_prompt(submission),
            mode=Mode.LLM,
            model=self.critic_model,
            max_tokens=CRITIC_MAX_TOKENS,
            temperature=0.0,
            timeout=CRITIC_TIMEOUT_SECONDS,
            max_budget=DEFAULT_MAX_BUDGET if task.max_budget is None else task.max_budget,
            task_id=task.id,
        )
        try:
            dispatch = self.client.dispatch(
                endpoint,
                request.model_dump(mode="json", exclude_none=True),
                read_timeout=CRITIC_TIMEOUT_SECONDS,
            )
        except EndpointRefused as exc:
            raise ReviewUnavailable(f"LLM critic not reachable: {exc}") from None
        answer = dispatch.response
        if answer is None or answer.status != Status.COMPLETED:
            reason = dispatch.error or (answer.result if answer else None) or "no answer"
            raise ReviewUnavailable(f"LLM critic ({self.critic_model}) could not run: {reason}")
        return parse_llm_verdict(answer.result or "")
