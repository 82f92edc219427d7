"""Exactly-once effects under at-least-once delivery (issue: idempotency, crash recovery, gateway restarts).

Each test states its invariant and checks it at the broker (orders by orderRef, positions) and in Firestore
(fills by execId, holdings), with the consumer as a separate process wherever a kill must be real.
"""

from __future__ import annotations

import collections
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import pubsub_v1
from ib_insync import LimitOrder, Stock

from consumer.errors import IntentError
from consumer.intents import builtin_intents
from consumer.intents.base import Intent
from consumer.process import STREAM_RESTART_SECONDS, StreamFailed
from tests.support import (
    ACK_DEADLINE_SECONDS,
    LONG_OUTAGE_SECONDS,
    QUIET,
    STANDBY,
    STREAM_RESTART_WAIT,
    TEST_ACCOUNT,
    Bus,
    ConsumerProcess,
    activity,
    allocation,
    another_intents_subscription,
    booked_totals,
    ensure_loop,
    holdings,
    mode_collection,
    mode_document,
    stock_positions,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("paper_config")]

SYMBOLS = ["SPY", "QQQ", "IWM", "TLT", "GLD"]
ALLOCATION = allocation(dict.fromkeys(SYMBOLS, 0.05))


def assert_each_leg_placed_once(gateway, project: str) -> None:
    """Invariant: one order per (request, leg) at the broker; the books agree with the broker, fill by fill."""
    refs = collections.Counter(o["orderRef"] for o in gateway.orders())
    assert refs, "no order reached the broker"
    assert all(n == 1 for n in refs.values()), f"an orderRef was placed more than once: {refs}"
    by_symbol = collections.Counter(o["symbol"] for o in gateway.orders())
    assert all(n == 1 for n in by_symbol.values()), f"an instrument got two orders: {by_symbol}"
    positions = {s: q for s, q in gateway.positions().items() if q}
    wait_for(lambda: booked_totals(project) == positions, what=f"books {booked_totals(project)} == broker {positions}")
    fills = mode_collection(project, "fills")
    assert sorted(f["execId"] for f in fills) == sorted(e["execId"] for e in gateway.executions())


def final_replies(bus: Bus, message_id: str) -> list[dict[str, Any]]:
    """Replies to a message that are not republished duplicates, as received so far (never waits long)."""
    bus.settle(quiet=0.2)
    return [r for r in bus.received if r["messageId"] == message_id and not r.get("duplicate")]


def the_final_reply(bus: Bus, message_id: str, timeout: float) -> dict[str, Any]:
    """Waits for the request's outcome, then checks for a while that no second outcome follows it."""
    wait_for(lambda: final_replies(bus, message_id), timeout=timeout, what=f"a reply to {message_id}")
    bus.settle()
    replies = final_replies(bus, message_id)
    assert len(replies) == 1, replies
    return replies[0]


def test_the_same_request_delivered_ten_times_trades_once(consumer, bus: Bus, gateway, project: str):
    body = {**ALLOCATION, "idempotencyKey": "rebalance-2026-11-26"}
    ids = [bus.publish(body) for _ in range(10)]
    replies = bus.wait_replies(10, timeout=120)
    assert sorted(r["messageId"] for r in replies) == sorted(ids)
    assert all(r["status"] == "ok" for r in replies), [r["error"] for r in replies if r["status"] != "ok"]
    assert sum(1 for r in replies if not r.get("duplicate")) == 1
    assert {r["requestId"] for r in replies} == {"rebalance-2026-11-26"}
    assert_each_leg_placed_once(gateway, project)
    assert len(gateway.orders()) == len(SYMBOLS)


def test_a_scheduled_job_fired_twice_in_one_slot_trades_once(consumer, bus: Bus, gateway, project: str):
    first = bus.publish(ALLOCATION, schedule="open-allocation")
    second = bus.publish(ALLOCATION, schedule="open-allocation")
    a, b = bus.reply_to(first), bus.reply_to(second)
    assert a["requestId"] == b["requestId"]
    assert a["requestId"].startswith("schedule:open-allocation:")
    assert sorted([bool(a.get("duplicate")), bool(b.get("duplicate"))]) == [False, True]
    assert_each_leg_placed_once(gateway, project)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("moment", ["before", "during", "after"])
