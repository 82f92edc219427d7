"""Hostile and odd messages: each is refused at decoding with one precise reason, and decoding never crashes.

The service-level counterpart (one reply per message, no order) is tests/service/test_hostile_messages.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.envelope import MAX_DEPTH, Delivery, check_values
from consumer.errors import BadRequest
from consumer.intake import RequestDecoder
from consumer.intents import builtin_intents
from consumer.schemas import Schemas
from consumer.strategies import discover

SCHEMAS = Schemas()
DECODER = RequestDecoder(SCHEMAS, builtin_intents(), ZoneInfo("America/New_York"))
SENTINEL_NUMBER = 98765.4321
SENTINEL_STRING = "SENTINELVALUE"


def deliver(data: bytes | str, **attributes: str) -> Delivery:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return Delivery(message_id="m-1", data=raw, attributes=attributes, publish_time=datetime(2026, 3, 2, tzinfo=UTC))


def refused(data: bytes | str, **attributes: str) -> BadRequest:
    request = DECODER.decode(deliver(data, **attributes))
    assert request.envelope is None, f"accepted: {request.envelope}"
    assert request.problem is not None
    assert len(request.problem.message) < 600, "an error echoes at most a clipped part of the message"
    return request.problem


# -- every field of every intent, found in the schemas ---------------------------------------------------------------


def fields(schema: dict[str, Any], kinds: set[str], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths of the fields of these JSON types in a schema (maps get the key "X"; $refs are followed)."""
    if "$ref" in schema:
        name = schema["$ref"].split("#")[0]
        yield from fields(SCHEMAS.document(name if SCHEMAS.has(name) else f"intents/{name}"), kinds, path)
        return
    types = schema.get("type")
    types = set(types) if isinstance(types, list) else {types}
    if types & kinds:
        yield path
    for name, sub in (schema.get("properties") or {}).items():
        yield from fields(sub, kinds, (*path, name))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from fields(schema["additionalProperties"], kinds, (*path, "X"))
    for alternatives in ("oneOf", "anyOf", "allOf"):
        for sub in schema.get(alternatives, []):
            yield from fields(sub, kinds, path)
    if isinstance(schema.get("items"), dict):
        yield from fields(schema["items"], kinds, (*path, "0"))


