"""Screen text the runtime inserts from earlier model output before it joins a prompt.

A subtask's answer, the critic's feedback and a stored tool's code were written by a model,
not by the operator. Checked as part of the composed prompt, a subtask that mentioned a
download-and-run install step, or an answer carrying a forged `<|im_start|>system` turn,
blocked its parent for good: the same text came back on every attempt. So inserted text is
screened on its own first. Chat-format tags are defanged wherever they stand, and a line
that would trip a preflight rule is withheld and replaced by a note naming the rule. What
was done is returned as flags, for the caller to record. The gateway still checks the
whole composed prompt afterwards; what it finds there is the operator's own text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from swarm_runtime.safety.gateway import INPUT_CHECK, evaluate

ROLE_TAG_FLAG = "inserted.role_tag_defanged"
WITHHELD_FLAG = "inserted.withheld:{}"
WITHHELD_LINE = "[line withheld by the safety screen: {}]"
WITHHELD_TEXT = "[text withheld by the safety screen: {}]"

ROLE_TAG = re.compile(
    r"<\|[a-z_]{2,20}\|>|<<\s*+/?\s*+sys\s*+>>|</?\s*+(?:system|sys|user|assistant|developer)\s*+>"
    r"|\[/?inst\]|(?<!#)##++[ \t]*+(?:system|instruction)[ \t]*+:",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Screened:
    text: str
    flags: tuple[str, ...]


def screen_inserted(text: str) -> Screened:
    """`text` with role tags defanged and every line that trips a rule withheld."""
    defanged, tags = ROLE_TAG.subn(_defang, text)
    flags = [ROLE_TAG_FLAG] if tags else []
    if not tripped(defanged):
        return Screened(defanged, tuple(flags))
    lines, withheld = _withhold_lines(defanged)
    rules = tripped(lines)
    if rules:
        withheld += rules
        lines = WITHHELD_TEXT.format(", ".join(rules))
    flags += [WITHHELD_FLAG.format(rule) for rule in dict.fromkeys(withheld)]
    return Screened(lines, tuple(flags))


def tripped(text: str) -> list[str]:
    """The rules `text` trips; blank text trips none."""
    return [m.rule_id for m in evaluate(text) if m.check != INPUT_CHECK]


def _withhold_lines(text: str) -> tuple[str, list[str]]:
    kept, withheld = [], []
    for line in text.split("\n"):
        rules = tripped(line) if line.strip() else []
        withheld += rules
        kept.append(WITHHELD_LINE.format(", ".join(rules)) if rules else line)
    return "\n".join(kept), withheld


def _defang(found: re.Match[str]) -> str:
    """`<|im_start|>` becomes `(im_start)`: still readable, no longer a turn marker."""
    inner = re.sub(r"[^\w/ ]+", "", found[0]).strip()
    return f"({inner})"


class InsertedTextScreen:
    """A screen for `compose_prompt` that remembers every flag it raised, in order."""

    def __init__(self) -> None:
        self.flags: list[str] = []

    def __call__(self, text: str) -> str:
        screened = screen_inserted(text)
        self.flags += [flag for flag in screened.flags if flag not in self.flags]
        return screened.text
