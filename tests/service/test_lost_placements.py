"""An order IB never answers: its paper server loses some orders of a batch placed within a second, with no status,
no error, and in none of its lists, ever (QuantConnect/Lean.Brokerages.InteractiveBrokers#93). ibsim's fault
`drop_next_orders` does the same.

Such an order was sent, so the reply says so; it is unconfirmed, never placed again under its orderRef, and not
counted as working against the next allocation (IB does not list it). Once it is older than the books' stale
window and IB still lists it nowhere, a sweep closes it as NotPlaced: it was never at IB.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support import Bus, allocation, holdings, mode_collection, mode_document, wait_for

pytestmark = pytest.mark.usefixtures("paper_config")


@pytest.fixture
def consumer(consumer_factory):
    """Waiting 3 s, not 30, for an order's answer before looking it up."""
    return consumer_factory(order_timeout=3.0)


def spy(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["status"] == "ok", reply
    (line,) = [i for i in reply["result"]["instruments"] if i["instrument"] == "SPY"]
    return line


def open_order(project: str, ref: str) -> dict[str, Any] | None:
    found = [o for o in mode_collection(project, "openOrders") if o["orderRef"] == ref]
    return found[0] if found else None


@pytest.mark.usefixtures("consumer")
def test_an_order_ib_never_answers_is_reported_sent_unconfirmed_and_closed_not_placed_once_stale(
    bus: Bus, gateway, project: str
):
    gateway.drop_next_orders(1)
    first = bus.reply_to(bus.publish(allocation({"SPY": 0.05})), timeout=120)
    lost = spy(first)
    lost_ref = lost["orderRef"]
    assert (lost["outcome"], lost["status"], lost["existing"], lost["filled"]) == (
        "unconfirmed", "PendingSubmit", False, 0.0,
    )  # fmt: skip
    assert first["result"]["orders"] == {"sent": 1, "unconfirmed": 1}
    assert first["alert"] is True  # a person must look: it may be working, or lost
    assert [o for o in gateway.orders() if o["orderRef"] == lost_ref] == []  # IB never had it
    doc = open_order(project, lost_ref)
    assert doc is not None, "the sent order left the books"
    assert (doc["state"], doc["orderId"], doc["brokerStatus"]) == ("placed", lost["orderId"], "PendingSubmit")

    # The next allocation does not count it as working (IB lists it nowhere) and buys the target once.
    again = bus.reply_to(bus.publish(allocation({"SPY": 0.05})), timeout=120)
    assert "alert" not in again, again
    second = spy(again)
    assert second["orderRef"] != lost_ref
    assert (second["working"], second["order"], second["outcome"]) == (0, lost["order"], "filled")
    (at_ib,) = gateway.orders()
    assert (at_ib["orderRef"], at_ib["status"], at_ib["filled"]) == (second["orderRef"], "Filled", lost["order"])
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": lost["order"]}}, what="the second buy booked to dummy")
    executions = gateway.executions()
    assert {e["orderRef"] for e in executions} == {second["orderRef"]}
    assert {f["execId"] for f in mode_collection(project, "fills")} == {e["execId"] for e in executions}

    # Within the stale window a sweep leaves it open: IB may yet answer.
    swept = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert swept["status"] == "ok", swept
    assert open_order(project, lost_ref) is not None

    # Two hours on, IB still lists it nowhere: closed as NotPlaced, with nothing booked.
    mode_document(project).collection("openOrders").document(lost_ref).update(
        {"createdAt": datetime.now(UTC) - timedelta(hours=2)}
    )
    swept = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert swept["status"] == "ok", swept
    assert open_order(project, lost_ref) is None
    (closed,) = [o for o in mode_collection(project, "orders") if o["orderRef"] == lost_ref]
    assert (closed["state"], closed.get("execIds", [])) == ("NotPlaced", [])
    assert holdings(project) == {"dummy": {"SPY": lost["order"]}}
    assert [o["orderRef"] for o in gateway.orders()] == [second["orderRef"]]  # nothing placed again under its ref
