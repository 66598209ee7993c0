from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from swarm_runtime.contract import ExecutionRecord, Mode, ReviewFields, Status, Task, Verdict
from swarm_runtime.errors import ReviewUnavailable
from swarm_runtime.phases.critic import (
    FEEDBACK_HEADING,
    Review,
    Submission,
    combine,
    decide,
    deterministic_review,
    llm_review_prompt,
    parse_llm_verdict,
    requeue_backoff,
    retry_prompt,
    review_fields,
    review_record,
    submission_from,
)
from swarm_runtime.store.state_files import Workspace

HAIKU_TASK = "Write a haiku about message queues"
HAIKU = "Messages wait in line,\nthe queue hums softly at night,\nworkers drain the dawn."


def submission(
    output: str = HAIKU,
    *,
    task_text: str = HAIKU_TASK,
    mode: Mode = Mode.LLM,
    status: Status = Status.COMPLETED,
    exit_code: int | None = None,
    error: str | None = None,
    files: tuple[str, ...] = (),
) -> Submission:
    return Submission(
        task_id="t1",
        task_text=task_text,
        mode=mode,
        status=status,
        exit_code=exit_code,
        output=output,
        error=error,
        declared_files=list(files),
    )


def review(
    verdict: Verdict,
    confidence: float = 0.9,
    issues: tuple[str, ...] = (),
    suggestions: tuple[str, ...] = (),
) -> Review:
    return Review(
        verdict=verdict, confidence=confidence, issues=list(issues), suggestions=list(suggestions)
    )


def write(relative: str, text: str) -> Callable[[Path], None]:
    def prepare(sandbox: Path) -> None:
        path = sandbox / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    return prepare


def link_outside(sandbox: Path) -> None:
    outside = sandbox.parent / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("print('hi')\n")
    (sandbox / "link").symlink_to(outside, target_is_directory=True)


def nothing(sandbox: Path) -> None:
    return None


BANANAS = "Bananas are an excellent source of potassium and ripen quickly."
CODE_WITH_TODO = "The message queue consumer:\n```python\ndef f():\n    # TODO\n```\n"
THREE_PLACEHOLDERS = (
    "The queue consumer:\n```python\n# TODO: retry\n# FIXME: order\n"
    "def g():\n    raise NotImplementedError\n```\n"
)