def test_consumer_killed_around_order_placement_then_restarted(bus: Bus, gateway, project: str, tmp_path, moment):
    """SIGKILL at three points of an allocation; the redelivery after restart must complete it, placing each leg
    exactly once."""
    gateway.set_latency(fixed=0.15)  # stretch each phase so the kill lands inside it
    standby = another_intents_subscription(project, STANDBY)  # gets its own copy of every message from here on
    first = ConsumerProcess(project, gateway.port, tmp_path / "first.log")
    try:
        first.wait_ready()
        message_id = bus.publish(ALLOCATION)
        claims = mode_document(project).collection("requests")
        if moment == "before":
            wait_for(lambda: any(True for _ in claims.stream()), what="the request to be claimed")
            assert gateway.orders() == []
        elif moment == "during":
            wait_for(lambda: len(gateway.orders()) > 0, timeout=60, what="the first orders at the broker")
        else:
            wait_for(lambda: len(gateway.orders()) == len(SYMBOLS), timeout=60, what="every order at the broker")
        first.kill()
    finally:
        first.stop()
    placed_before_restart = len(gateway.orders())
    gateway.set_latency(fixed=0.0)

    second = ConsumerProcess(project, gateway.port, tmp_path / "second.log", INTENTS_SUBSCRIPTION=standby)
    try:
        second.wait_ready()
        reply = the_final_reply(bus, message_id, timeout=120)
        assert reply["status"] == "ok", reply
        assert len(gateway.orders()) == len(SYMBOLS)
        assert placed_before_restart <= len(SYMBOLS)
        assert_each_leg_placed_once(gateway, project)
        assert set(holdings(project)["dummy"]) == set(SYMBOLS)
    finally:
        second.stop()


@pytest.mark.timeout(300)
def test_gateway_dropping_mid_allocation_and_coming_back(consumer, bus: Bus, gateway, project: str):
    gateway.set_latency(fixed=0.15)
    message_id = bus.publish(ALLOCATION)
    wait_for(lambda: len(gateway.orders()) >= 2, timeout=60, what="orders in flight")
    gateway.restart(down_seconds=1.0)
    gateway.set_latency(fixed=0.0)
    reply = the_final_reply(bus, message_id, timeout=STREAM_RESTART_WAIT)
    assert reply["status"] == "ok", reply
    assert len(gateway.orders()) == len(SYMBOLS)
    assert_each_leg_placed_once(gateway, project)
    assert consumer.service.services.gateway.connections >= 2


@pytest.mark.timeout(300)
def test_gateway_dropping_while_prices_are_awaited_retries_the_allocation(consumer, bus: Bus, gateway, project: str):
    """A drop while a price snapshot is awaited fails the run, which is retried and places each leg once: never a
    strategy skipped for want of a price and answered ok. Two guards hold it: the snapshot read raises on the lost
    connection (test_snapshot_reads.py), and the next broker call finds the gateway away."""
    gateway.stall_request("reqMktData", 0)  # the first snapshot is never answered
    message_id = bus.publish(ALLOCATION)
    wait_for(lambda: "reqMktData" in [r for _, r in gateway.requests_received()], 60, "the price snapshots")
    assert gateway.orders() == []
    assert gateway.drop_connections() == 1
    reply = the_final_reply(bus, message_id, timeout=STREAM_RESTART_WAIT)
    assert reply["status"] == "ok", reply
    assert reply["result"]["strategies"]["dummy"]["status"] == "ok", reply["result"]["strategies"]
    assert len(gateway.orders()) == len(SYMBOLS)
    assert_each_leg_placed_once(gateway, project)


@pytest.mark.parametrize("gateway_scenario", [{"marketData": {"snapshotEndSeconds": 600}}])
def test_an_allocation_trades_on_its_snapshots_ticks_before_ib_ends_them(consumer, bus: Bus, gateway, project: str):
    """IB ends a snapshot seconds after its ticks (11 s; 600 here, so no host is slow enough to blur it): the orders
    go out sized on the ticks while every snapshot is still open, each leg once, its fills booked."""
    reply = bus.reply_to(bus.publish(ALLOCATION), timeout=60)
    assert reply["status"] == "ok", reply
    assert gateway.open_snapshots() == len(SYMBOLS)
    for symbol in SYMBOLS:
        assert reply["result"]["prices"][symbol] == gateway.call(lambda s=symbol: gateway.server.instruments[s]).price
    assert_each_leg_placed_once(gateway, project)
    assert {o["orderRef"] for o in gateway.orders()} == {i["orderRef"] for i in reply["result"]["instruments"]}


