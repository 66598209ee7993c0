"""EncodingMemo: a rewritten document's unchanged records reuse their text, and the bytes
are always dump_json's, even when a value turns from True to 1 to 1.0 (all equal in
Python, all different in JSON)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any

import pytest

from swarm_runtime.store import state_files
from swarm_runtime.store.documents import FileDocument, together
from swarm_runtime.store.state_files import EncodingMemo, Workspace, dump_json

# Each value's twins: equal to it under ==, or close to it, but spelt otherwise in JSON.
TWINS: dict[str, list[Any]] = {
    "bool": [True, 1, 1.0, False, 0, 0.0, -0.0],
    "number": [2, 2.0, 10**20, 1e20, float("inf"), float("nan"), -1, -1.0],
    "text": ["", "a", "A", "é", "\u2028", "tab\there", None],
}
SCALARS = [value for family in TWINS.values() for value in family]
KEYS: list[Any] = ["a", "b", "c", "status", "é"]
ODD_KEYS: list[Any] = [1, True, 1.0, None, 2.5]


class Level(IntEnum):
    ONE = 1


class Colour(StrEnum):
    RED = "red"


def random_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth <= 0 or roll < 0.45:
        return rng.choice(SCALARS)
    if roll < 0.65:
        return [random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if roll < 0.7:
        return tuple(random_value(rng, depth - 1) for _ in range(rng.randint(0, 2)))
    keys = KEYS if rng.random() < 0.9 else KEYS + ODD_KEYS
    return {rng.choice(keys): random_value(rng, depth - 1) for _ in range(rng.randint(0, 4))}


def random_document(rng: random.Random) -> dict[str, Any]:
    return {
        "version": 1,
        "updated_at": "2026-01-01T00:00:00+00:00",
        "changes": {f"t{i}": random_value(rng, 3) for i in range(rng.randint(0, 12))},
        "history": [random_value(rng, 3) for _ in range(rng.randint(0, 12))],
    }


def flip_a_leaf(rng: random.Random, value: Any) -> Any:
    """`value` with one scalar somewhere inside it replaced by one of its twins, in place
    where the container allows it."""
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        value[key] = flip_a_leaf(rng, value[key])
        return value
    if isinstance(value, list) and value:
        index = rng.randrange(len(value))
        value[index] = flip_a_leaf(rng, value[index])
        return value
    family = next((f for f in TWINS.values() if any(value is v or value == v for v in f)), SCALARS)
    return rng.choice(family)


def reorder_keys(rng: random.Random, value: Any) -> None:
    """Shuffle the keys of the first dict found inside `value`, in place."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        value.clear()
        value.update(items)
    elif isinstance(value, list) and value:
        reorder_keys(rng, rng.choice(value))


def mutate(rng: random.Random, document: dict[str, Any]) -> None:
    changes, history = document["changes"], document["history"]
    roll = rng.randrange(8)
    if roll == 0 and changes:
        key = rng.choice(list(changes))
        changes[key] = flip_a_leaf(rng, changes[key])
    elif roll == 1 and history:
        index = rng.randrange(len(history))
        history[index] = flip_a_leaf(rng, history[index])
    elif roll == 2:
        reorder_keys(rng, rng.choice([changes, history]))
    elif roll == 3:
        changes[f"t{rng.randrange(20)}"] = random_value(rng, 3)
        history.insert(rng.randint(0, len(history)), random_value(rng, 3))
    elif roll == 4 and changes:
        del changes[rng.choice(list(changes))]
        history[:1] = []
    elif roll == 5:
        rng.shuffle(history)
        reorder_keys(rng, changes)
    elif roll == 6:
        document["version"] = rng.choice(TWINS["bool"])
    elif rng.random() < 0.2:
        document.update(random_document(rng))
    # else the same document is written again


def counting_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many records the memo encodes: a list holding one count."""
    count = [0]
    for name in ("_item_text", "_pair_text"):
        encode: Callable[[Any], str] = getattr(state_files, name)

        def counted(record: Any, encode: Callable[[Any], str] = encode) -> str:
            count[0] += 1
            return encode(record)

        monkeypatch.setattr(state_files, name, counted)
    return count


def test_randomly_mutated_documents_encode_exactly_as_dump_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Type flips between True, 1 and 1.0 and between 0.0 and -0.0, nested changes,
    keys added, removed and reordered, in place and in new objects: the memo's bytes are
    dump_json's every time, while most records are not encoded again."""
    encodes = counting_encodes(monkeypatch)
    rng = random.Random(20261202)
    memo = EncodingMemo()
    document = random_document(rng)
    lines = 0
    for _ in range(3000):
        mutate(rng, document)
        if rng.random() < 0.1:  # a fresh copy, as a reader of the file would make
            document = json.loads(dump_json(document))
        assert memo.dump(document) == dump_json(document)
        lines += len(document["changes"]) + len(document["history"])
    assert encodes[0] < lines / 3


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (True, 1),
        (1, True),
        (1, 1.0),
        (1.0, True),
        (False, 0),
        (0, 0.0),
        (0.0, -0.0),
        (-0.0, 0.0),
        (2, 2.0),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ([1, [True]], [1, [1]]),
        ({"1": "x"}, {1: "x"}),
        ([1, 2], (1, 2)),
    ],
)
def test_a_value_equal_under_python_but_spelt_otherwise_is_encoded_again(
    before: Any, after: Any
) -> None:
    """The failure this guards against: a memo keyed on == writing `true` for a 1."""
    memo = EncodingMemo()
    for document in (
        {"changes": {"t1": {"vote": before}}, "history": [before]},
        {"changes": {"t1": {"vote": after}}, "history": [after]},
    ):
        assert memo.dump(document) == dump_json(document)