DETERMINISTIC_CASES = [
    ("success", submission(), nothing, Verdict.APPROVE, None),
    ("failed status", submission(status=Status.FAILED), nothing, Verdict.REJECT, "status failed"),
    (
        "nonzero exit code",
        submission("oops", mode=Mode.LOCAL, exit_code=2),
        nothing,
        Verdict.REJECT,
        "exited with code 2",
    ),
    (
        "reported error",
        submission(error="provider timed out"),
        nothing,
        Verdict.REJECT,
        "provider timed out",
    ),
    ("empty output", submission("  \n"), nothing, Verdict.REJECT, "output is empty"),
    (
        "refusal",
        submission("I'm sorry, but I can't help with that."),
        nothing,
        Verdict.REJECT,
        "refusal",
    ),
    (
        "cannot help",
        submission("I cannot help with message queues."),
        nothing,
        Verdict.REJECT,
        "refusal",
    ),
    (
        "as an ai",
        submission("As an AI language model, queues are beyond me."),
        nothing,
        Verdict.REJECT,
        "refusal",
    ),
    (
        "traceback",
        submission("Traceback (most recent call last):\n  File x"),
        nothing,
        Verdict.REJECT,
        "refusal or an error message",
    ),
    ("error prefix", submission("Error: rate limited"), nothing, Verdict.REJECT, "error message"),
    (
        "text mentioning errors is fine",
        submission("Errors happen; a queue keeps the message.\nError: handling is a retry away."),
        nothing,
        Verdict.APPROVE,
        None,
    ),
    (
        "lowercase todo in prose is fine",
        submission("My todo list: read about queues."),
        nothing,
        Verdict.APPROVE,
        None,
    ),
    (
        "file missing",
        submission(files=("missing.txt",)),
        nothing,
        Verdict.REJECT,
        "missing.txt does not exist",
    ),
    (
        "dot-dot escape",
        submission(files=("../outside.txt",)),
        write("../outside.txt", "x"),
        Verdict.REJECT,
        "../outside.txt is outside the sandbox",
    ),
    (
        "absolute path",
        submission(files=("/etc/passwd",)),
        nothing,
        Verdict.REJECT,
        "/etc/passwd is an absolute path",
    ),
    (
        "symlink escape",
        submission(files=("link/secret.py",)),
        link_outside,
        Verdict.REJECT,
        "link/secret.py is outside the sandbox",
    ),
    (
        "python syntax error",
        submission(files=("pkg/bad.py",)),
        write("pkg/bad.py", "import os\ndef f(:\n    pass\n"),
        Verdict.REJECT,
        "pkg/bad.py line 2: syntax error",
    ),
    (
        "python compile error",
        submission(files=("top.py",)),
        write("top.py", "x = 1\nreturn x\n"),
        Verdict.REJECT,
        "top.py line 2: syntax error",
    ),
    (
        "valid python file",
        submission(files=("ok.py",)),
        write("ok.py", "VALUE = 1\n"),
        Verdict.APPROVE,
        None,
    ),
    (
        "inner dot-dot that stays inside",
        submission(files=("a/../ok.txt",)),
        write("ok.txt", "x"),
        Verdict.APPROVE,
        None,
    ),
    (
        "TODO in a code block",
        submission(CODE_WITH_TODO),
        nothing,
        Verdict.MINOR_ISSUES,
        "output code block 1 line 2: placeholder TODO",
    ),
    (
        "placeholder pass in a file",
        submission(files=("m.py",)),
        write("m.py", "def f():\n    pass  # placeholder\n"),
        Verdict.MINOR_ISSUES,
        "m.py line 2: placeholder pass # placeholder",
    ),
    (
        "three placeholders",
        submission(THREE_PLACEHOLDERS),
        nothing,
        Verdict.REJECT,
        "line 4: placeholder raise NotImplementedError",
    ),
    (
        "TODO inside a word is not a marker",
        submission("```\nTODOS = 1\nmastodon = 2\n```\nqueue"),
        nothing,
        Verdict.APPROVE,
        None,
    ),
    ("off-topic llm output", submission(BANANAS), nothing, Verdict.REJECT, "off topic"),
    (
        "stemmed words count as on topic",
        submission("Tokens split; parse each expression.", task_text="Write a tokenizer for them"),
        nothing,
        Verdict.APPROVE,
        None,
    ),
    (
        "a bare result is not judged for topic",
        submission("120", task_text="Compute the factorial of five"),
        nothing,
        Verdict.APPROVE,
        None,
    ),
    (
        "local mode skips the topic check",
        submission(BANANAS, task_text="cat tokenizer_notes.txt", mode=Mode.LOCAL, exit_code=0),
        nothing,
        Verdict.APPROVE,
        None,
    ),
    (
        "local mode may be silent",
        submission("", task_text="touch x", mode=Mode.LOCAL, exit_code=0),
        nothing,
        Verdict.APPROVE,
        None,
    ),
]


@pytest.mark.parametrize(
    ("sub", "prepare", "verdict", "issue"),
    [case[1:] for case in DETERMINISTIC_CASES],
    ids=[case[0] for case in DETERMINISTIC_CASES],
)
def test_deterministic_review(
    workspace: Workspace,
    sub: Submission,
    prepare: Callable[[Path], None],
    verdict: Verdict,
    issue: str | None,
) -> None:
    prepare(workspace.sandbox)
    result = deterministic_review(sub, workspace.sandbox)
    assert result.verdict == verdict, result.issues
    if issue is None:
        assert result.issues == [] and result.confidence == 0.95
    else:
        assert any(issue in found for found in result.issues), result.issues
        assert result.suggestions
    assert result.accepted == (verdict != Verdict.REJECT)


@pytest.mark.parametrize(
    ("verdict", "confidence"),
    [(Verdict.APPROVE, 0.95), (Verdict.MINOR_ISSUES, 0.75), (Verdict.REJECT, 0.90)],
)
def test_confidence_follows_the_verdict(
    workspace: Workspace, verdict: Verdict, confidence: float
) -> None:
    outputs = {Verdict.APPROVE: HAIKU, Verdict.MINOR_ISSUES: CODE_WITH_TODO, Verdict.REJECT: ""}
    result = deterministic_review(submission(outputs[verdict]), workspace.sandbox)
    assert (result.verdict, result.confidence) == (verdict, confidence)


def test_a_long_answer_is_not_judged_off_topic(workspace: Workspace) -> None:
    essay = "Bananas ripen quickly. " * 200
    assert deterministic_review(submission(essay), workspace.sandbox).verdict == Verdict.APPROVE


def test_many_placeholders_are_summarised(workspace: Workspace) -> None:
    code = "Queue code:\n```\n" + "# TODO\n" * 25 + "```"
    result = deterministic_review(submission(code), workspace.sandbox)
    assert result.verdict == Verdict.REJECT and len(result.issues) == 10
    assert result.issues[-1] == "16 more placeholder markers"


