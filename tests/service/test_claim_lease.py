"""A run that no longer holds its request's claim places nothing.

Its lease lapses when its renewals fail (Firestore out of reach from this process alone); a redelivery elsewhere may
then take the claim over and run the request. Two runs placing at once could each miss the other's orders at the
broker, so a run checks the claim is still its own, with lease to spare, as it writes its orders ahead.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud.firestore import AsyncClient

from consumer.errors import LeaseLost
from consumer.store.layout import Layout
from consumer.store.requests import RequestLedger
from tests.support import (
    TEST_ACCOUNT,
    Bus,
    activity,
    allocation,
    holdings,
    mode_collection,
    mode_document,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("paper_config")


def test_a_run_whose_claim_was_taken_over_places_nothing_and_the_owner_places_once(
    consumer_factory, bus: Bus, gateway, project: str
):
    consumer_factory(order_timeout=3.0)
    gateway.stall_request("reqMktData", 1.5)  # the run waits on SPY's price, before it places
    message_id = bus.publish(allocation({"SPY": 0.05}))
    wait_for(lambda: "reqMktData" in [name for _, name in gateway.requests_received()], what="the price request")
    claim = mode_document(project).collection("requests").document(hashlib.sha256(message_id.encode()).hexdigest())
    assert claim.get().get("state") == "running"
    # What a redelivery elsewhere does once this run's lease has lapsed: the claim is another's, for 3 s.
    claim.update({"owner": "consumer-elsewhere", "leaseUntil": datetime.now(UTC) + timedelta(seconds=3)})

    reply = bus.reply_to(message_id, timeout=60)  # from the run that took the claim back once that lease lapsed
    assert reply["status"] == "ok", reply
    (line,) = reply["result"]["instruments"]
    taken = claim.get().to_dict() or {}
    assert (taken["state"], taken["previousOwner"], taken["runs"]) == ("done", "consumer-elsewhere", 2)
    assert [name for _, name in gateway.requests_received()].count("placeOrder") == 1
    (order,) = gateway.orders()
    assert (order["orderRef"], order["status"], order["filled"]) == (line["orderRef"], "Filled", line["target"])
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": line["target"]}}, what="the buy booked to dummy")
    executions = gateway.executions()
    assert {f["execId"] for f in mode_collection(project, "fills")} == {e["execId"] for e in executions}


@pytest.mark.timeout(180)
def test_a_run_whose_claim_was_taken_over_after_it_placed_leaves_the_one_reply_to_the_new_owner(
    consumer_factory, bus: Bus, gateway, project: str
):
    """Decision 39. The run's lease lapsed while its order worked and another process took the claim: the run's
    renewals, reply and release used to be plain updates, so it stored `done` over the new owner's claim and
    replied, and the new owner answered too. Now the run stores and publishes nothing; the claim's owner (here the
    stranded-request sweep, once that owner's lease lapses too) resolves the order by orderRef and replies once."""
    gateway.hold_fills(True)
    consumer_factory(order_timeout=3.0, stranded_after=1.0)
    message_id = bus.publish(allocation({"SPY": 0.05}))
    wait_for(lambda: len(gateway.orders()) == 1, what="the order at the broker")
    claim = mode_document(project).collection("requests").document(hashlib.sha256(message_id.encode()).hexdigest())
    claim.update({"owner": "consumer-elsewhere", "leaseUntil": datetime.now(UTC) + timedelta(seconds=6)})

    reply = bus.reply_to(message_id, timeout=60)
    assert (reply["recovered"], reply["error"]["code"]) == (True, "interrupted"), reply
    (order,) = gateway.orders()
    assert [(o["orderRef"], o["outcome"]) for o in reply["error"]["details"]["orders"]] == [
        (order["orderRef"], "working")
    ]
    # The sweep stores its reply pending, publishes it, then clears the flag: the reply can arrive first.
    taken = wait_for(lambda: (c := claim.get().to_dict() or {}).get("replyPending") is False and c,
                     what="the sweep to mark its reply published")  # fmt: skip
    assert (taken["state"], taken["previousOwner"]) == ("done", "consumer-elsewhere")
    # the sweep's record alone: none from the first run, whose delivery attempt it would carry
    assert [(a["status"], a["deliveryAttempt"]) for a in activity(project, messageId=message_id)] == [("error", None)]
    bus.settle()
    assert [r["messageId"] for r in bus.received].count(message_id) == 1
    assert [name for _, name in gateway.requests_received()].count("placeOrder") == 1

    gateway.hold_fills(False)
    wait_for(lambda: sorted(f["execId"] for f in mode_collection(project, "fills"))
             == sorted(e["execId"] for e in gateway.executions()), what="the fill booked once, by execId")  # fmt: skip
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": order["totalQuantity"]}}, what="the buy booked to dummy")


