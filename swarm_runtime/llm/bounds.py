"""What one call can cost at most, and whether a budget can still take it.

A hold is only worth something if an honest provider can never bill past it. Output is
bounded by the `max_tokens` sent, which the runtime caps. Input is bounded by bytes:
byte-level tokenizers (and SentencePiece with byte fallback) never emit more tokens than
the text has bytes, and the chat template adds a fixed number of tokens per message plus
a preamble (Llama 3.1's date header alone is about 25 tokens).
"""

from __future__ import annotations

# Per message: its role header and end-of-turn markers (OpenAI counts 3-4, Llama 3 5).
MESSAGE_OVERHEAD_TOKENS = 8
# Once per request: begin-of-text, the assistant's opening header, a date preamble.
TEMPLATE_TOKEN_ALLOWANCE = 64


def input_token_bound(prompt: str, system: str | None = None) -> int:
    """A true upper bound on the prompt tokens a provider can bill for these messages."""
    messages = [prompt] if system is None else [system, prompt]
    text_bytes = sum(len(text.encode("utf-8")) for text in messages)
    return text_bytes + len(messages) * MESSAGE_OVERHEAD_TOKENS + TEMPLATE_TOKEN_ALLOWANCE


def output_token_bound(requested: int, cap: int) -> int:
    """What is sent (and held) as max_tokens: never above the operator's cap."""
    return max(1, min(requested, cap))


def admits(spent: float, held: float, amount: float, limit: float) -> bool:
    """A new hold fits only while spend plus holds is under the limit and stays within it.

    The first half matters after a provider reported more than its hold: the spend is then
    past the limit, and nothing more is admitted until it is under the limit again."""
    return spent + held < limit and spent + held + amount <= limit