def test_the_same_rejection_is_worded_the_same_way_twice(workspace: Workspace) -> None:
    """decide() spots "no progress" by comparing issues, so they must be deterministic."""
    sub = submission("I'm sorry, but I can't help with that.", files=("gone.py",))
    first = deterministic_review(sub, workspace.sandbox)
    assert first == deterministic_review(sub, workspace.sandbox)


def test_submission_reads_the_answer_and_the_declared_files() -> None:
    task = Task.model_validate(
        {
            "id": "t1",
            "prompt": HAIKU_TASK,
            "files_created": "a.py",
            "files_modified": ["b.py", "", "a.py"],
            "artifacts": ["out/c.txt"],
        }
    )
    execution = ExecutionRecord(attempt=1, status=Status.COMPLETED, result_summary=HAIKU, model="m")
    sub = submission_from(task, execution)
    assert sub.output == HAIKU and sub.task_text == HAIKU_TASK and sub.mode == Mode.LLM
    assert sub.declared_files == ["a.py", "b.py", "out/c.txt"]


def test_submission_of_a_command_reads_its_output() -> None:
    task = Task.model_validate({"id": "t2", "command": "echo hi"})
    execution = ExecutionRecord(
        attempt=1, status=Status.COMPLETED, result_summary="ran echo", output="hi\n", exit_code=0
    )
    sub = submission_from(task, execution)
    assert (sub.mode, sub.task_text, sub.output, sub.exit_code) == (
        Mode.LOCAL,
        "echo hi",
        "hi\n",
        0,
    )
    assert sub.declared_files == []


def test_llm_review_prompt_carries_the_task_and_a_capped_output() -> None:
    prompt = llm_review_prompt(submission("x" * 50_000, files=("a.py",)))
    assert HAIKU_TASK in prompt and "a.py" in prompt and '"verdict"' in prompt
    assert "…[truncated" in prompt
    assert len(prompt) < 14_000
    assert all(v.value in prompt for v in Verdict)


VERDICT_JSON = {
    "verdict": "REJECT",
    "confidence": 0.7,
    "issues": ["too short"],
    "suggestions": ["say more"],
}


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps(VERDICT_JSON),
        "```json\n" + json.dumps(VERDICT_JSON, indent=2) + "\n```",
        "My verdict follows. " + json.dumps(VERDICT_JSON) + " Hope that helps {sic}.",
        "Draft {not json} then " + json.dumps({**VERDICT_JSON, "verdict": "reject"}),
    ],
    ids=["bare", "fenced", "prose", "after-junk-lowercase"],
)
def test_parse_llm_verdict_finds_the_json(answer: str) -> None:
    assert parse_llm_verdict(answer) == Review(**VERDICT_JSON)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("this is not a verdict", "no JSON object"),
        ("", "no JSON object"),
        (json.dumps({**VERDICT_JSON, "verdict": "MAYBE"}), "verdict"),
        (json.dumps({**VERDICT_JSON, "confidence": 3}), "confidence"),
        (json.dumps({"issues": []}), "verdict"),
        ("[1, 2]", "no JSON object"),
    ],
    ids=["garbage", "empty", "bad-verdict", "bad-confidence", "no-verdict", "array"],
)
def test_parse_llm_verdict_fails_closed(answer: str, reason: str) -> None:
    with pytest.raises(ReviewUnavailable, match=reason):
        parse_llm_verdict(answer)


@pytest.mark.parametrize(
    ("first", "second", "verdict", "confidence"),
    [
        (review(Verdict.APPROVE, 0.95), review(Verdict.REJECT, 0.6), Verdict.REJECT, 0.6),
        (review(Verdict.REJECT, 0.9), review(Verdict.APPROVE, 0.99), Verdict.REJECT, 0.9),
        (
            review(Verdict.MINOR_ISSUES, 0.75),
            review(Verdict.APPROVE, 0.8),
            Verdict.MINOR_ISSUES,
            0.75,
        ),
        (review(Verdict.APPROVE, 0.95), review(Verdict.APPROVE, 0.7), Verdict.APPROVE, 0.7),
    ],
)
def test_combine_keeps_the_stricter_verdict(
    first: Review, second: Review, verdict: Verdict, confidence: float
) -> None:
    combined = combine(first, second)
    assert (combined.verdict, combined.confidence) == (verdict, confidence)


def test_combine_merges_reasons_without_repeats() -> None:
    combined = combine(
        review(Verdict.MINOR_ISSUES, issues=("a", "b"), suggestions=("fix a",)),
        review(Verdict.REJECT, issues=("b", "c"), suggestions=("fix a", "fix c")),
    )
    assert combined.issues == ["a", "b", "c"]
    assert combined.suggestions == ["fix a", "fix c"]


