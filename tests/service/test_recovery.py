"""A consumer killed mid-request whose message never comes back: the sweep answers it from the broker's record."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket

import pytest
from google.cloud import pubsub_v1
from google.protobuf import timestamp_pb2

from tests.support import (
    STANDBY,
    TEST_ACCOUNT,
    Bus,
    ConsumerProcess,
    allocation,
    another_intents_subscription,
    holdings,
    mode_collection,
    mode_document,
    wait_for,
    write_config,
)

SYMBOLS = ["SPY", "TLT"]
ALLOCATION = allocation(dict.fromkeys(SYMBOLS, 0.05))


def lose_every_pending_message(project: str) -> None:
    """What a lost redelivery looks like: the subscription forgets its messages (seek to a time after them)."""
    subscriber = pubsub_v1.SubscriberClient()
    try:
        later = timestamp_pb2.Timestamp()
        later.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
        subscriber.seek(
            request={"subscription": subscriber.subscription_path(project, "intents-consumer"), "time": later}
        )
    finally:
        subscriber.close()


def kill_while_working(bus: Bus, gateway, project: str, tmp_path) -> str:
    """An allocation whose consumer is killed once both its orders are at the broker, working (fills held): the
    message id."""
    write_config(project)
    gateway.hold_fills(True)  # the orders are accepted and wait, so the kill lands while the intent waits on them
    first = ConsumerProcess(project, gateway.port, tmp_path / "first.log", ORDER_TIMEOUT_SECONDS="120")
    try:
        first.wait_ready()
        message_id = bus.publish(ALLOCATION)
        wait_for(lambda: len(gateway.orders()) == len(SYMBOLS), timeout=60, what="both orders at the broker")
        first.kill()
    finally:
        first.stop()
    return message_id


def strand_an_allocation(bus: Bus, gateway, project: str, tmp_path, fill: bool = True) -> tuple[str, list[str]]:
    """An allocation whose consumer is killed while its orders work, its message lost, its orders then filled
    while no consumer runs (unless not `fill`): (message id, orderRefs)."""
    message_id = kill_while_working(bus, gateway, project, tmp_path)
    lose_every_pending_message(project)
    refs = sorted(o["orderRef"] for o in gateway.orders())
    if fill:
        gateway.hold_fills(False)  # the broker fills them while no consumer is running
        wait_for(lambda: all(o["status"] == "Filled" for o in gateway.orders()), what="the fills at the broker")
    return message_id, refs


@pytest.mark.timeout(240)
def test_a_request_stranded_by_a_kill_is_answered_once_with_its_orders_booked(
    consumer_factory, bus: Bus, gateway, project: str, tmp_path
):
    message_id, refs = strand_an_allocation(bus, gateway, project, tmp_path)
    consumer_factory(stranded_after=2.0)
    reply = bus.reply_to(message_id, timeout=60)
    bus.settle()
    assert [r["messageId"] for r in bus.received].count(message_id) == 1
    assert reply["recovered"] is True
    assert (reply["status"], reply["error"]["code"]) == ("error", "interrupted")
    orders = reply["error"]["details"]["orders"]
    assert [o["orderRef"] for o in orders] == refs
    assert {o["outcome"] for o in orders} == {"filled"}
    # booked once each, by execId, and nothing placed again
    assert sorted(o["orderRef"] for o in gateway.orders()) == refs
    fills = mode_collection(project, "fills")
    assert sorted(f["execId"] for f in fills) == sorted(e["execId"] for e in gateway.executions())
    assert holdings(project) == {"dummy": {s: q for s, q in gateway.positions().items() if s in SYMBOLS}}
    assert mode_collection(project, "openOrders") == []
    (claim,) = [d.to_dict() for d in mode_document(project)
                .collection("requests").stream()]  # fmt: skip
    assert (claim["state"], claim["replyPending"]) == ("done", False)  # stored pending, then published
    assert json.loads(claim["replyJson"])["recovered"] is True


@pytest.mark.timeout(240)
def test_a_stranded_request_with_orders_waits_for_a_writable_gateway_and_is_then_answered_once(
    consumer_factory, bus: Bus, gateway, project: str, tmp_path, caplog
):
    """A read-only gateway refuses the order lists a stranded request's working orders are resolved from: the sweep
    leaves the claim alone (it used to take it over, fail, and hold it for a lease each time) until the gateway is
    writable, then answers it once; the orders' fills are booked by execId when they come."""
    message_id, refs = strand_an_allocation(bus, gateway, project, tmp_path, fill=False)
    gateway.read_only_api(True)
    consumer_factory(stranded_after=2.0)
    wait_for(lambda: "waits for a writable gateway" in caplog.text, what="the sweep to leave the claim alone")
    (claim,) = [d.to_dict() for d in mode_document(project).collection("requests").stream()]
    assert (claim["state"], claim.get("recovering")) == ("running", None)
    assert message_id not in {r["messageId"] for r in bus.received}

    gateway.read_only_api(False)
    gateway.restart()  # the consumer reconnects and finds the API writable
    reply = bus.reply_to(message_id, timeout=60)
    assert (reply["recovered"], reply["error"]["code"]) == (True, "interrupted")
    assert [(o["orderRef"], o["outcome"]) for o in reply["error"]["details"]["orders"]] == [
        (r, "working") for r in refs
    ]
    assert sorted(o["orderRef"] for o in gateway.orders()) == refs
    gateway.hold_fills(False)
    wait_for(lambda: sorted(f["execId"] for f in mode_collection(project, "fills"))
             == sorted(e["execId"] for e in gateway.executions()), what="each fill booked once")  # fmt: skip
    bus.settle()
    assert [r["messageId"] for r in bus.received].count(message_id) == 1