@pytest.mark.timeout(180)
def test_a_run_whose_claim_was_deleted_after_it_placed_is_answered_once_and_places_once(
    consumer_factory, bus: Bus, gateway, project: str
):
    """A claim gone mid-run (its documents deleted: a restore, a careless cleanup) has no new owner to answer it.
    The run's conditioned store failed and was taken for a takeover: acked, with no reply ever. It is a store
    failure: nacked, and the redelivery finds the order working at the broker and answers once."""
    gateway.hold_fills(True)
    consumer_factory(order_timeout=3.0)
    message_id = bus.publish(allocation({"SPY": 0.05}))
    wait_for(lambda: len(gateway.orders()) == 1, what="the order at the broker")
    mode_document(project).collection("requests").document(hashlib.sha256(message_id.encode()).hexdigest()).delete()

    reply = the_one_reply(bus, message_id)
    assert reply["status"] == "ok", reply
    (line,) = reply["result"]["instruments"]
    (order,) = gateway.orders()
    # Its write-ahead went with the claim: the redelivery sizes SPY afresh and counts the first run's order as
    # working at the broker, placing nothing more.
    assert (line["target"], line["working"], line["order"]) == (order["totalQuantity"], order["totalQuantity"], 0)
    assert [name for _, name in gateway.requests_received()].count("placeOrder") == 1
    gateway.hold_fills(False)
    wait_for(lambda: sorted(f["execId"] for f in mode_collection(project, "fills"))
             == sorted(e["execId"] for e in gateway.executions()), what="the fill booked once, by execId")  # fmt: skip
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": order["totalQuantity"]}}, what="the buy booked to dummy")


def test_a_run_whose_lease_ran_short_before_placing_hands_the_claim_back_and_the_redelivery_places_once(
    consumer_factory, bus: Bus, gateway, project: str
):
    """Renewals failed (here: the lease cut short while the run waits on a price) and the claim is still this
    process's: the run places nothing and hands the claim back at once, as after any transient failure, instead of
    leaving it `running` until its lease lapses; the redelivery runs the request and places once."""
    consumer_factory(claim_lease=30.0)  # renewed every 10 s: none lands while the run waits
    gateway.stall_request("reqMktData", 1.5)
    message_id = bus.publish(allocation({"SPY": 0.05}))
    wait_for(lambda: "reqMktData" in [name for _, name in gateway.requests_received()], what="the price request")
    claim = mode_document(project).collection("requests").document(hashlib.sha256(message_id.encode()).hexdigest())
    owner = claim.get().get("owner")
    claim.update({"leaseUntil": datetime.now(UTC) + timedelta(seconds=1)})  # under the 2 s a run must hold

    reply = the_one_reply(bus, message_id)
    assert reply["status"] == "ok", reply
    (line,) = reply["result"]["instruments"]
    taken = claim.get().to_dict() or {}
    assert (taken["state"], taken["runs"], taken["previousOwner"]) == ("done", 2, owner)
    assert taken["lastError"].startswith("lease_short: "), taken  # handed back by the first run, not lapsed
    assert [name for _, name in gateway.requests_received()].count("placeOrder") == 1
    (order,) = gateway.orders()
    assert (order["orderRef"], order["status"], order["filled"]) == (line["orderRef"], "Filled", line["target"])
    wait_for(lambda: sorted(f["execId"] for f in mode_collection(project, "fills"))
             == sorted(e["execId"] for e in gateway.executions()), what="the fill booked once, by execId")  # fmt: skip
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": line["target"]}}, what="the buy booked to dummy")


async def test_a_healthy_short_lease_holds_whenever_the_run_checks_it(project: str):
    """With a 3 s lease renewed every second, a healthy claim has 2 s left just before a renewal lands, and less
    when the renewal runs late: a fixed 2 s spare refused such a run (CI, a reconnect's test) and left its claim
    running with nobody running it. A short lease is held to a third of it."""
    db = AsyncClient(project=project)
    try:
        ledger = RequestLedger(Layout(db, TEST_ACCOUNT, "paper"), owner="this-process", lease_seconds=3.0)
        assert (await ledger.claim("short-lease", "allocation", "m1", "f")).first_run
        ref = Layout(db, TEST_ACCOUNT, "paper").request("short-lease")
        await ref.update({"leaseUntil": datetime.now(UTC) + timedelta(seconds=1.8)})  # its renewal 0.2 s late
        await ledger.hold("short-lease")
        await ref.update({"leaseUntil": datetime.now(UTC) + timedelta(seconds=0.5)})  # renewals failed
        with pytest.raises(LeaseLost) as short:
            await ledger.hold("short-lease")
        assert short.value.held
        await ref.update({"owner": "elsewhere", "leaseUntil": datetime.now(UTC) + timedelta(seconds=3)})
        with pytest.raises(LeaseLost) as taken:
            await ledger.hold("short-lease")
        assert not taken.value.held
    finally:
        db.close()


def the_one_reply(bus: Bus, message_id: str) -> dict[str, Any]:
    reply = bus.reply_to(message_id, timeout=60)
    bus.settle()
    assert [r["messageId"] for r in bus.received].count(message_id) == 1
    return reply
