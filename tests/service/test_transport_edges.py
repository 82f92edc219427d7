"""The Pub/Sub transport and the reply path at their edges: envelope fields sent as attributes, a reply topic that
refuses, a dead letter at Pub/Sub's limits, and the replies' schema for every intent. Found by an independent review
of the transport; each test but the schema one failed before, for the reason its docstring gives (decision 73)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from google.cloud import pubsub_v1

from tests.support import QUIET, TRADING_CLOCK, Bus, activity, allocation, claim_of, wait_for

pytestmark = pytest.mark.usefixtures("paper_config")

LATER_TOPIC = "intent-replies-later"


class LaterReplies:
    """A reply topic that does not exist until `create` (a topic deleted by mistake, or not yet created by Terraform),
    with a subscription of its own made at the same moment, pulled by `replies`."""

    def __init__(self, project: str) -> None:
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        self.topic = self.publisher.topic_path(project, LATER_TOPIC)
        self.subscription = self.subscriber.subscription_path(project, LATER_TOPIC + "-monitor")
        self.received: list[dict[str, Any]] = []

    def create(self) -> None:
        self.publisher.create_topic(name=self.topic)
        self.subscriber.create_subscription(name=self.subscription, topic=self.topic)

    def pull(self) -> list[dict[str, Any]]:
        response = self.subscriber.pull(subscription=self.subscription, max_messages=50, timeout=5)
        if response.received_messages:
            self.subscriber.acknowledge(
                subscription=self.subscription, ack_ids=[m.ack_id for m in response.received_messages]
            )
        self.received.extend(json.loads(m.message.data) for m in response.received_messages)
        return self.received

    def replies_to(self, message_id: str, timeout: float, quiet: float) -> list[dict[str, Any]]:
        """Every reply to the message that arrives within `timeout`, then `quiet` seconds more."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(r["messageId"] == message_id for r in self.pull()):
            pass
        end = time.monotonic() + quiet
        while time.monotonic() < end:
            self.pull()
        return [r for r in self.received if r["messageId"] == message_id]

    def close(self) -> None:
        self.subscriber.close()
        self.publisher.transport.close()


@pytest.fixture
def later_replies(project: str):
    replies = LaterReplies(project)
    yield replies
    replies.close()


# -- 2. the reply topic missing ----------------------------------------------------------------------------------------


@pytest.mark.slow(seconds=40)
def test_an_error_reply_that_no_attempt_could_publish_is_not_lost(consumer_factory, bus: Bus, project, later_replies):
    """An invalid message (here not JSON) while the reply topic is missing (deleted by mistake, a Terraform apply
    half done) and comes back only after the message's last delivery attempt. What happened: every attempt builds
    the error reply, writes an activity record, fails to publish and nacks, the last attempt too; the emulator then
    drops the message (the cloud dead-letters it, unanswered, with no reason in its attributes). Nobody ever answers
    it, and the activity log holds one record per attempt for one message. A user expects what a valid request
    gets (decision 39): the reply left for the sweep to publish once Pub/Sub takes it, or at least the message
    dead-lettered with why.
    Root cause: consumer/dispatch.py Dispatcher._settle: a reply not `claimed` (every bad request, a
    conflicting_request) whose publish fails returns NACK whatever the attempt; only claimed replies reach
    `_publish_failed`, which on the last attempt marks the stored reply pending for the sweep."""
    consumer_factory(reply_topic=LATER_TOPIC, stranded_after=1.0, claim_lease=3.0)
    message_id = bus.publish(b'{"intent": "summary",')
    wait_for(lambda: len(activity(project, messageId=message_id)) >= 5, timeout=60,
             what="the five delivery attempts to have run")  # fmt: skip
    time.sleep(QUIET)  # past the last attempt's nack: the emulator has dropped the message
    later_replies.create()
    replies = later_replies.replies_to(message_id, timeout=20, quiet=QUIET)
    attempts = sorted(a["deliveryAttempt"] for a in activity(project, messageId=message_id))
    assert [r["error"]["code"] for r in replies] == ["invalid_json"], (
        f"replies to a bad message once the reply topic exists: {replies}; activity records by attempt: {attempts}"
    )