REJECTED = review(Verdict.REJECT, issues=("output is empty", "off topic"))


@pytest.mark.parametrize(
    ("verdict", "before", "previous", "outcome", "rejections", "errors"),
    [
        (review(Verdict.APPROVE), 0, None, Status.APPROVED, 0, None),
        (review(Verdict.MINOR_ISSUES), 2, ["x"], Status.APPROVED, 2, None),
        (
            REJECTED,
            0,
            None,
            Status.REQUEUE,
            1,
            "Quality gate rejected task: output is empty; off topic",
        ),
        (
            REJECTED,
            1,
            ["something else"],
            Status.REQUEUE,
            2,
            "Quality gate rejected task: output is empty; off topic",
        ),
        (
            REJECTED,
            2,
            ["something else"],
            Status.FAILED,
            3,
            "Quality gate rejected task after 3 attempt(s): output is empty; off topic",
        ),
        (
            review(Verdict.REJECT),
            2,
            None,
            Status.FAILED,
            3,
            "Quality gate rejected task after 3 attempt(s): critic rejected task output",
        ),
        (
            REJECTED,
            1,
            ["off topic", "output is empty"],
            Status.FAILED,
            2,
            "Quality gate rejected task after 2 attempt(s): output is empty; off topic"
            " (no progress: the critic returned the same rejection twice)",
        ),
        (
            review(Verdict.REJECT),
            1,
            [],
            Status.REQUEUE,
            2,
            "Quality gate rejected task: critic rejected task output",
        ),
    ],
    ids=[
        "approve",
        "minor",
        "first-reject",
        "second-reject",
        "at-limit",
        "no-issues-at-limit",
        "no-progress",
        "silent-rejections-are-not-no-progress",
    ],
)
def test_decide(
    verdict: Review,
    before: int,
    previous: list[str] | None,
    outcome: Status,
    rejections: int,
    errors: str | None,
) -> None:
    decision = decide(verdict, rejections_before=before, max_attempts=3, previous_issues=previous)
    assert (decision.outcome, decision.rejections, decision.errors) == (outcome, rejections, errors)
    assert decision.no_progress == ("no progress" in (errors or ""))


def test_decide_fails_on_the_first_rejection_when_one_attempt_is_allowed() -> None:
    decision = decide(REJECTED, rejections_before=0, max_attempts=1, previous_issues=None)
    assert decision.outcome == Status.FAILED and "after 1 attempt(s)" in decision.errors


@pytest.mark.parametrize(
    ("base", "rejections", "delay"),
    [
        (2.0, 1, 2.0),
        (2.0, 2, 4.0),
        (2.0, 3, 8.0),
        (0.5, 4, 4.0),
        (2.0, 0, 2.0),
        (0.0, 5, 0.0),
        (2.0, 100, 3600.0),
    ],
)
def test_requeue_backoff_doubles(base: float, rejections: int, delay: float) -> None:
    assert requeue_backoff(base, rejections) == delay


def test_retry_prompt_lists_the_feedback() -> None:
    prompt = retry_prompt("Write a tokenizer", ["output is empty"], ["Produce an answer"])
    assert prompt.startswith("Write a tokenizer\n\n" + FEEDBACK_HEADING)
    assert "- output is empty" in prompt and "- Produce an answer" in prompt


def test_retry_prompt_replaces_rather_than_stacks() -> None:
    once = retry_prompt("Write a tokenizer", ["first issue"], ["first fix"])
    twice = retry_prompt(once, ["second issue"], [])
    assert twice.count(FEEDBACK_HEADING) == 1
    assert "second issue" in twice and "first issue" not in twice
    assert retry_prompt(once, ["first issue"], ["first fix"]) == once
    assert retry_prompt(once, [], []) == "Write a tokenizer"


def test_review_record_and_fields_carry_the_rejection_count() -> None:
    verdict = review(Verdict.REJECT, 0.9, issues=("a",), suggestions=("b",))
    record = review_record(verdict, 2)
    assert (
        record.verdict,
        record.confidence,
        record.issues,
        record.suggestions,
        record.attempt,
    ) == (Verdict.REJECT, 0.9, ["a"], ["b"], 2)
    fields = review_fields(verdict, 2)
    assert set(fields) <= set(ReviewFields.model_fields)
    assert fields == {
        "review_verdict": "REJECT",
        "review_confidence": 0.9,
        "review_issues": ["a"],
        "review_suggestions": ["b"],
        "review_attempt": 2,
    }
