"""A run that no longer holds its request's claim places nothing.

Its lease lapses when its renewals fail (Firestore out of reach from this process alone); a redelivery elsewhere may
then take the claim over and run the request. Two runs placing at once could each miss the other's orders at the
broker, so a run checks the claim is still its own, with lease to spare, as it writes its orders ahead.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from tests.support import Bus, allocation, holdings, mode_collection, mode_document, wait_for

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