def test_a_record_changed_in_place_after_a_write_is_encoded_again() -> None:
    """The memo keeps a copy of its own: the caller's objects may change freely."""
    memo = EncodingMemo()
    record: dict[str, Any] = {"attempt": 1, "issues": ["empty"]}
    document = {"changes": {"t1": record}}
    memo.dump(document)
    record["attempt"] = True
    record["issues"].append("late")
    assert memo.dump(document) == dump_json(document)


def test_only_the_records_that_changed_are_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    memo = EncodingMemo()
    changes = {f"t{i}": {"n": float(i) if i == 7 else i} for i in range(100)}
    document: dict[str, Any] = {"version": 1, "changes": changes}
    memo.dump(document)
    encodes = counting_encodes(monkeypatch)
    changed = {**document, "changes": {**changes, "t7": {"n": 7}}}
    assert memo.dump(changed) == dump_json(changed)
    assert encodes == [1]


def test_the_memo_forgets_records_the_document_no_longer_holds() -> None:
    memo = EncodingMemo()
    memo.dump({"changes": {f"t{i}": {"n": i} for i in range(100)}, "list": [1, 2]})
    assert len(memo) == 102
    memo.dump({"changes": {"t1": {"n": 1}}})
    assert len(memo) == 1
    memo.dump([1, 2, 3])
    assert len(memo) == 0


@pytest.mark.parametrize(
    "document",
    [
        [1, {"a": True}],
        {},
        {"changes": {}, "history": []},
        {"changes": {1: "x", "2": "y"}},
        {"changes": {"a": Colour.RED, "b": Level.ONE}},
        {"history": [Colour.RED, Level.ONE, 1]},
        {"changes": {"a": float("nan"), "b": float("-inf")}},
        {"é": {"ü": "\u2028"}},
    ],
)
def test_documents_of_every_shape_encode_as_dump_json(document: Any) -> None:
    memo = EncodingMemo()
    for _ in range(2):
        assert memo.dump(document) == dump_json(document)


def circular() -> dict[str, Any]:
    loop: list[Any] = []
    loop.append(loop)
    return {"changes": {"t1": loop}}


@pytest.mark.parametrize(
    "make",
    [
        lambda: {"changes": {"t1": {"price": Decimal(1)}}},
        lambda: {"changes": {"t1": {"tags": {"a"}}}},
        lambda: {"changes": {"t1": bytearray(b"x")}},
        lambda: {"history": [b"x"]},
        lambda: {"changes": {"t1": "\ud800"}},
        lambda: {"\ud800": 1},
        circular,
    ],
)
def test_a_document_json_cannot_encode_fails_as_dump_json_fails(
    make: Callable[[], Any],
) -> None:
    memo = EncodingMemo()
    memo.dump({"changes": {"t1": "x"}, "history": [1]})
    plain, memoized = error_of(lambda: dump_json(make())), error_of(lambda: memo.dump(make()))
    assert (type(memoized), str(memoized)) == (type(plain), str(plain))


def error_of(call: Callable[[], Any]) -> Exception:
    try:
        call()
    except (TypeError, ValueError) as exc:
        return exc
    raise AssertionError("no error raised")


def test_a_file_document_writes_dump_json_bytes(workspace: Workspace) -> None:
    document = FileDocument(workspace, workspace.quality_gate_path)
    for flag in (1, True, 1.0, -0.0):
        content: dict[str, Any] = {"version": 1, "changes": {"t1": {"flag": flag}, "t2": {}}}
        document.write(content)
        assert workspace.quality_gate_path.read_bytes() == dump_json(content)
        document.update(lambda raw: ({**raw, "history": [raw["changes"]["t1"]]}, None), dict)
        updated = {**content, "history": [content["changes"]["t1"]]}
        assert workspace.quality_gate_path.read_bytes() == dump_json(updated)


def test_together_writes_through_each_documents_memo(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = FileDocument(workspace, workspace.reward_ledger_path)
    balances = FileDocument(workspace, workspace.balances_path)
    grants = {"grants": {f"g{i}": {"tokens": i} for i in range(50)}}
    with together([ledger, balances]):
        ledger.write_returning_bytes(grants)
    encodes = counting_encodes(monkeypatch)
    with together([ledger, balances]):
        more = ledger.read(dict)
        more["grants"]["g50"] = {"tokens": 50}
        ledger.write_returning_bytes(more)
    assert workspace.reward_ledger_path.read_bytes() == dump_json(more)
    assert encodes == [1]