def test_a_consumer_stopped_as_a_fill_arrives_closes_cleanly_and_the_next_one_books_the_fill_once(
    consumer_factory, bus: Bus, gateway, project: str, caplog
):
    """The stop cancels the fill's booking inside its Firestore transaction (most runs), which used to fail with
    the rollback's own error and swallow the cancellation: the bookkeeper went on, and the shutdown waited out its
    close timeout without closing the gateway or the store."""
    write_config(project)
    gateway.hold_fills(True)
    first = consumer_factory(order_timeout=1.0)
    (spy,) = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))["result"]["instruments"]
    assert spy["outcome"] == "working", spy

    gateway.hold_fills(False)  # filled at once, in one execution, reported to the consumer as it stops
    first.stop()
    assert not [r for r in caplog.records if "timed out" in r.getMessage()]
    assert [r for r in caplog.records if "consumer stopped" in r.getMessage()]

    (execution,) = [e for e in gateway.executions() if e["orderRef"] == spy["orderRef"]]
    caplog.clear()
    consumer_factory()  # its sweep after connect books what the first one did not
    wait_for(lambda: [f["execId"] for f in mode_collection(project, "fills")] == [execution["execId"]],
             what="the execution booked once, by execId")  # fmt: skip
    assert holdings(project) == {"dummy": {"SPY": spy["order"]}}
    assert gateway.positions()["SPY"] == spy["order"]
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the order closed in the books")
    # The commission report the gateway replays at connect is the sweep's to book, not a failed live booking.
    assert not [r for r in caplog.records if "booking failed" in r.getMessage()]


def test_a_stranded_claim_dated_ahead_of_this_hosts_clock_is_answered_once(consumer_factory, bus: Bus, project: str):
    """The sweep's durationMs runs from the claim's createdAt, written by the process that died, perhaps on a host
    whose clock ran ahead of this one's: the duration was negative, the reply schema (minimum 0) refused the reply,
    and the claim, finished just before, was never answered."""
    now = dt.datetime.now(dt.UTC)
    key = hashlib.sha256(b"ahead").hexdigest()  # consumer.store.layout: a claim's document id
    mode_document(project).collection("requests").document(key).set(
        {
            "requestId": "ahead",
            "intent": "summary",
            "fingerprint": "0" * 64,
            "dryRun": False,
            "messageIds": ["message-ahead"],
            "state": "running",
            "owner": "another-host:1",
            "leaseUntil": now - dt.timedelta(minutes=1),
            "runs": 1,
            "createdAt": now + dt.timedelta(minutes=10),
            "updatedAt": now,
        }
    )
    consumer_factory(stranded_after=1.0)
    reply = bus.reply_to("message-ahead", timeout=60)
    assert (reply["recovered"], reply["error"]["code"], reply["durationMs"]) == (True, "interrupted", 0)
    bus.settle()
    assert [r["messageId"] for r in bus.received].count("message-ahead") == 1