@pytest.mark.slow(seconds=30)
@pytest.mark.parametrize(**TRADING_CLOCK)
def test_the_first_reply_a_trade_ever_gets_is_not_marked_duplicate(
    consumer_factory, bus: Bus, gateway, project, later_replies, caplog
):
    """An allocation runs while the reply topic is missing: it places and fills its orders, stores its reply with its
    claim, fails to publish it and nacks. The topic is back before the redelivery, which finds the claim done and
    publishes the stored reply. What happened: that reply, the only one the message ever gets, says
    `"duplicate": true`, which the reply schema defines as "republished from the stored outcome of an earlier
    delivery" and which monitors (and this suite's own `final_replies`, tests/service/test_faults.py) discard as a
    repeat of a reply already seen: the trade's outcome is never seen. A user expects the one reply it gets to be
    an ordinary one, and the orders placed once (checked at the broker by orderRef: they are).
    Root cause: consumer/dispatch.py Dispatcher._duplicate marks every republished stored reply duplicate, even when
    the stored reply is this very message's (`claim.reply["messageId"] == request.delivery.message_id`) and was never
    published; the claim does not record that the publish failed (`replyPending` is set only on the last attempt)."""
    consumer = consumer_factory(reply_topic=LATER_TOPIC)
    message_id = bus.publish(allocation({"SPY": 0.1}, idempotencyKey="later-reply"))
    wait_for(lambda: claim_of(project, "later-reply").get("state") == "done", timeout=60,
             what="the allocation to store its reply")  # fmt: skip
    # Its publish failed for good (the client retries some answers): made while it was retrying, the topic took it
    # before its subscription existed, and the reply was lost to the test.
    nacked = "could not publish the reply; nacked"
    wait_for(lambda: [r for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == nacked],
             timeout=60, what="the reply's publish to fail")  # fmt: skip
    # The topic and its subscription are made while the gateway is away: intake holds the redelivery meanwhile, so
    # no reply can be published between the two (it would be lost to a topic without a subscription).
    gateway.restart(down_seconds=3.0)
    wait_for(lambda: not consumer.service.status.accepting, what="the consumer to see the gateway go")
    later_replies.create()
    replies = later_replies.replies_to(message_id, timeout=30, quiet=QUIET)
    refs = [o["orderRef"] for o in gateway.orders()]
    assert len(refs) == 1, f"one SPY leg, placed once by orderRef; at the broker: {refs}"
    assert [e["orderRef"] for e in gateway.executions()] == refs * len(gateway.executions())
    assert [r["status"] for r in replies] == ["ok"], replies
    assert [line["orderRef"] for line in replies[0]["result"]["instruments"]] == refs
    assert [r.get("duplicate", False) for r in replies] == [False], "the only reply ever published says duplicate"


# -- 1. message attributes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param({"dryRun": "true"}, id="dryRun"),
        pytest.param({"expiresAt": "2000-01-01T00:00:00Z"}, id="expiresAt-past"),
        pytest.param({"maxAgeSeconds": "0.001"}, id="maxAgeSeconds"),
    ],
)
def test_an_envelope_field_sent_as_an_attribute_is_never_silently_ignored(
    consumer, bus: Bus, gateway, attributes: dict[str, str]
):
    """The consumer reads `intent` and `schedule` from the message attributes as well as the body (README,
    "Messages"; gcloud's `--attribute=intent=summary` is the documented way), so a sender reasonably writes the
    envelope's other fields the same way: `--attribute=dryRun=true` to try an allocation out, an `expiresAt` or
    `maxAgeSeconds` attribute to keep a late one from trading. What happened: those attributes are ignored without a
    word, and the allocation buys for real (an order at the broker), past its expiry too. A user expects the
    attribute honoured or one clear error reply (the body refuses an unknown field: `additionalProperties: false`),
    never an order the message said not to place.
    Root cause: consumer/envelope.py decode reads only intent, schedule, account and tradingMode from the
    attributes (and checks only those); every other attribute is dropped unseen."""
    message_id = bus.publish(allocation({"SPY": 0.1}), **attributes)
    replies = bus.replies_to(message_id)
    orders = [(o["orderRef"], o["action"], o["totalQuantity"]) for o in gateway.orders()]
    answered = [(r["status"], r["dryRun"], (r["error"] or {}).get("code")) for r in replies]
    assert orders == [], f"orders placed for a message with attributes {attributes}: {orders}; replies {answered}"
    assert answered == [("error", False, "unsupported_attribute")], answered


