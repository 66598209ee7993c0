"""Text for a terminal: values from the state files shown on one line, safely.

Task text, errors and worker names come from files anyone with access to the workspace
may write, so a control character is shown escaped, never sent to the terminal.
"""

from __future__ import annotations

from datetime import datetime

DETAIL_CHARS = 100


def clean(value: object) -> str:
    """`value` on one line: runs of whitespace become one space, control characters escapes."""
    text = " ".join(str(value).split())
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def short(value: object, limit: int = DETAIL_CHARS) -> str:
    text = clean(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def moment(value: object) -> str:
    """An ISO timestamp to the second, `YYYY-MM-DD HH:MM:SS`; anything else as it is."""
    if not isinstance(value, str):
        return "-"
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return short(value, 19)


def dollars(amount: object) -> str:
    return f"${amount:.4f}" if isinstance(amount, int | float) else "-"


def listed(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"
