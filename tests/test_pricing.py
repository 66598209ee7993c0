from __future__ import annotations

import json

import pytest

from swarm_runtime.contract import OFFLINE_MODEL
from swarm_runtime.errors import StateFileError, UnpricedModelError
from swarm_runtime.llm.pricing import BUILTIN_PRICES, FREE, Price, load_price_table, price_for


@pytest.mark.parametrize(
    ("model", "input_price", "output_price"),
    [
        ("llama-3.1-8b-instant", 0.05, 0.08),
        ("llama-3.3-70b-versatile", 0.59, 0.79),
        ("openai/gpt-oss-120b", 0.15, 0.60),
        ("openai/gpt-oss-20b", 0.075, 0.30),
        ("gpt-4o", 2.50, 10.00),
        ("gpt-4o-mini", 0.15, 0.60),
        ("o4-mini", 1.10, 4.40),
    ],
)
def test_builtin_prices(model: str, input_price: float, output_price: float) -> None:
    assert price_for(model, BUILTIN_PRICES, free_unpriced=False) == Price(input_price, output_price)


def test_cost_is_per_million_tokens() -> None:
    assert Price(0.59, 0.79).cost(1_000_000, 1_000_000) == pytest.approx(1.38)
    assert Price(2.50, 10.00).cost(1000, 500) == pytest.approx(0.0075)


@pytest.mark.parametrize("model", ["gpt-4o-2024-08-06", "llama-3.3-70b", "GPT-4O", "gpt-oss"])
def test_near_miss_ids_are_not_guessed(model: str) -> None:
    """The old client billed any id containing a known fragment at that fragment's price."""
    with pytest.raises(UnpricedModelError):
        price_for(model, BUILTIN_PRICES, free_unpriced=False)


def test_unpriced_model_error_tells_the_operator_what_to_do() -> None:
    with pytest.raises(UnpricedModelError) as caught:
        price_for("mystery-model", BUILTIN_PRICES, free_unpriced=False)
    assert "SWARM_PRICES_FILE" in str(caught.value)
    assert "mystery-model" in str(caught.value)


def test_a_local_provider_serves_unpriced_models_for_free() -> None:
    assert price_for("llama3:8b", BUILTIN_PRICES, free_unpriced=True) == FREE
    assert price_for(OFFLINE_MODEL, BUILTIN_PRICES, free_unpriced=True) == FREE


def test_a_listed_price_applies_even_on_a_local_provider() -> None:
    assert price_for("gpt-4o", BUILTIN_PRICES, free_unpriced=True) == Price(2.50, 10.00)


def test_the_name_offline_is_not_free_on_a_paid_provider() -> None:
    """Asking a paid provider for a model called "offline" must not bypass the budget."""
    with pytest.raises(UnpricedModelError):
        price_for(OFFLINE_MODEL, BUILTIN_PRICES, free_unpriced=False)


def test_no_prices_file_gives_the_builtin_table() -> None:
    assert load_price_table(None) == dict(BUILTIN_PRICES)


def test_prices_file_adds_and_overrides_models(tmp_path) -> None:
    prices_file = tmp_path / "prices.json"
    prices_file.write_text(
        json.dumps({"my-model": {"input": 1.5, "output": 3}, "gpt-4o": {"input": 2, "output": 9}})
    )
    table = load_price_table(prices_file)
    assert price_for("my-model", table, free_unpriced=False) == Price(1.5, 3.0)
    assert table["gpt-4o"] == Price(2.0, 9.0)
    assert table["gpt-4o-mini"] == BUILTIN_PRICES["gpt-4o-mini"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "invalid JSON"),
        ('{"my-model": {"input": 1}}', "my-model.output"),
        ('{"my-model": {"input": -1, "output": 1}}', "my-model.input"),
        ('{"my-model": {"input": "cheap", "output": 1}}', "my-model.input"),
        ('{"my-model": {"input": 1, "output": 1, "typo": 2}}', "my-model.typo"),
        ('["gpt-4o"]', "dictionary"),
    ],
)
def test_broken_prices_file_names_the_file_and_the_field(
    tmp_path, content: str, expected: str
) -> None:
    prices_file = tmp_path / "prices.json"
    prices_file.write_text(content)
    with pytest.raises(StateFileError) as caught:
        load_price_table(prices_file)
    assert caught.value.path == prices_file
    assert str(prices_file) in str(caught.value)
    assert expected in str(caught.value)


def test_missing_prices_file_is_reported(tmp_path) -> None:
    with pytest.raises(StateFileError, match="does not exist"):
        load_price_table(tmp_path / "absent.json")