def test_a_recovered_reply_stored_by_a_sweeper_killed_before_it_published_goes_out_once(
    consumer_factory, bus: Bus, project: str
):
    """Decision 39. The sweep stores its reply before it publishes it, and no redelivery will ask for it again: a
    sweeper killed (or a publish failing) between the two left the claim done and the request never answered.
    The reply is stored `replyPending`, and a later sweep publishes what is still pending a claim lease on."""
    now = dt.datetime.now(dt.UTC)
    reply = {
        "requestId": "pending",
        "messageId": "message-pending",
        "idempotencyKey": None,
        "intent": "summary",
        "status": "error",
        "result": None,
        "error": {"code": "interrupted", "message": "stopped before it finished", "details": {"orders": []}},
        "tradingMode": "paper",
        "account": TEST_ACCOUNT,
        "dryRun": False,
        "schedule": None,
        "startedAt": (now - dt.timedelta(minutes=3)).isoformat(),
        "finishedAt": (now - dt.timedelta(minutes=2)).isoformat(),
        "durationMs": 60000.0,
        "recovered": True,
    }
    claims = mode_document(project).collection("requests")
    stored = {
        "requestId": "pending",
        "intent": "summary",
        "fingerprint": "0" * 64,
        "dryRun": False,
        "messageIds": ["message-pending"],
        "state": "done",
        "owner": "a-killed-sweeper:1",
        "leaseUntil": None,
        "runs": 1,
        "replyJson": json.dumps(reply),
        "replyPending": True,
        "createdAt": now - dt.timedelta(minutes=3),
        "updatedAt": now - dt.timedelta(minutes=2),
    }
    claims.document(hashlib.sha256(b"pending").hexdigest()).set(stored)
    # One whose sweeper may still be publishing it (stored just now) is left to that sweeper for a claim lease.
    claims.document(hashlib.sha256(b"just-now").hexdigest()).set(
        {**stored, "requestId": "just-now", "messageIds": ["message-just-now"], "updatedAt": now,
         "replyJson": json.dumps({**reply, "requestId": "just-now", "messageId": "message-just-now"})}
    )  # fmt: skip
    consumer_factory(stranded_after=1.0, claim_lease=30.0)

    assert bus.reply_to("message-pending", timeout=60) == reply
    wait_for(lambda: claims.document(hashlib.sha256(b"pending").hexdigest()).get().get("replyPending") is False,
             what="the reply marked published")  # fmt: skip
    owner = claims.document(hashlib.sha256(b"pending").hexdigest()).get().get("replyOwner")
    assert owner.startswith(f"{socket.gethostname()}:{os.getpid()}:")  # this process's consumer took it
    bus.settle()
    assert [r["messageId"] for r in bus.received] == ["message-pending"]  # once, and not the one just stored
    assert claims.document(hashlib.sha256(b"just-now").hexdigest()).get().get("replyPending") is True