def test_an_allocation_without_market_data_places_nothing_says_why_and_alerts(
    consumer, bus: Bus, gateway, project: str
):
    """The login's user logged in elsewhere: IB refuses every quote with 10197. Nothing is sized without a price, the
    reply names IB's reason and asks for a person; once the other session ends, the next allocation trades."""
    gateway.competing_session(True)
    message_id = bus.publish(ALLOCATION)
    reply = the_final_reply(bus, message_id, timeout=60)
    assert reply["status"] == "ok", reply
    assert reply["alert"] is True
    dummy = reply["result"]["strategies"]["dummy"]
    assert dummy["status"] == "skipped"
    assert "IB 10197: No market data during competing live session" in dummy["reason"], dummy
    assert gateway.orders() == []
    assert mode_collection(project, "fills") == []

    gateway.competing_session(False)
    again = bus.publish({**ALLOCATION, "idempotencyKey": "after-the-other-session"})
    reply = the_final_reply(bus, again, timeout=60)
    assert reply["status"] == "ok", reply
    assert "alert" not in reply
    assert len(gateway.orders()) == len(SYMBOLS)
    assert_each_leg_placed_once(gateway, project)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("down_seconds", [3.0, LONG_OUTAGE_SECONDS])
def test_a_gateway_down_at_start_up_is_waited_for(consumer_factory, bus: Bus, gateway, down_seconds):
    """A short outage, and a daily restart's (LONG_OUTAGE_SECONDS: past the consumer's reconnect backoff cap): the
    consumer pulls nothing until it is connected, so the message waits in Pub/Sub and is answered once after."""
    gateway.refuse_connections(down_seconds)
    c = consumer_factory(wait_ready=False)  # its reconnect backoff is capped at RECONNECT_BACKOFF_MAX_SECONDS
    message_id = bus.publish({"intent": "ping"})
    c.wait_ready(timeout=down_seconds + 60)
    reply = bus.reply_to(message_id, timeout=60)
    assert reply["status"] == "ok"
    assert reply["result"]["connected"] is True
    assert len(bus.replies_to(message_id)) == 1


@pytest.mark.slow(seconds=60)
@pytest.mark.timeout(300)
def test_a_burst_of_two_thousand_mixed_messages_gets_one_reply_each(consumer, bus: Bus):
    """The emulator redelivers hundreds of already-acked messages under such a burst: each still gets one reply."""
    kinds: dict[str, tuple[bytes, str]] = {
        "ping": (b'{"intent": "ping"}', "ok"),
        "summary": (b'{"intent": "summary"}', "ok"),
        "malformed": (b'{"intent": ', "error"),
        "unknown": (b'{"intent": "fly"}', "error"),
        "binary": (b"\x00\xff\xfe", "error"),
    }
    order = [name for _ in range(400) for name in kinds]
    futures = [
        (name, bus.publisher.publish(bus.intents_topic, kinds[name][0])) for name in order
    ]  # published concurrently by the client's batching
    expected = {f.result(timeout=60): kinds[name][1] for name, f in futures}
    replies = bus.replies_to_all(list(expected), timeout=240, quiet=2 * QUIET)  # redeliveries trail a burst
    twice = {m: len(r) for m, r in replies.items() if len(r) != 1}
    assert not twice, f"{len(twice)} messages answered more than once"
    mismatched = [r[0] for m, r in replies.items() if r[0]["status"] != expected[m]]
    assert not mismatched, mismatched[:3]
    assert bus.reply_to(bus.publish({"intent": "ping"}))["status"] == "ok"


def test_a_stale_scheduled_allocation_is_rejected_not_traded(consumer_factory, bus: Bus, gateway):
    gateway.refuse_connections(3.0)  # the consumer is away, so the scheduled message waits in Pub/Sub
    message_id = bus.publish(ALLOCATION, schedule="open-allocation")
    consumer_factory(wait_ready=False, trading_max_age=2.0)
    reply = bus.reply_to(message_id, timeout=60)
    assert reply["status"] == "rejected"
    assert reply["error"]["code"] == "stale"
    assert gateway.orders() == []


def test_an_expired_intent_is_rejected(consumer, bus: Bus, gateway):
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    reply = bus.reply_to(bus.publish({**ALLOCATION, "expiresAt": past}))
    assert reply["status"] == "rejected"
    assert reply["error"]["code"] == "expired"
    assert gateway.orders() == []


