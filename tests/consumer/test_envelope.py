"""Decoding messages into requests: every way a message can be wrong gets its own code and a readable reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from consumer.envelope import Delivery
from consumer.errors import BadRequest
from consumer.intake import RequestDecoder
from consumer.intents import builtin_intents
from consumer.schemas import Schemas

NY = ZoneInfo("America/New_York")


@pytest.fixture(scope="module")
def decoder() -> RequestDecoder:
    return RequestDecoder(Schemas(), builtin_intents(), NY)


def delivery(data: bytes | str | dict, **attributes: str) -> Delivery:
    if isinstance(data, dict):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    return Delivery(
        message_id="m-1", data=data, attributes=attributes, publish_time=datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    )


def problem(decoder: RequestDecoder, d: Delivery) -> BadRequest:
    request = decoder.decode(d)
    assert request.envelope is None, "expected the message to be refused"
    assert request.problem is not None
    return request.problem


def test_intent_in_body(decoder: RequestDecoder) -> None:
    request = decoder.decode(delivery({"intent": "summary"}))
    assert request.problem is None
    assert request.envelope is not None
    assert request.envelope.intent == "summary"
    assert request.request_id == "m-1"


def test_intent_as_attribute_with_empty_object(decoder: RequestDecoder) -> None:
    request = decoder.decode(delivery("{}", intent="summary"))
    assert request.envelope is not None
    assert request.envelope.intent == "summary"


def test_intent_attribute_with_no_body(decoder: RequestDecoder) -> None:
    request = decoder.decode(delivery(b"", intent="ping"))
    assert request.envelope is not None
    assert request.envelope.intent == "ping"


def test_idempotency_key_is_the_request_id(decoder: RequestDecoder) -> None:
    request = decoder.decode(delivery({"intent": "summary", "idempotencyKey": "abc/1"}))
    assert request.request_id == "abc/1"


def test_scheduled_message_keyed_by_job_and_trading_day(decoder: RequestDecoder) -> None:
    # 2026-03-02 14:00 UTC is 09:00 in New York; a retry an hour later is the same slot.
    first = decoder.decode(delivery({"intent": "summary"}, schedule="open-allocation"))
    later = Delivery(
        message_id="m-2",
        data=b'{"intent": "summary"}',
        attributes={"schedule": "open-allocation"},
        publish_time=datetime(2026, 3, 2, 15, 0, tzinfo=UTC),
    )
    next_day = Delivery(
        message_id="m-3",
        data=b'{"intent": "summary"}',
        attributes={"schedule": "open-allocation"},
        publish_time=datetime(2026, 3, 3, 14, 0, tzinfo=UTC),
    )
    assert first.request_id == "schedule:open-allocation:2026-03-02"
    assert decoder.decode(later).request_id == first.request_id
    assert decoder.decode(next_day).request_id == "schedule:open-allocation:2026-03-03"


def test_late_evening_utc_is_still_the_new_york_day(decoder: RequestDecoder) -> None:
    d = Delivery(
        message_id="m",
        data=b'{"intent": "summary"}',
        attributes={"schedule": "eod"},
        publish_time=datetime(2026, 3, 3, 2, 0, tzinfo=UTC),  # 21:00 on the 2nd in New York
    )
    assert decoder.decode(d).request_id == "schedule:eod:2026-03-02"


@pytest.mark.parametrize(
    ("data", "attributes", "code", "fragment"),
    [
        (b"", {}, "empty_message", "empty"),
        (b"   \n", {}, "empty_message", "empty"),
        (b"\xff\xfe{}", {}, "not_utf8", "UTF-8"),
        (b'{"intent": "summary"', {}, "invalid_json", "not valid JSON"),
        (b"[1, 2]", {}, "not_an_object", "JSON object"),
        (b"{}", {}, "missing_intent", "no intent"),
        (b'{"intent": "summary"}', {"intent": "ping"}, "conflicting_intent", "'summary'"),
        (b'{"intent": "Summary!"}', {}, "invalid_envelope", "intent"),
        (b'{"intent": "summary", "dryrun": true}', {}, "invalid_envelope", "dryrun"),
        (b'{"intent": "summary", "dryRun": "yes"}', {}, "invalid_envelope", "dryRun"),
        (b'{"intent": "summary", "expiresAt": "tomorrow"}', {}, "invalid_envelope", "expiresAt"),
        (b'{"intent": "summary", "expiresAt": "2026-03-02T10:00:00"}', {}, "invalid_envelope", "time zone"),
        (b'{"intent": "teleport"}', {}, "unknown_intent", "teleport"),
        (b'{"intent": "summary", "params": {"verbose": true}}', {}, "invalid_params", "verbose"),
        (b'{"intent": "summary", "params": []}', {}, "invalid_envelope", "params"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(
    decoder: RequestDecoder, data: bytes, attributes: dict[str, str], code: str, fragment: str
) -> None:
    p = problem(decoder, delivery(data, **attributes))
    assert p.code == code
    assert fragment in p.message


@pytest.mark.parametrize(
    "good_after",
    [
        "20261207 09:35:00 America",  # a folder of the tz database: ZoneInfo raised IsADirectoryError
        "20261207 09:35:00 US",
        "20261207 09:35:00 Etc",
        "20261207 09:35:00 Nowhere/Land",  # no such zone
        "20261207 09:35:00 America/",
        "20261399 09:35:00 US/Eastern",  # no such day
        "20261207 24:00:00",
    ],
)
@pytest.mark.parametrize("intent", ["allocation", "close-all", "cash-balancer"])
def test_a_good_after_time_ib_could_not_read_is_refused_naming_the_field(
    decoder: RequestDecoder, intent: str, good_after: str
) -> None:
    """A goodAfterTime whose zone named a folder of the tz database passed the schema's pattern and crashed the
    closed-market check on every delivery: retried five times and dead-lettered with a path of the machine in it."""
    p = problem(decoder, delivery({"intent": intent, "params": {"orderProperties": {"goodAfterTime": good_after}}}))
    assert p.code == "invalid_params"
    assert "params.orderProperties.goodAfterTime" in p.message
    assert "zoneinfo" not in p.message  # no path of the machine's tz database


@pytest.mark.parametrize(
    "good_after",
    ["20261207 09:35:00 US/Eastern", "20261207 09:35:00 America/Argentina/Buenos_Aires", "20261207 09:35:00 UTC",
     "20261207 09:35:00"],
)  # fmt: skip
def test_a_good_after_time_ib_reads_is_accepted(decoder: RequestDecoder, good_after: str) -> None:
    body = {"intent": "close-all", "params": {"orderProperties": {"goodAfterTime": good_after}}}
    assert decoder.decode(delivery(body)).problem is None


def test_unknown_intent_lists_the_known_ones(decoder: RequestDecoder) -> None:
    p = problem(decoder, delivery({"intent": "teleport"}))
    assert "summary" in p.message
    assert "ping" in p.message