@pytest.mark.timeout(240)
def test_a_sweep_whose_claim_is_taken_over_while_it_resolves_leaves_the_one_reply_to_the_new_owner(
    consumer_factory, bus: Bus, gateway, project: str, tmp_path
):
    """Decision 39. The sweep adopts a stranded claim and asks IB for its orders, which can take longer than a
    claim lease; a late redelivery may take the claim over meanwhile. The sweep's renewals and reply must then be
    refused like any run's: it used to key its last write by the claim's document id, so its writes went out
    unconditioned and it answered over the new owner's claim."""
    message_id, refs = strand_an_allocation(bus, gateway, project, tmp_path, fill=False)
    consumer_factory(stranded_after=2.0)
    # The sweep's order lookup, once it adopts the claim: long enough for the takeover below to land while it waits
    # (at 4 s a loaded machine polled the adoption late, the sweep had finished, and the takeover overwrote a done
    # claim's owner).
    gateway.stall_request("reqCompletedOrders", 8.0)
    (snapshot,) = mode_document(project).collection("requests").get()
    claim = snapshot.reference
    here = f"{socket.gethostname()}:{os.getpid()}:"
    wait_for(lambda: str((claim.get().to_dict() or {}).get("owner")).startswith(here), timeout=90,
             what="the sweep to adopt the claim")  # fmt: skip
    assert (claim.get().to_dict() or {}).get("state") == "running"  # the takeover lands on a claim still resolving
    claim.update({"owner": "consumer-elsewhere", "leaseUntil": dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)})

    reply = bus.reply_to(message_id, timeout=60)  # once that lease lapses too, from the sweep that adopts it again
    assert (reply["recovered"], reply["error"]["code"]) == (True, "interrupted")
    assert [(o["orderRef"], o["outcome"]) for o in reply["error"]["details"]["orders"]] == [
        (r, "working") for r in refs
    ]
    # The sweep stores its reply pending, publishes it, then clears the flag: the reply can arrive first.
    taken = wait_for(lambda: (c := claim.get().to_dict() or {}).get("replyPending") is False and c,
                     what="the sweep to mark its reply published")  # fmt: skip
    assert taken["state"] == "done"
    assert taken["owner"].startswith(here), taken  # answered by a sweep that adopted it after the other owner
    # from consumer-elsewhere, or from this process once more when a finish of it failed in between (its lease
    # lapsed, the next sweep adopts it again): either way one reply, below
    assert taken["previousOwner"] == "consumer-elsewhere" or taken["previousOwner"].startswith(here), taken
    bus.settle()
    assert [r["messageId"] for r in bus.received].count(message_id) == 1
    assert sorted(o["orderRef"] for o in gateway.orders()) == refs  # nothing placed again
    gateway.hold_fills(False)
    wait_for(lambda: sorted(f["execId"] for f in mode_collection(project, "fills"))
             == sorted(e["execId"] for e in gateway.executions()), what="each fill booked once")  # fmt: skip


@pytest.mark.timeout(240)
def test_a_request_stranded_over_a_days_end_reports_what_ib_no_longer_lists_as_placed(
    consumer_factory, bus: Bus, gateway, project: str, tmp_path
):
    """Decision 44. Killed while its orders worked, before it recorded IB's answer to them (no permId in the books);
    they filled, and the day ended, before any consumer came back: IB lists neither the orders nor their
    executions. The sweep closed both as never placed, and their fills were lost to the books. Now TLT's fill is
    read off the position and booked to dummy; SPY's position moved by more than its order (a manual trade
    besides), so what it did is unknown: left open for reconcile, and said so in the one reply."""
    message_id, refs = strand_an_allocation(bus, gateway, project, tmp_path)
    spy, tlt = (next(o for o in gateway.orders() if o["symbol"] == s) for s in SYMBOLS)
    gateway.set_position("SPY", spy["filled"] + 7)
    gateway.roll_day()
    consumer_factory(stranded_after=2.0)
    reply = bus.reply_to(message_id, timeout=60)
    bus.settle()
    assert [r["messageId"] for r in bus.received].count(message_id) == 1
    assert (reply["recovered"], reply["error"]["code"]) == (True, "interrupted")
    outcomes = {o["orderRef"]: (o["outcome"], o["filled"]) for o in reply["error"]["details"]["orders"]}
    assert outcomes == {spy["orderRef"]: ("unknown", 0.0), tlt["orderRef"]: ("filled", tlt["filled"])}
    assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [spy["orderRef"]]
    fills = {f["execId"]: f for f in mode_collection(project, "fills")}
    assert list(fills) == [f"synthetic-{tlt['orderRef']}-{tlt['filled']:g}"]  # IB's permId was never recorded
    assert holdings(project) == {"dummy": {"TLT": tlt["filled"]}}
    assert sorted(o["orderRef"] for o in gateway.orders()) == refs  # nothing placed again