def test_a_schedule_attribute_the_body_contradicts_is_refused_not_run_under_the_bodys_slot(consumer, bus: Bus):
    """The body names one scheduled job and the `schedule` attribute another of the same intent (a message copied
    from one job into the other's, a hand-fired test): half-day-close-all's attribute, eod-close-all's body. What
    happens: the attribute is dropped without a word and the message runs as eod-close-all, taking that job's slot
    for the day (`schedule:eod-close-all:<day>`) with half-day-close-all's params; the genuine eod-close-all firing
    that afternoon is then refused `conflicting_request` and closes nothing. A user expects one clear error, as
    for an intent, account or tradingMode on which attribute and body disagree (`conflicting_intent`,
    `conflicting_account`, `conflicting_trading_mode`), and the real job to run.
    Root cause: consumer/envelope.py decode copies the attribute `schedule` into the body only when the body has
    none, and never compares the two."""
    copied = {"intent": "close-all", "schedule": "eod-close-all", "params": {"flatAtClose": True, "closingWithin": 600}}
    mixed = bus.replies_to(bus.publish(copied, schedule="half-day-close-all"))
    genuine = bus.replies_to(
        bus.publish({"intent": "close-all", "params": {"flatAtClose": True}}, schedule="eod-close-all")
    )
    assert [(r["status"], (r["error"] or {}).get("code")) for r in genuine] == [("ok", None)], genuine
    assert [(r["status"], r["error"]["code"]) for r in mixed] == [("error", "conflicting_schedule")], mixed


@pytest.mark.slow(seconds=30)
def test_a_message_with_many_attributes_can_still_be_dead_lettered(consumer_factory, bus: Bus, gateway):
    """A summary carrying 100 attributes (Pub/Sub's limit per message) that times out on every delivery attempt.
    What happened: on the last attempt the consumer republishes it to the dead-letter topic with the original 100
    attributes plus its five deadLetter* ones: 105. The emulator takes it; Pub/Sub refuses a message with more
    than 100 attributes ("Attributes per message: 100", https://cloud.google.com/pubsub/quotas#resource_limits;
    its ingestion docs: "when the number of attributes is larger than 100 ..."), so in the cloud the dead letter
    fails, the message is nacked on its last attempt ("could not dead-letter; nacked") and is never answered
    (no dead_lettered reply either). A user expects the dead letter to fit Pub/Sub's limits, as the reply's
    attributes are cut to fit (decision 48, `fitted`).
    Root cause: consumer/transport/publishing.py Publishing.dead_letter copies every original attribute and adds
    five; `fitted` bounds each value's bytes, not their count (nor a key's 256 bytes)."""
    consumer_factory(intent_timeout=1.0)
    gateway.set_latency(fixed=1.5)  # each answer takes longer than the intent may: every attempt times out
    try:
        extra = {f"tag{n:02d}": "x" for n in range(99)}
        message_id = bus.publish(b"{}", intent="summary", **extra)
        dead = bus.dead_letter(timeout=90)
        replies = bus.replies_to(message_id)
    finally:
        gateway.set_latency(fixed=0.0)
    assert [r["error"]["code"] for r in replies] == ["dead_lettered"], replies
    assert len(dead.attributes) <= 100, f"a dead letter with {len(dead.attributes)} attributes (Pub/Sub takes 100)"


@pytest.mark.slow(seconds=30)
def test_a_dead_lettered_timeout_says_what_timed_out(consumer_factory, bus: Bus, gateway):
    """A summary that times out on every attempt is dead-lettered with one reply. What happened: its message ends
    "last error: timeout: timed out: " with nothing after the colon, and the dead letter's deadLetterError is
    "timed out: ": asyncio.timeout raises a TimeoutError with no text. A user expects the reply to say what timed
    out (the intent's time limit, INTENT_TIMEOUT_SECONDS) or at least "no answer in time", which the code means to
    write. The same holds for a bare ConnectionError ("connection to the gateway lost: ").
    Root cause: consumer/errors.py as_transient: `f"timed out: {exc or 'no answer in time'}"` tests the exception
    object, which is always true, instead of `str(exc)`."""
    consumer_factory(intent_timeout=1.0)
    gateway.set_latency(fixed=1.5)  # each answer takes longer than the intent may: every attempt times out
    try:
        message_id = bus.publish({"intent": "summary"})
        dead = bus.dead_letter(timeout=90)
        (reply,) = bus.replies_to(message_id)
    finally:
        gateway.set_latency(fixed=0.0)
    assert reply["error"]["code"] == "dead_lettered"
    assert not dead.attributes["deadLetterError"].rstrip().endswith(":"), dead.attributes["deadLetterError"]
    assert not reply["error"]["message"].rstrip().endswith(":"), reply["error"]["message"]


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param({"Account": "DU999999"}, id="Account"),
        pytest.param({"trading_mode": "live"}, id="trading_mode"),
    ],
)
def test_a_routing_attribute_spelled_otherwise_is_refused_not_ignored(
    consumer, bus: Bus, gateway, attributes: dict[str, str]
):
    """An allocation sent with `--attribute=Account=DU999999` (or `trading_mode=live`): the sender addresses an
    account this deployment does not serve (or says the message is meant for live). Spelled `account` /
    `tradingMode`, the message is refused (`unknown_account`, a trading-mode mismatch) and nothing trades. Spelled
    otherwise, the attribute was dropped without a word and the allocation bought in this deployment's own account:
    in the cloud the subscription filters route on `attributes.account` exactly, so the message with `Account`
    reaches the default deployment, which trades the wrong account. Decision 73 says "an envelope field sent as an
    attribute, however spelled, is one error", and refuses `dry_run` for `dryRun`; a user expects the same for the
    four fields attributes do carry: one error, no order.
    Root cause: consumer/envelope.py:_refuse_body_fields matches the other spellings only of the fields NOT in
    ATTRIBUTE_FIELDS (`fields = {... if f not in ATTRIBUTE_FIELDS}`), and consumer/accounts.py:AccountDirectory.route
    and settle read `attributes.get("account")` / `get("tradingMode")` by their exact names: `Account`,
    `ACCOUNT`, `trading_mode`, `Trading-Mode`, `Schedule`, `Intent` pass unseen."""
    message_id = bus.publish(allocation({"SPY": 0.1}), **attributes)
    replies = bus.replies_to(message_id)
    orders = [(o["account"], o["action"], o["totalQuantity"]) for o in gateway.orders()]
    answered = [(r["status"], (r["error"] or {}).get("code"), r.get("account")) for r in replies]
    assert orders == [], f"an allocation with attributes {attributes} traded: {orders}; replies {answered}"
    assert [(status, code) for status, code, _ in answered] == [("error", "unsupported_attribute")], answered