def every_field(kinds: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    """(intent, path in the message) for every field of these types: envelope, params, strategies' params."""
    out = [("summary", p) for p in fields(SCHEMAS.document("envelope.schema.json"), kinds) if p[0] != "params"]
    for name, intent in builtin_intents().items():
        out += [(name, ("params", *p)) for p in fields(SCHEMAS.document(intent.schema), kinds)]
    for strategy_id, strategy in discover().items():
        out += [
            ("allocation", ("params", "strategyParams", strategy_id, *p))
            for p in fields(strategy.params_schema, kinds)
            if p
        ]
    return sorted(set(out))


def message_with(intent: str, path: tuple[str, ...], value: Any) -> str:
    """A message with `value` at `path` ("0" is an array's first item)."""
    for part in reversed(path):
        value = [value] if part == "0" else {part: value}
    return json.dumps({"intent": intent, **value})


NUMERIC_FIELDS = every_field({"number", "integer"})
STRING_FIELDS = every_field({"string"})


def test_the_schemas_have_the_fields_these_tests_cover() -> None:
    numeric = {".".join(p) for _, p in NUMERIC_FIELDS}
    assert {"maxAgeSeconds", "params.threshold", "params.strategyParams.dummy.weights.X"} <= numeric
    strings = {".".join(p) for _, p in STRING_FIELDS}
    assert {"idempotencyKey", "expiresAt", "params.instruments.0", "params.strategies.0"} <= strings


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize(("intent", "path"), NUMERIC_FIELDS, ids=lambda v: v if isinstance(v, str) else ".".join(v))
def test_non_finite_numbers_are_refused_in_every_numeric_field(intent: str, path: tuple[str, ...], token: str) -> None:
    text = message_with(intent, path, SENTINEL_NUMBER).replace(str(SENTINEL_NUMBER), token)
    assert refused(text).code == "non_finite_number"


@pytest.mark.parametrize("token", ["9223372036854775808", "-9223372036854775809", "100000000000000000000"])
@pytest.mark.parametrize(("intent", "path"), NUMERIC_FIELDS, ids=lambda v: v if isinstance(v, str) else ".".join(v))
def test_integers_beyond_64_bits_are_refused_in_every_numeric_field(
    intent: str, path: tuple[str, ...], token: str
) -> None:
    """Firestore keeps 64-bit integers and its client refuses more (ValueError) when the params are recorded: a
    threshold of 1e20 written as an integer passed the schema and failed every store, run five times."""
    text = message_with(intent, path, SENTINEL_NUMBER).replace(str(SENTINEL_NUMBER), token)
    problem = refused(text)
    assert problem.code == "non_finite_number"
    assert ".".join(path) in problem.message


def test_integers_at_the_64_bit_bounds_are_accepted() -> None:
    request = DECODER.decode(deliver(json.dumps({"intent": "cash-balancer", "params": {"threshold": 2**63 - 1}})))
    assert request.problem is None, request.problem
    check_values({"low": -(2**63), "high": 2**63 - 1})  # no BadRequest


@pytest.mark.parametrize(
    "char", ["\n", "\t", "\x00", "\r", "\x7f", "\x85"], ids=["LF", "TAB", "NUL", "CR", "DEL", "NEL"]
)
@pytest.mark.parametrize(("intent", "path"), STRING_FIELDS, ids=lambda v: v if isinstance(v, str) else ".".join(v))
def test_control_characters_are_refused_in_every_string_field(intent: str, path: tuple[str, ...], char: str) -> None:
    problem = refused(message_with(intent, path, "AAPL" + char))
    assert problem.code == "invalid_character"
    assert ".".join(path).replace(".0", "[0]") in problem.message


@pytest.mark.parametrize("char", ["\n", "\t", "\x00"])
def test_control_characters_in_the_attributes_are_refused(char: str) -> None:
    assert refused('{"params": {}}', intent="summary" + char).code == "invalid_character"
    assert refused('{"intent": "summary"}', schedule="open-allocation" + char).code == "invalid_character"


def test_a_symbol_with_a_trailing_newline_never_reaches_the_schema_as_valid() -> None:
    body = {"intent": "allocation", "params": {"strategies": ["dummy"],
            "strategyParams": {"dummy": {"weights": {"AAPL\n": 0.1}}}}}  # fmt: skip
    assert refused(json.dumps(body)).code == "invalid_key"


@pytest.mark.parametrize(
    "text",
    [
        '{"intent": "allocation", "dryRun": true, "dryRun": false}',
        '{"intent": "summary", "params": {"a": 1, "a": 2}}',
        '{"intent": "allocation", "params": {"strategyParams": {"dummy": {"weights": {"SPY": 0.1, "SPY": 0.9}}}}}',
    ],
)
def test_duplicate_keys_are_refused_at_any_depth(text: str) -> None:
    problem = refused(text)
    assert problem.code == "duplicate_key"


def test_deep_nesting_is_refused_before_parsing() -> None:
    assert refused("[" * 10_000 + "]" * 10_000).code == "too_deep"
    nested: Any = 1
    for _ in range(25):
        nested = {"x": nested}
    problem = refused(json.dumps({"intent": "summary", "params": nested}))
    assert problem.code == "too_deep"
    assert "26 levels" in problem.message  # the message object and 25 nested ones
    # brackets inside strings do not count
    request = DECODER.decode(deliver(json.dumps({"intent": "summary", "idempotencyKey": "[" * (MAX_DEPTH * 3)})))
    assert request.problem is None


def test_a_huge_message_is_refused_without_echoing_it() -> None:
    problem = refused(json.dumps({"intent": "summary", "idempotencyKey": "k" * 1_000_000}))
    assert problem.code == "too_large"
    assert "kkkkkkkkkk" not in problem.message


def test_a_long_string_is_refused_and_echoed_clipped() -> None:
    problem = refused(json.dumps({"intent": "summary", "idempotencyKey": "k" * 5000}))
    assert problem.code == "too_long"
    over_limit = refused(json.dumps({"intent": "summary", "idempotencyKey": "k" * 3000}))
    assert over_limit.code == "invalid_envelope"
    assert "characters)" in over_limit.message  # the schema's message, clipped


@pytest.mark.parametrize(
    "text",
    [
        '{"intent": "summary", "idempotencyKey": "\\ud800"}',  # a lone surrogate, as JSON escapes it
        '{"intent": "summary", "\\udfff": 1}',
    ],
)
def test_lone_surrogates_are_refused(text: str) -> None:
    assert refused(text).code in {"invalid_character", "invalid_key"}


@pytest.mark.parametrize("key", ["__x__", "__name__", ""])
def test_keys_firestore_would_refuse_are_refused(key: str) -> None:
    assert refused(json.dumps({"intent": "summary", "params": {key: 1}})).code == "invalid_key"


@pytest.mark.parametrize("stamp", ["20991231T000000Z", "2099-W01-1T00:00Z", "2099-12-31", "2099-12-31T00:00:00"])
def test_expires_at_must_be_rfc_3339(stamp: str) -> None:
    problem = refused(json.dumps({"intent": "summary", "expiresAt": stamp}))
    assert problem.code == "invalid_envelope"
    assert "expiresAt" in problem.message


def test_a_valid_rfc_3339_expiry_is_accepted() -> None:
    request = DECODER.decode(deliver(json.dumps({"intent": "summary", "expiresAt": "2099-12-31T00:00:00.5+01:00"})))
    assert request.problem is None


def test_a_huge_integer_is_refused() -> None:
    assert refused('{"intent": "summary", "maxAgeSeconds": ' + "9" * 5000 + "}").code == "invalid_json"


# -- the property: decoding never raises, and anything hostile is refused ---------------------------------------------

HOSTILE = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400"]).map(lambda t: f'{{"intent": "summary", "x": {t}}}'),
    # control characters, or one lone surrogate (a high one followed by a low one is a valid character)
    st.one_of(
        st.text(alphabet=st.characters(categories=["Cc"]), min_size=1, max_size=5), st.characters(categories=["Cs"])
    ).map(lambda t: json.dumps({"intent": "summary", "idempotencyKey": "k" + t})),
    st.integers(MAX_DEPTH + 1, 3000).map(
        lambda n: '{"intent": "summary", "params": ' + '{"a": ' * n + "1" + "}" * n + "}"
    ),
    st.sampled_from(["intent", "dryRun", "params"]).map(lambda k: f'{{"intent": "summary", "{k}": null, "{k}": 1}}'),
    st.binary(max_size=200).filter(lambda b: not b.strip().startswith(b"{")),
)

ANYTHING = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=30,
    ).map(lambda v: json.dumps({"intent": "allocation", "params": v}, allow_nan=True)),
)


@given(HOSTILE)
def test_hostile_messages_are_always_refused(text: str | bytes) -> None:
    refused(text)


@given(ANYTHING)
def test_decoding_never_raises(data: str | bytes) -> None:
    request = DECODER.decode(deliver(data) if isinstance(data, bytes) else deliver(data.encode("utf-8", "replace")))
    assert (request.envelope is None) != (request.problem is None)
