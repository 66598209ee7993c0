"""What a model costs, in USD per million tokens, looked up by its exact id.

There is no substring guessing: `gpt-4o-mini` must never be billed as `gpt-4o`, and a
model nobody priced is refused on a paid provider rather than charged a made-up rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from swarm_runtime.contract import describe_validation_error
from swarm_runtime.errors import StateFileError, UnpricedModelError
from swarm_runtime.store.state_files import read_json


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        spend = prompt_tokens * self.input_per_million
        spend += completion_tokens * self.output_per_million
        return spend / 1_000_000


FREE = Price(0.0, 0.0)

BUILTIN_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        # Groq
        "llama-3.1-8b-instant": Price(0.05, 0.08),
        "llama-3.3-70b-versatile": Price(0.59, 0.79),
        "openai/gpt-oss-120b": Price(0.15, 0.60),
        "openai/gpt-oss-20b": Price(0.075, 0.30),
        "meta-llama/llama-4-scout-17b-16e-instruct": Price(0.11, 0.34),
        "qwen/qwen3-32b": Price(0.29, 0.59),
        # OpenAI
        "gpt-4o": Price(2.50, 10.00),
        "gpt-4o-mini": Price(0.15, 0.60),
        "gpt-4.1": Price(2.00, 8.00),
        "gpt-4.1-mini": Price(0.40, 1.60),
        "gpt-4.1-nano": Price(0.10, 0.40),
        "o4-mini": Price(1.10, 4.40),
    }
)


class PriceEntry(BaseModel):
    """One model in SWARM_PRICES_FILE: USD per million input and output tokens."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)


_PRICE_FILE = TypeAdapter(dict[str, PriceEntry])


def load_price_table(prices_file: Path | None) -> dict[str, Price]:
    """The built-in table, overridden and extended by the operator's file."""
    table = dict(BUILTIN_PRICES)
    if prices_file is None:
        return table
    try:
        entries = _PRICE_FILE.validate_python(read_json(prices_file))
    except ValidationError as exc:
        problems = [describe_validation_error(error) for error in exc.errors()]
        raise StateFileError(prices_file, problems) from None
    table.update({model: Price(e.input, e.output) for model, e in entries.items()})
    return table


def price_for(model: str, table: Mapping[str, Price], *, free_unpriced: bool) -> Price:
    """A listed price wins; otherwise only a local provider may serve the model, for free.

    The offline model costs nothing because the offline provider is local; a paid
    provider asked for a model called "offline" is refused like any unpriced one, so
    the name can never be used to spend money off the books."""
    if model in table:
        return table[model]
    if free_unpriced:
        return FREE
    raise UnpricedModelError(model)