def test_a_message_that_keeps_failing_is_dead_lettered_and_the_consumer_keeps_serving(
    consumer_factory, bus: Bus, project: str
):
    attempts: list[int] = []

    async def broken(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        attempts.append(ctx.request.delivery.delivery_attempt or 0)
        raise RuntimeError("a bug in a handler")

    intents = {**builtin_intents(), "ping": Intent(name="ping", handler=broken, description="always fails")}
    consumer_factory(intents=intents)
    message_id = bus.publish({"intent": "ping"})

    dead = bus.dead_letter(timeout=90)
    assert json.loads(dead.data) == {"intent": "ping"}
    assert dead.attributes["deadLetterMessageId"] == message_id
    assert dead.attributes["deadLetterCode"] == "internal"
    assert int(dead.attributes["deadLetterAttempts"]) == 5
    reply = bus.reply_to(message_id)
    assert reply["status"] == "error"
    assert reply["error"]["code"] == "dead_lettered"
    assert attempts == [1, 2, 3, 4, 5]
    assert bus.reply_to(bus.publish({"intent": "summary"}))["status"] == "ok"


def test_an_outcome_that_can_never_be_stored_is_answered_once_and_dead_lettered(
    consumer_factory, bus: Bus, project: str
):
    """Issue 13 (6): settle stores before it publishes, so a store failure is nacked with no reply, and on the last
    attempt the message gets its one reply and goes to the dead-letter topic. Firestore refuses a map key like
    `__x__` in the activity record's error every time: the store fails on every attempt, not by chance. (A result
    cannot do that since replies are stored as JSON text, decision 19; an error is stored as a map.) The last
    attempt stores the reply with the claim alone before it goes out: the claim was left running, and the
    stranded-request sweep answered the message a second time (`interrupted`, recovered)."""
    attempts: list[int] = []

    async def unstorable(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        attempts.append(ctx.request.delivery.delivery_attempt or 0)
        raise IntentError("unstorable", "its details use a name Firestore reserves", {"__x__": "reserved"})

    intents = {**builtin_intents(), "ping": Intent(name="ping", handler=unstorable, description="unstorable")}
    consumer_factory(intents=intents, stranded_after=1.0)  # the sweep's shortest wait
    message_id = bus.publish({"intent": "ping"})

    dead = bus.dead_letter(timeout=90)
    assert dead.attributes["deadLetterMessageId"] == message_id
    assert dead.attributes["deadLetterCode"] == "store_failed"
    replies = bus.replies_to(message_id)
    assert len(replies) == 1, replies  # none for the four attempts that were nacked
    assert replies[0]["error"] == {
        "code": "unstorable",
        "message": "its details use a name Firestore reserves",
        "details": {"__x__": "reserved"},
    }
    assert attempts == [1, 2, 3, 4, 5]
    (claim,) = wait_for(
        lambda: [c for c in mode_collection(project, "requests") if c["state"] == "done"], what="the claim finished"
    )
    assert json.loads(claim["replyJson"])["error"]["code"] == "unstorable"  # what the sweep leaves alone
    assert bus.reply_to(bus.publish({"intent": "summary"}))["status"] == "ok"
    assert [r["error"]["code"] for r in bus.replies_to(message_id)] == ["unstorable"]


def test_an_error_whose_details_nest_arrays_is_stored_on_the_first_attempt(consumer_factory, bus: Bus, project: str):
    """Firestore refuses an array directly inside an array. The activity record stored an error's details as they
    came, so an error with a table in its details failed every store: nacked four times, then dead-lettered."""
    attempts: list[int] = []

    async def tabular(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        attempts.append(ctx.request.delivery.delivery_attempt or 0)
        raise IntentError("tabular", "details with rows", {"rows": [[1, 2], [3, 4]]})

    intents = {**builtin_intents(), "ping": Intent(name="ping", handler=tabular, description="tabular")}
    consumer_factory(intents=intents)
    message_id = bus.publish({"intent": "ping"})
    replies = bus.replies_to(message_id)
    assert [r["error"] for r in replies] == [{"code": "tabular", "message": "details with rows",
                                              "details": {"rows": [[1, 2], [3, 4]]}}]  # fmt: skip
    (record,) = wait_for(lambda: activity(project, messageId=message_id), what="the activity record")
    assert record["error"]["details"] == {"rows": ["[1, 2]", "[3, 4]"]}
    assert attempts == [1]


def test_a_client_id_in_use_is_reported_and_retried_not_swapped(consumer_factory, bus: Bus, gateway, caplog):
    """Open orders belong to a client id: the consumer waits for its own id rather than taking another."""
    from ib_insync import IB

    ensure_loop()  # an async test before this one may have left this thread without an event loop
    squatter = IB()
    squatter.connect("127.0.0.1", gateway.port, clientId=1, timeout=10)
    try:
        c = consumer_factory(wait_ready=False)
        wait_for(
            lambda: any("client id 1 is already in use" in r.getMessage() for r in caplog.records),
            timeout=30,
            what="the consumer to say its client id is taken",
        )
        assert c.service.status.gateway != "connected"
    finally:
        squatter.disconnect()
    c.wait_ready(timeout=60)
    assert gateway.connected_client_ids() == [1]
    assert c.service.services.gateway.connections == 1  # it waited for its own id, and got it
    assert bus.reply_to(bus.publish({"intent": "ping"}))["result"]["clientId"] == 1


@pytest.mark.slow(seconds=15)
@pytest.mark.timeout(300)
def test_a_half_open_connection_is_detected_by_the_heartbeat(consumer, bus: Bus, gateway):
    """A frozen gateway sends no error and keeps the socket: two missed heartbeats count as a disconnect."""
    gateway.freeze(True)
    try:
        wait_for(lambda: consumer.service.status.gateway != "connected", timeout=30, what="the heartbeat to notice")
        # Requests are held until the gateway is back: intake closes on the control thread, a moment after.
        wait_for(lambda: consumer.service.status.accepting is False, timeout=10, what="intake to close")
        held = bus.publish({"intent": "summary"})
        away = bus.reply_to(bus.publish({"intent": "ping"}), timeout=STREAM_RESTART_WAIT)
        assert away["status"] == "ok"
        assert away["result"]["connected"] is False  # ping is not held: it says the gateway is away
        assert all(r["messageId"] != held for r in bus.received)  # the summary waits for the gateway
    finally:
        gateway.freeze(False)
    consumer.wait_ready(timeout=60)
    assert consumer.service.services.gateway.connections >= 2
    assert bus.reply_to(held, timeout=STREAM_RESTART_WAIT)["status"] == "ok"  # held, then answered once back
    assert bus.reply_to(bus.publish({"intent": "ping"}), timeout=STREAM_RESTART_WAIT)["status"] == "ok"


@pytest.mark.slow(seconds=15)
@pytest.mark.timeout(300)
def test_a_request_held_for_the_gateway_on_its_last_attempt_is_answered_when_the_consumer_stops(
    consumer_factory, bus: Bus, gateway
):
    """Held while the gateway is away, a request is nacked at shutdown to be redelivered; on its last delivery
    attempt no redelivery comes (the emulator drops it, the cloud dead-letters it), and it went unanswered. It is
    run instead: the gateway's absence is its one error reply, and the message is dead-lettered."""
    consumer = consumer_factory(max_delivery_attempts=1)  # every delivery is the last
    gateway.freeze(True)
    try:
        wait_for(lambda: consumer.service.status.gateway != "connected", timeout=30, what="the heartbeat to notice")
        held = bus.publish({"intent": "summary"})
        away = bus.reply_to(bus.publish({"intent": "ping"}), timeout=STREAM_RESTART_WAIT)
        assert away["result"]["connected"] is False
        assert all(r["messageId"] != held for r in bus.received)  # held, not answered
        consumer.stop()
    finally:
        gateway.freeze(False)
    reply = bus.reply_to(held, timeout=30)
    assert (reply["status"], reply["error"]["code"]) == ("error", "dead_lettered"), reply
    assert "gateway_unavailable" in reply["error"]["message"], reply
    dead = bus.dead_letter()
    assert (dead.attributes["deadLetterMessageId"], dead.attributes["deadLetterCode"]) == (held, "gateway_unavailable")
    bus.settle()
    assert [r["messageId"] for r in bus.received].count(held) == 1


@pytest.mark.slow(seconds=10)
def test_a_stream_reopened_after_a_failure_keeps_intake_held_while_the_gateway_is_down(consumer, bus: Bus, gateway):
    """After a stream failure the stream is reopened a pause later. That was done by posting a made-up "gateway
    connected": when the gateway dropped within the pause (one network fault breaks both), intake reopened and the
    consumer said it was ready, against a gateway that was down."""
    gateway.refuse_connections(STREAM_RESTART_SECONDS + 8)
    consumer.service._events.put(StreamFailed(RuntimeError("the stream broke")))  # what the subscriber posts
    gateway.drop_connections()
    wait_for(lambda: consumer.service.status.gateway != "connected", what="the consumer to see the gateway drop")
    wait_for(lambda: consumer.service.status.subscribed, what="the stream reopened after its pause")
    status = consumer.service.status
    assert (status.gateway, status.accepting) != ("connected", True), status
    consumer.wait_ready(timeout=60)  # once the gateway is back, intake opens
    assert bus.reply_to(bus.publish({"intent": "summary"}), timeout=STREAM_RESTART_WAIT)["status"] == "ok"


# Account values reach a summary subscription at once (no 3-minute interval), so a change is seen immediately.
SUMMARY_AT_ONCE = {"accountUpdates": {"intervalMs": 0}}


def _summary_cash(bus: Bus) -> float:
    reply = bus.reply_to(bus.publish({"intent": "summary"}))
    assert reply["status"] == "ok", reply
    return float(reply["result"]["accountValues"][TEST_ACCOUNT]["TotalCashValue"]["USD"])


@pytest.mark.parametrize("gateway_scenario", [SUMMARY_AT_ONCE])
@pytest.mark.parametrize("how", ["1101", "dropped"])
def test_the_account_summary_follows_the_account_after_any_reconnect(consumer, bus: Bus, gateway, how: str):
    """IB's 1101 (connectivity restored, data lost) makes the consumer hang up and connect again. ib_insync resets
    its session state only when the gateway drops the socket, not on its own disconnect: after a 1101 the account
    summary was never subscribed again, and every summary answered the values of the moment of the loss."""
    before = _summary_cash(bus)
    asked = [n for _, n in gateway.requests_received()].count("reqAccountSummary")
    gateway.send_error(1101) if how == "1101" else gateway.drop_connections()
    wait_for(lambda: consumer.service.services.gateway.connections == 2, what="the consumer to connect again")
    wait_for(lambda: consumer.service.status.accepting, what="intake open again")
    gateway.set_cash("USD", before + 12_345.0)
    wait_for(lambda: _summary_cash(bus) != before, what="the summary to show the cash IB reports now")
    assert [n for _, n in gateway.requests_received()].count("reqAccountSummary") == asked + 1


@pytest.mark.parametrize("gateway_scenario", [{"connectCost": {"perCompletedOrderMs": 2500}}])
@pytest.mark.slow(seconds=10)
def test_a_gateway_whose_completed_orders_take_longer_than_the_connect_timeout_is_connected_to_eventually(
    consumer_factory, manual, gateway
):
    """IB lists a day's completed orders in time growing with them (ibsim's paper model: 20 ms each; ib_insync #224,
    #355), and IB_CONNECT_TIMEOUT (10 s) bounds each start-up download: after a day of 500 and more, every attempt
    missed the download by the same margin, with the same timeout, and the consumer never connected again that
    day. Scaled down: one completed order listed in 2.5 s, a 2 s timeout; the attempts double it until it fits."""
    spy = manual.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    trade = manual.placeOrder(spy, LimitOrder("BUY", 1, 1.00))
    wait_for(lambda: [o["status"] for o in gateway.orders()] == ["Submitted"], what="the order working")
    manual.cancelOrder(trade.order)
    wait_for(lambda: [o["status"] for o in gateway.orders()] == ["Cancelled"], what="one completed order")

    c = consumer_factory(ib_connect_timeout=2.0, wait_ready=False)
    wait_for(lambda: c.service.status.accepting, timeout=40, what="the consumer to connect")
    assert c.service.services.gateway.connections == 1


# Past the ack deadline by more than a redelivery takes, so a lost lease would show as a second attempt.
LONG_INTENT_SECONDS = ACK_DEADLINE_SECONDS + 2


@pytest.mark.slow(seconds=14)
def test_an_intent_longer_than_the_ack_deadline_keeps_its_lease(consumer_factory, bus: Bus):
    """An intent that runs past the subscription's ack deadline must not be redelivered meanwhile."""
    import asyncio

    attempts: list[int] = []

    async def slow(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        attempts.append(ctx.request.delivery.delivery_attempt or 0)
        await asyncio.sleep(LONG_INTENT_SECONDS)  # a long-running intent, not a wait for broker state
        return {"slept": LONG_INTENT_SECONDS}

    consumer_factory(intents={**builtin_intents(), "ping": Intent(name="ping", handler=slow, description="slow")})
    message_id = bus.publish({"intent": "ping"})
    bus.reply_to(message_id, timeout=60)
    replies = bus.replies_to(message_id)
    assert [r["status"] for r in replies] == ["ok"]
    assert attempts == [1]


@pytest.mark.timeout(300)
def test_fills_made_while_the_consumer_was_down_are_booked_on_reconnect(consumer_factory, bus: Bus, gateway, project):
    gateway.hold_fills(True)
    first = consumer_factory(order_timeout=1.0)
    reply = bus.reply_to(bus.publish({**ALLOCATION, "params": {**ALLOCATION["params"], "strategyParams": {
        "dummy": {"weights": {"TLT": 0.05}}}}}))  # fmt: skip
    tlt = reply["result"]["instruments"][0]
    assert tlt["outcome"] == "working"
    first.stop()

    gateway.hold_fills(False)  # the order fills while no consumer is connected
    filled = wait_for(lambda: stock_positions(gateway).get("TLT"), what="the fill at the broker")
    assert holdings(project) == {}

    # its sweep after connecting books what it missed (on a subscription of its own: see another_intents_subscription)
    consumer_factory(intents_subscription=another_intents_subscription(project, "intents-consumer-restarted"))
    wait_for(lambda: holdings(project) == {"dummy": {"TLT": filled}}, what="the missed fill booked to dummy")
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the order closed")
    again = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert again["result"]["fillsApplied"] == []
    assert booked_totals(project) == stock_positions(gateway)


@pytest.mark.parametrize("restored", [1102, 1101], ids=["data-maintained", "data-lost"])
def test_a_fill_that_arrives_while_the_gateway_has_lost_ib_is_booked_to_its_strategy(
    consumer_factory, bus: Bus, gateway, project, restored: int
):
    """IB Gateway keeps its socket to us while it loses IB (1100) and can still pass on executions and order
    statuses (LEAN's IB brokerage lost such fills: QuantConnect/Lean.Brokerages.InteractiveBrokers #249). The fill
    is booked by execId to the strategy whose order it was, and the order closed, once the gateway is back."""
    gateway.hold_fills(True)
    consumer_factory(order_timeout=1.0)
    reply = bus.reply_to(bus.publish(allocation({"TLT": 0.05})))
    (tlt,) = reply["result"]["instruments"]
    assert tlt["outcome"] == "working"

    gateway.send_error(1100)
    wait_for(
        lambda: bus.reply_to(bus.publish({"intent": "ping"}))["result"]["state"] == "degraded",
        what="the consumer to hear that the gateway lost IB",
    )
    gateway.hold_fills(False)  # the order fills while the gateway reports IB lost
    executions = wait_for(
        lambda: {e["execId"] for e in gateway.executions() if e["orderRef"] == tlt["orderRef"]}, what="the fill"
    )
    gateway.send_error(restored)

    wait_for(lambda: executions <= {f["execId"] for f in mode_collection(project, "fills")}, what="booked by execId")
    wait_for(lambda: holdings(project) == {"dummy": {"TLT": tlt["target"]}}, what="booked to dummy, not unallocated")
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the order closed")
    (closed,) = [o for o in mode_collection(project, "orders") if o["orderRef"] == tlt["orderRef"]]
    assert (closed["state"], closed["filled"]) == ("Filled", tlt["target"])
    assert booked_totals(project) == stock_positions(gateway)


def test_params_firestore_cannot_encode_are_left_out_of_the_activity_record_on_the_first_attempt(
    consumer_factory, bus: Bus, project: str
):
    """Firestore's client refuses an integer beyond 64 bits with ValueError while the batch is built, not with
    InvalidArgument at commit, the one refusal the activity record fell back from (storing it without its params):
    every attempt failed to store, ran the intent again, and the fifth was dead-lettered. Decoding refuses such a
    number now; a handler that leaves one in its params stands for any other value the client cannot encode."""
    attempts: list[int] = []

    async def widening(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        attempts.append(ctx.request.delivery.delivery_attempt or 0)
        params["beyond"] = 2**64
        return {"done": True}

    intents = {**builtin_intents(), "ping": Intent(name="ping", handler=widening, description="widens its params")}
    consumer_factory(intents=intents)
    message_id = bus.publish({"intent": "ping"})
    replies = bus.replies_to(message_id)
    assert [(r["status"], r["result"]) for r in replies] == [("ok", {"done": True})]
    (record,) = wait_for(lambda: activity(project, messageId=message_id), what="the activity record")
    assert (record["status"], record["params"]) == ("ok", None)
    assert attempts == [1]


@pytest.mark.timeout(180)
def test_a_reply_no_attempt_could_publish_is_published_once_by_the_sweep(consumer_factory, bus: Bus, project: str):
    """Decision 39. Each attempt stored the reply, then failed to publish it (here: the reply topic does not exist
    yet) and nacked, for the redelivery to answer from the stored reply. The last attempt nacked too, and there is no
    redelivery after it (the emulator drops the message; the cloud dead-letters it unanswered): the reply was never
    sent. Now the last attempt marks it pending and acks; the sweep publishes it once Pub/Sub takes it."""
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(project, "intent-replies-later")
    consumer_factory(reply_topic="intent-replies-later", stranded_after=1.0, claim_lease=5.0)
    message_id = bus.publish({"intent": "summary"})
    claim = mode_document(project).collection("requests").document(hashlib.sha256(message_id.encode()).hexdigest())
    wait_for(lambda: (claim.get().to_dict() or {}).get("replyPending") is True, timeout=90,
             what="the last attempt to leave the reply to the sweep")  # fmt: skip

    publisher.create_topic(name=topic)  # within the claim lease the sweep waits before it publishes
    with pubsub_v1.SubscriberClient() as subscriber:
        replies = the_replies_the_sweep_publishes(subscriber, project, topic)
    assert [r["messageId"] for r in replies] == [message_id]  # once, and no second publish a claim lease later
    assert (replies[0]["status"], replies[0].get("recovered")) == ("ok", None)
    assert (claim.get().to_dict() or {}).get("replyPending") is False
    assert [a["deliveryAttempt"] for a in activity(project, messageId=message_id)] == [1]  # run once


def the_replies_the_sweep_publishes(subscriber: Any, project: str, topic: str) -> list[dict[str, Any]]:
    """Pulls from a new subscription to `topic` until a reply comes, then for another claim lease and more."""
    monitor = subscriber.create_subscription(
        name=subscriber.subscription_path(project, "intent-replies-later-monitor"), topic=topic
    ).name
    replies: list[dict[str, Any]] = []

    def pull() -> list[dict[str, Any]]:
        response = subscriber.pull(subscription=monitor, max_messages=10, timeout=5)
        if response.received_messages:
            ack_ids = [m.ack_id for m in response.received_messages]
            subscriber.acknowledge(subscription=monitor, ack_ids=ack_ids)
        replies.extend(json.loads(m.message.data) for m in response.received_messages)
        return replies

    wait_for(pull, timeout=60, what="the reply published by the sweep")
    deadline = datetime.now(UTC) + timedelta(seconds=QUIET + 6)
    while datetime.now(UTC) < deadline:
        pull()
    return replies


@pytest.mark.slow(seconds=30)
def test_a_request_ib_never_answers_is_asked_again_by_the_redelivery(consumer_factory, bus: Bus, gateway, project):
    """IB Gateway sometimes never answers a request (docs/ibsim.md: "a start-up request never answered", ib_insync
    #355, #224; a list refused in read-only mode never ends, decision 26). The allocation waiting on IB's working
    orders times out and is redelivered; the redelivery must ask IB again, which answers it at once here (the
    stall is for one request only). SharedRequests made every later caller wait for the request in flight, which
    never ended: no attempt asked IB again until the connection was reset, and the allocation was dead-lettered
    with nothing bought (every allocation, risk-check, eod-check and cash-balancer of that connection the same).
    A shared request now fails its callers after the order-lookup timeout, and the next caller asks afresh."""
    consumer_factory(intent_timeout=4.0, order_timeout=10.0, order_lookup_timeout=5.0)
    since = len(gateway.requests_received())
    gateway.stall_request("reqAllOpenOrders", 0)  # the next one is never answered; every later one is

    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})), timeout=90)
    asked = [n for c, n in gateway.requests_received()[since:] if c == 1 and n == "reqAllOpenOrders"]
    assert reply["status"] == "ok", (
        f"one unanswered reqAllOpenOrders, and over every delivery attempt the consumer sent {len(asked)} "
        f"reqAllOpenOrders in all; gateway connected throughout; reply: {reply}"
    )
    (line,) = reply["result"]["instruments"]
    assert [o["orderRef"] for o in gateway.orders()] == [line["orderRef"]]  # bought once
    wait_for(
        lambda: {f["execId"] for f in mode_collection(project, "fills")} == {e["execId"] for e in gateway.executions()},
        what="the fill booked by execId",
    )