def test_a_stored_reply_that_cannot_be_published_keeps_no_other_request_from_its_answer(
    consumer_factory, bus: Bus, project: str
):
    """The sweep publishes pending replies, then finishes stranded claims. One pending reply that fails to publish
    every time (Pub/Sub refuses it; here the reply schema does) failed the whole sweep, sweep after sweep: every
    stranded request behind it went unanswered. Each is tried on its own; the refused one stays pending."""
    now = dt.datetime.now(dt.UTC)
    claims = mode_document(project).collection("requests")
    claim = {"intent": "summary", "fingerprint": "0" * 64, "dryRun": False, "runs": 1, "createdAt": now}
    refused = {"requestId": "refused", "messageId": "message-refused", "status": "not a status"}
    claims.document(hashlib.sha256(b"refused").hexdigest()).set(
        {**claim, "requestId": "refused", "messageIds": ["message-refused"], "state": "done", "owner": "gone:1",
         "leaseUntil": None, "replyJson": json.dumps(refused), "replyPending": True,
         "updatedAt": now - dt.timedelta(minutes=2)}
    )  # fmt: skip
    claims.document(hashlib.sha256(b"behind").hexdigest()).set(
        {**claim, "requestId": "behind", "messageIds": ["message-behind"], "state": "running", "owner": "gone:2",
         "leaseUntil": now - dt.timedelta(minutes=1), "updatedAt": now}
    )  # fmt: skip
    # Sweeps 3 s apart, a claim lease of 1 s: every sweep finds the refused reply pending again, as in production.
    consumer_factory(stranded_after=9.0, claim_lease=1.0)

    reply = bus.reply_to("message-behind", timeout=30)
    assert (reply["recovered"], reply["error"]["code"]) == (True, "interrupted")
    bus.settle()
    assert [r["messageId"] for r in bus.received] == ["message-behind"]
    assert claims.document(hashlib.sha256(b"refused").hexdigest()).get().get("replyPending") is True


@pytest.mark.timeout(240)
def test_a_redelivery_that_finds_its_orders_placed_records_ibs_ids_on_them(
    consumer_factory, bus: Bus, gateway, project: str, tmp_path
):
    """A run killed after placing and before it recorded IB's answer leaves its orders written ahead, `pending`,
    with no permId. The redelivery counts them as working and places nothing; it left them as they were, and an
    order with no permId reads as one IB may never have had (decision 44 reads it off the position only on a whole
    fill), while a pending one is rewritten with the quantity of the next order the request sends under its ref."""
    standby = another_intents_subscription(project, STANDBY)  # its copy of the message is the redelivery
    message_id = kill_while_working(bus, gateway, project, tmp_path)
    refs = sorted(o["orderRef"] for o in gateway.orders())
    assert {d["orderRef"]: d["state"] for d in mode_collection(project, "openOrders")} == dict.fromkeys(refs, "pending")
    consumer_factory(intents_subscription=standby)
    reply = bus.reply_to(message_id, timeout=120)
    assert reply["status"] == "ok", reply
    lines = reply["result"]["instruments"]
    assert {(i["instrument"], i["order"], i["working"] > 0) for i in lines} == {(s, 0, True) for s in SYMBOLS}
    assert sorted(o["orderRef"] for o in gateway.orders()) == refs  # nothing placed again
    at_broker = {o["orderRef"]: o["permId"] for o in gateway.orders()}
    docs = {d["orderRef"]: (d["state"], d.get("permId")) for d in mode_collection(project, "openOrders")}
    assert docs == {ref: ("placed", at_broker[ref]) for ref in refs}
    gateway.hold_fills(False)
    wait_for(lambda: sorted(f["execId"] for f in mode_collection(project, "fills"))
             == sorted(e["execId"] for e in gateway.executions()), what="each fill booked once")  # fmt: skip
