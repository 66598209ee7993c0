"""The gateway on its labelled corpus: recall, false-positive rate, and latency at 4 KB.

tests/data/safety_corpus.jsonl holds attacks (disguised with look-alike letters, marks and
invisible characters, or phrased with long gaps, launchers and two steps) and ordinary
developer prompts that mention paths, keys, tokens, networking and shells.
Targets: recall >= 95 %, false positives <= 2 %, and p99 <= 1 ms for the audited call on
a 4 KB prompt, both plain ASCII and one full of disguises (the folding path).
Run `python benchmarks/bench_safety_corpus.py [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter

from bench_preflight import TARGET_P99_US, percentiles
from benchlib import ROOT, Figure, print_table

from swarm_runtime.safety.gateway import SafetyGateway, evaluate
from swarm_runtime.store.state_files import Workspace

NAME = "5 safety corpus"
CORPUS_PATH = ROOT / "tests" / "data" / "safety_corpus.jsonl"
MIN_RECALL, MAX_FALSE_POSITIVES = 0.95, 0.02


def load() -> list[dict[str, str]]:
    return [json.loads(line) for line in CORPUS_PATH.read_text("utf-8").splitlines() if line]


def four_kb(rows: list[dict[str, str]], label: str) -> str:
    """4 KB of the corpus's own texts of one label, joined as one long prompt."""
    return "\n".join(row["text"] for row in rows if row["label"] == label)[:4096]


def detection(rows: list[dict[str, str]]) -> list[Figure]:
    blocked = [row for row in rows if evaluate(row["text"])]
    caught, total = Counter(r["label"] for r in blocked), Counter(r["label"] for r in rows)
    recall = caught["attack"] / total["attack"]
    false_positives = caught["benign"] / total["benign"]
    print(f"  {caught['attack']} of {total['attack']} attacks blocked: recall {recall:.1%}")
    print(f"  {caught['benign']} of {total['benign']} benign blocked: {false_positives:.1%}")
    for row in rows:
        if (row in blocked) != (row["label"] == "attack"):
            print(f"    wrong on {row['label']} ({row['class']}): {row['text'][:70]!r}")
    return [
        Figure(
            NAME,
            "recall (attacks blocked)",
            f"{recall:.1%} of {total['attack']}",
            f">= {MIN_RECALL:.0%}",
            recall >= MIN_RECALL,
        ),
        Figure(
            NAME,
            "false positives (benign blocked)",
            f"{false_positives:.1%} of {total['benign']}",
            f"<= {MAX_FALSE_POSITIVES:.0%}",
            false_positives <= MAX_FALSE_POSITIVES,
        ),
    ]


def latency(rows: list[dict[str, str]], iterations: int) -> list[Figure]:
    prompts = {label: four_kb(rows, label) for label in ("benign", "attack")}
    figures = []
    with tempfile.TemporaryDirectory() as folder:
        check = SafetyGateway(Workspace(folder)).pre_execute_safety_check
        for label, text in prompts.items():
            median, p99 = percentiles(check, text, iterations)
            cpu_median, cpu_p99 = percentiles(check, text, iterations, time.thread_time_ns)
            measure = f"4 KB of {label} texts, audited call"
            print(f"  {measure}: median {median:.0f} us, p99 {p99:.0f} us")
            print(f"    CPU time only: median {cpu_median:.0f} us, p99 {cpu_p99:.0f} us")
            value = f"median {median:.0f} us, p99 {p99:.0f} us"
            target = f"p99 <= {TARGET_P99_US:.0f} us"
            figures.append(Figure(NAME, measure, value, target, p99 <= TARGET_P99_US))
    return figures


def run(quick: bool = False) -> list[Figure]:
    rows = load()
    return detection(rows) + latency(rows, 1000 if quick else 5000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1000 iterations")
    print_table(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