# -- 3. every reply validates against its schema ---------------------------------------------------------------------


def reply_validator() -> Any:
    from jsonschema import Draft202012Validator, FormatChecker

    from consumer.data import SCHEMA_DIR

    schema = json.loads((SCHEMA_DIR / "reply.schema.json").read_text())
    return Draft202012Validator(schema, format_checker=FormatChecker())


MINIMAL_PARAMS: dict[str, dict[str, Any]] = {
    "allocation": allocation({"SPY": 0.05})["params"],
    "close-all": {"strategies": ["dummy"]},
    "collect-market-data": {"instruments": ["SPY"]},
}


@pytest.mark.slow(seconds=30)
@pytest.mark.parametrize(**TRADING_CLOCK)
def test_every_intents_replies_ok_and_error_validate_against_the_reply_schema(consumer, bus: Bus, gateway):
    """Each intent of consumer/intents/ with minimal valid params (ok), the same with a field its schema refuses
    (invalid_params), an expired trading intent (rejected), a re-publish (duplicate) and a message that is not JSON:
    every reply validates against schemas/reply.schema.json with the draft's formats checked (startedAt...), and
    its attributes repeat intent, status, requestId and messageId, which monitors filter on."""
    from consumer.intents import DECLARED

    sent: dict[str, str] = {}
    for name in DECLARED:
        params = MINIMAL_PARAMS.get(name, {})
        sent[bus.publish({"intent": name, "params": params, "idempotencyKey": f"schema-{name}"})] = f"{name}:ok"
        sent[bus.publish({"intent": name, "params": {**params, "noSuchField": 1}})] = f"{name}:invalid_params"
    sent[bus.publish(allocation({"SPY": 0.05}, expiresAt="2000-01-01T00:00:00Z"))] = "allocation:expired"
    sent[bus.publish({"intent": "summary", "params": {}, "idempotencyKey": "schema-summary"})] = "summary:duplicate"
    sent[bus.publish(b"not json", intent="summary")] = "summary:invalid_json"
    by_message = bus.replies_to_all(list(sent), timeout=180)
    validator = reply_validator()
    problems: dict[str, Any] = {}
    for message_id, what in sent.items():
        name, expected = what.split(":")
        replies = by_message[message_id]
        if len(replies) != 1:
            problems[what] = f"{len(replies)} replies"
            continue
        (reply,) = replies
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(reply)]
        (attributes,) = [a for a in bus.reply_attributes if a["messageId"] == message_id]
        shown = {k: attributes.get(k) for k in ("intent", "status", "requestId", "messageId")}
        if shown != {k: reply[k] or "" for k in shown}:
            errors.append(f"attributes {shown} disagree with the body")
        if expected == "ok" and reply["status"] != "ok":
            errors.append(f"status {reply['status']}: {reply['error']}")
        if expected == "duplicate" and reply.get("duplicate") is not True:
            errors.append("not marked duplicate")
        if expected not in {"ok", "duplicate"} and (reply["error"] or {}).get("code") != expected:
            errors.append(f"error {reply['error']}")
        if errors:
            problems[what] = errors
    assert problems == {}
