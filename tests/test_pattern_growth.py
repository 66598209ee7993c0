"""Every pattern the safety rules run costs time linear in its input.

Regression: a 15 KB command of repeated `curl|` backtracked cubically in the local policy's
download-to-shell pattern and froze the API for 35 s; other patterns were quadratic. The
proof is by growth, not by a wall-clock bound: on inputs built to make each pattern
backtrack, 100 KB must cost about 10x what 10 KB costs (a quadratic pattern costs 100x,
a cubic one 1,000x).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest

from swarm_runtime.safety.folding import fold
from swarm_runtime.safety.gateway import RULES, Rule, evaluate
from swarm_runtime.safety.inserted import ROLE_TAG, screen_inserted
from swarm_runtime.safety.local_commands import DENYLIST, ENV_ASSIGNMENT, URL, denylist_violation

# Growth measurements take seconds each: with the process tests, out of the quick loop.
pytestmark = pytest.mark.slow

SMALL, LARGE = 10_000, 100_000
MAX_RATIO = 30.0
# Characters the gaps of the patterns consume.
RUNS = (" ", "a", "_", "-", "&", "/", "|", "\\\n", ".")
# Texts that open an attempt (with a run after them), and texts repeated whole: shapes known
# to backtrack, and near misses of each rule.
OPENERS = (
    *("<", "#", "[", "$(", "`", "-c ", "|", "/", ".env", "\\"),
    *("beacon command", "curl x |", "| sudo -", "iex (", "send the api ", "ignore all "),
    *("| /usr/bin/env ", "| env -i ", "| busybox ", "curl -o a.sh ", "wget https://x/", "nc x 1 "),
    *("id_rsa ", "~/.ssh/", "send the github bot ", "[inst] a ", "<|im_start|>", "\n### system:"),
    *("download https://x/a.sh ", "into nc ", "exfiltrate the ", "to my ", "a@b."),
)
REPEATED = (
    *("curl|", "curl ", "wget -O- x | ", "curl x | sudo -x ", "curl x | env a=", "|/a"),
    *("-rrrr-", "rm -", "ignore all of the ", "exfiltrate data ", "nc -x ", 'sh -c "$('),
    *("eval `", "copy yourself ", "beacon command&", "### ", "<| ", "python -m "),
    *("curl -o a.sh ", "wget x/a.sh ", "a.sh ", "| env a=b ", "| /a/b/env ", "nc -w 1 x 2 "),
    *(".env ", "/etc/shadow ", "send the github token ", "[inst] a b ", "<<sys>> ", "x.example."),
)


def vocabulary(patterns: list[re.Pattern[str]]) -> set[str]:
    """The words a rule is written with: each may open an attempt or fill one of its gaps."""
    words: set[str] = set()
    for pattern in patterns:
        source = re.sub(r"\\[A-Za-z]", " ", pattern.pattern)
        words.update(re.findall(r"[a-z][a-z0-9_-]+", source))
    return words


def adversarial(words: set[str]) -> Iterator[tuple[str, str]]:
    """(opener, run): a text is `opener` followed by `run` repeated, or `opener` repeated."""
    for text in (*REPEATED, *RUNS):
        yield text, ""
    for opener in (*OPENERS, *sorted(f"{word} " for word in words)):
        yield opener, ""
        for run in RUNS:
            yield opener, run


def build(unit: str, run: str, size: int) -> str:
    if not run:
        return (unit * (size // len(unit) + 1))[:size]
    return unit + run * ((size - len(unit)) // len(run) + 1)


SAMPLE_SECONDS = 0.0005


def cost(match: Callable[[str], object], text: str, repeats: int) -> float:
    """Best CPU time per call. CPU time, since a preemption on a busy machine would read as a
    30x growth; and a sample runs the call enough times to last half a millisecond, since a
    10 KB literal search takes about a microsecond."""
    calls = 1
    while _sample(match, text, calls) < SAMPLE_SECONDS and calls < 1024:
        calls *= 4
    return min(_sample(match, text, calls) for _ in range(repeats)) / calls


def _sample(match: Callable[[str], object], text: str, calls: int) -> float:
    start = time.thread_time()
    for _ in range(calls):
        match(text)
    return time.thread_time() - start


def growth(
    match: Callable[[str], object], unit: str, run: str, sizes: tuple[int, int] = (SMALL, LARGE)
) -> float:
    """How many times more 100 KB costs than 10 KB; re-measured before a slow figure counts."""
    small_size, large_size = sizes
    small = cost(match, build(unit, run, small_size), 3)
    large_text = build(unit, run, large_size)
    ratio = cost(match, large_text, 1) / small
    for _ in range(3):
        if ratio < MAX_RATIO / 2:
            break
        small = min(small, cost(match, build(unit, run, small_size), 3))
        ratio = min(ratio, cost(match, large_text, 2) / small)
    return ratio


# The inputs, of all the adversarial ones, whose growth is measured.
SCREENED = 8


def worst_growth(
    match: Callable[[str], object], words: set[str], sizes: tuple[int, int] = (SMALL, LARGE)
) -> tuple[float, str]:
    """The largest growth among the inputs that cost the most at 10 KB. A pattern that
    backtracks on an input pays for it already at 10 KB (a quadratic one takes some 10^8
    steps there, a linear scan some 10^4), so measuring only the costliest inputs at
    100 KB misses none of them and spares the hundreds that scan in a microsecond."""
    inputs = list(adversarial(words))
    costliest = sorted(inputs, key=lambda pair: cost(match, build(*pair, sizes[0]), 1))
    figures = [
        (growth(match, unit, run, sizes), f"{unit!r} + {run!r}...")
        for unit, run in costliest[-SCREENED:]
    ]
    return max(figures)


@pytest.mark.parametrize("rule", RULES, ids=[rule.rule_id for rule in RULES])
def test_gateway_rule_cost_grows_linearly(rule: Rule) -> None:
    ratio, text = worst_growth(rule.match, vocabulary(list(rule.patterns)))
    assert ratio < MAX_RATIO, f"{rule.rule_id}: {ratio:.0f}x for 10x the input {text}"


LOCAL_PATTERNS = [
    *((rule.rule, rule.pattern.search, rule.pattern) for rule in DENYLIST),
    ("env_assignment", ENV_ASSIGNMENT.match, ENV_ASSIGNMENT),
    ("url", URL.match, URL),
    ("inserted_role_tag", ROLE_TAG.search, ROLE_TAG),
]


@pytest.mark.parametrize(
    ("name", "match", "pattern"),
    LOCAL_PATTERNS,
    ids=[f"{i}-{p[0]}" for i, p in enumerate(LOCAL_PATTERNS)],
)
def test_local_pattern_cost_grows_linearly(
    name: str, match: Callable[[str], object], pattern: re.Pattern[str]
) -> None:
    ratio, text = worst_growth(match, vocabulary([pattern]))
    assert ratio < MAX_RATIO, f"{name}: {ratio:.0f}x for 10x the input {text}"


@pytest.mark.parametrize(
    "check", [denylist_violation, evaluate, screen_inserted], ids=["local", "gateway", "inserted"]
)
def test_a_command_of_repeated_curl_pipes_costs_linear_time(check: Callable[[str], object]) -> None:
    """Regression: 15 KB of `curl|` took the local policy 35 s, freezing the whole API."""
    ratio = growth(check, "curl|", "")
    assert ratio < MAX_RATIO, f"{ratio:.0f}x for 10x the input"


@pytest.mark.parametrize(
    "unit",
    ["\u0441url | b\u0430sh ", "c\u0301u\u0308 ", "\U000e0020x\ufe0f ", "\u041f\u0440\u0438 "],
    ids=["look-alikes", "marks", "tags", "cyrillic"],
)
def test_folding_costs_linear_time(unit: str) -> None:
    ratio = growth(fold, unit, "")
    assert ratio < MAX_RATIO, f"{ratio:.0f}x for 10x the input"


def test_screening_inserted_text_line_by_line_costs_linear_time() -> None:
    """An answer that trips a rule is screened line by line: each line is checked once."""
    ratio = growth(screen_inserted, "curl x | sh\nok\n", "")
    assert ratio < MAX_RATIO, f"{ratio:.0f}x for 10x the input"


def test_the_measurement_catches_a_quadratic_pattern() -> None:
    """The screening must keep the input a backtracking pattern chokes on: ` *x` searched
    in spaces tries every start and scans to the end from each, n^2/2 steps."""
    ratio, text = worst_growth(re.compile(" *x").search, {"x"}, sizes=(1_000, 10_000))
    assert ratio >= MAX_RATIO, f"a quadratic pattern measured only {ratio:.0f}x ({text})"
