"""Hostile messages through the real stack: exactly one reply each, and never an order for an invalid one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.envelope import MAX_MESSAGE_BYTES
from tests.support import Bus, activity, allocation, holdings, wait_for

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")

ALLOCATION = allocation({"SPY": 0.1, "TLT": 0.05})


def only_reply(bus: Bus, message_id: str) -> dict[str, Any]:
    replies = bus.replies_to(message_id)  # a nacked message would come back and be answered again
    assert len(replies) == 1, replies
    return replies[0]


def test_a_stale_allocation_with_max_age_nan_is_refused_not_traded(consumer_factory, bus: Bus, gateway):
    text = json.dumps({**ALLOCATION, "maxAgeSeconds": 12345.5}).replace("12345.5", "NaN")
    reply = only_reply(bus, bus.publish(text))
    assert (reply["status"], reply["error"]["code"]) == ("error", "non_finite_number")
    assert gateway.orders() == []


def test_duplicate_dry_run_keys_never_trade(bus: Bus, gateway, project: str):
    params = json.dumps(ALLOCATION["params"])
    text = '{"intent": "allocation", "dryRun": true, "params": ' + params + ', "dryRun": false}'
    reply = only_reply(bus, bus.publish(text))
    assert (reply["status"], reply["error"]["code"]) == ("error", "duplicate_key")
    assert gateway.orders() == []
    assert holdings(project) == {}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(json.dumps({"intent": "summary", "idempotencyKey": "k" * 1_000_000}), "too_large", id="huge-key"),
        pytest.param("[" * 10_000 + "]" * 10_000, "too_deep", id="nested-10000"),
        pytest.param('{"intent": "summary", "idempotencyKey": "k\\ud800"}', "invalid_character", id="lone-surrogate"),
        pytest.param('{"intent": "summary", "params": {"__x__": 1}}', "invalid_key", id="reserved-key"),
        pytest.param(
            json.dumps({"intent": "summary", "params": json.loads('{"a":' * 25 + "1" + "}" * 25)}),
            "too_deep",
            id="params-25-deep",
        ),
        pytest.param(
            '{"intent": "cash-balancer", "params": {"threshold": 100000000000000000000}}',
            "non_finite_number",
            id="integer-beyond-64-bits",  # Firestore's client refused it at every store: run 5 times, dead-lettered
        ),
    ],
)
def test_each_hostile_message_gets_one_short_error_reply_and_an_activity_record(
    bus: Bus, project: str, data: str, code: str
):
    message_id = bus.publish(data)
    reply = only_reply(bus, message_id)
    assert (reply["status"], reply["error"]["code"]) == ("error", code)
    assert len(json.dumps(reply)) < 2000
    assert len(wait_for(lambda: activity(project, messageId=message_id), what="the activity record")) == 1


def test_a_summary_cannot_take_a_scheduled_jobs_slot(bus: Bus, gateway, project: str):
    squatter = only_reply(bus, bus.publish({"intent": "summary"}, schedule="open-allocation"))
    assert (squatter["status"], squatter["error"]["code"]) == ("error", "schedule_mismatch")
    real = bus.reply_to(bus.publish(ALLOCATION, schedule="open-allocation"))
    assert real["status"] == "ok", real
    assert not real.get("duplicate")
    refs = sorted(line["orderRef"] for line in real["result"]["instruments"])
    assert sorted(o["orderRef"] for o in gateway.orders()) == refs
    wait_for(lambda: set(holdings(project).get("dummy", {})) == {"SPY", "TLT"}, what="the fills booked")


def test_an_idempotency_key_reused_for_another_request_is_a_conflict_not_a_duplicate(bus: Bus, gateway, project: str):
    first = bus.reply_to(bus.publish({"intent": "summary", "idempotencyKey": "shared-key"}))
    assert first["status"] == "ok"
    reused = only_reply(bus, bus.publish({"intent": "close-all", "idempotencyKey": "shared-key"}))
    assert (reused["status"], reused["error"]["code"]) == ("error", "conflicting_request")
    assert "summary" in reused["error"]["message"]
    assert reused["intent"] == "close-all"
    assert reused.get("duplicate") is None
    other_params = only_reply(
        bus, bus.publish({**ALLOCATION, "idempotencyKey": "alloc-key", "params": {**ALLOCATION["params"]}})
    )
    assert other_params["status"] == "ok"
    changed = json.loads(json.dumps(ALLOCATION))
    changed["params"]["strategyParams"]["dummy"]["weights"]["SPY"] = 0.3
    conflict = only_reply(bus, bus.publish({**changed, "idempotencyKey": "alloc-key"}))
    assert conflict["error"]["code"] == "conflicting_request"
    assert len(gateway.orders()) == 2  # the first allocation's two legs, nothing for the conflicting one
    # the same request again is still a duplicate with the stored reply
    again = bus.reply_to(bus.publish({"intent": "summary", "idempotencyKey": "shared-key"}))
    assert again["duplicate"] is True
    assert again["intent"] == "summary"


# -- the property: whatever arrives, one reply, and no order for an invalid message -----------------------------------

VALID_BODIES = [
    {"intent": "summary"},
    {"intent": "ping"},
    {**ALLOCATION, "dryRun": True},
    {"intent": "close-all", "dryRun": True},
    {"intent": "reconcile"},
]


def _corrupt(body: dict[str, Any], how: str, junk: str) -> bytes:
    text = json.dumps(body)
    if how == "nan":
        return text.replace("}", ', "maxAgeSeconds": NaN}', 1).encode()
    if how == "duplicate":
        return text.replace("{", '{"dryRun": false, "dryRun": false, ', 1).encode()
    if how == "deep":
        return (text[:-1] + ', "params": ' + '{"a":' * 40 + "1" + "}" * 40 + "}").encode()
    if how == "control":
        return json.dumps({**body, "idempotencyKey": "k\n" + junk}).encode()
    if how == "huge":
        # just over the limit: escaped unicode junk repeated to a size would make messages of megabytes, and a few of
        # those stall the emulator's streaming pull (what the delivery probe is for), which is not what this tests
        return json.dumps({**body, "idempotencyKey": junk + "k" * (MAX_MESSAGE_BYTES + 1000)}).encode()
    if how == "unicode":
        return json.dumps({**body, "params": {junk or "x": "\u202e\ufeff" + junk}}).encode()
    if how == "truncated":
        return text[: max(1, len(text) // 2)].encode()
    return junk.encode("utf-8", "surrogatepass")  # arbitrary text


MESSAGES = st.tuples(
    st.sampled_from(VALID_BODIES),
    st.sampled_from(["nan", "duplicate", "deep", "control", "huge", "unicode", "truncated", "text"]),
    st.text(max_size=30),
)


@pytest.mark.timeout(300)
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(MESSAGES, min_size=40, max_size=40))
def test_any_hostile_batch_gets_exactly_one_reply_per_message_and_places_no_order(bus: Bus, gateway, batch):
    before = len(gateway.orders())
    ids = [bus.publish(_corrupt(body, how, junk), origin="fuzz") for body, how, junk in batch]
    for message_id, replies in bus.replies_to_all(ids).items():
        assert len(replies) == 1, (message_id, replies)
    assert len(gateway.orders()) == before


def test_a_request_id_longer_than_an_attribute_may_be_is_answered_with_its_attribute_cut(bus: Bus, gateway):
    """The envelope allows a 500-character idempotencyKey; 500 three-byte characters are 1,500 bytes, and Pub/Sub
    refuses an attribute value over 1,024 (the emulator does not): the reply, its requestId attribute whole, could
    never have been published. The attribute is cut at a character boundary; the reply's body carries it whole."""
    key = "€" * 500
    message_id = bus.publish({"intent": "ping", "idempotencyKey": key})
    reply = only_reply(bus, message_id)
    assert (reply["status"], reply["requestId"]) == ("ok", key)
    (attributes,) = [a for a in bus.reply_attributes if a["messageId"] == message_id]
    assert attributes["requestId"] == "€" * (1024 // 3)  # 1,023 bytes: the last whole character under 1,024
