"""Which order is ours, and what it filled, across clients and days: another client's working order under our ref
in the sizing, a fill made up for a working order while its execution was on the way, an earlier deployment's order
being cancelled. Found by a review of decisions 65-67; each test failed before its fix. The broker is checked by
orderRef, Firestore by execId."""

from __future__ import annotations

from typing import Any

import pytest
from ib_insync import IB, MarketOrder, Stock

from tests.support import (
    STANDBY,
    Bus,
    allocation,
    another_intents_subscription,
    holdings,
    mode_collection,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("paper_config")

GTC_MKT = {"orderType": "MKT", "algo": "none", "tif": "GTC"}


def ok(bus: Bus, body: dict[str, Any], timeout: float = 90.0) -> dict[str, Any]:
    reply = bus.reply_to(bus.publish(body), timeout=timeout)
    assert reply["status"] == "ok", reply
    return reply["result"]


def broker_orders(gateway, client_id: int | None = None) -> list[dict[str, Any]]:
    return [o for o in gateway.orders() if client_id is None or o["clientId"] == client_id]


def fills_of(project: str, order_ref: str) -> list[dict[str, Any]]:
    return [f for f in mode_collection(project, "fills") if f.get("orderRef") == order_ref]


# -- decision 65: under our orderRef, only our order ------------------------------------------------------------------


def test_another_clients_working_order_under_our_ref_is_not_sized_as_ours(
    consumer_factory, bus: Bus, gateway, project: str, manual: IB
):
    """Decision 65 makes a ref with a recorded permId name our order only, but sizing does not: `_working` pairs every
    live order under the ref of an open document with that document, so a copy another client id placed under our
    working buy's ref (client 7, held) becomes a second WorkingOrder carrying our order's whole remaining. The next
    allocation of dummy counts the buy twice (`working` 2x in its line) and sends a buy short by the first target:
    once everything fills, dummy holds less than its target (the copy's shares go to unallocated)."""
    consumer_factory(order_timeout=1.0)
    gateway.hold_fills(True)
    (first,) = ok(bus, allocation({"SPY": 0.05}))["instruments"]
    assert first["outcome"] == "working", first
    ref, t1 = first["orderRef"], first["target"]
    (ours,) = [o for o in broker_orders(gateway, 1) if o["orderRef"] == ref]
    assert ours["permId"]

    copy = manual.placeOrder(Stock("SPY", "SMART", "USD"), MarketOrder("BUY", 10, orderRef=ref))
    wait_for(lambda: [o for o in broker_orders(gateway, 7) if o["orderRef"] == ref], what="the copy at IB", ib=manual)
    assert not copy.isDone()

    (second,) = ok(bus, allocation({"SPY": 0.15}))["instruments"]
    expected = second["target"] - t1  # our working buy carries t1; nothing is held yet
    placed = [
        (o["orderRef"], o["action"], o["totalQuantity"]) for o in broker_orders(gateway, 1) if o["orderRef"] != ref
    ]
    assert placed == [(second["orderRef"], "BUY", expected)], (
        f"sized with working={second['working']} (our buy is {t1}): {placed}"
    )


# -- decision 66: a working order's unreported part, made up -----------------------------------------------------------


@pytest.mark.parametrize("paper_config_overrides", [{"orderDefaults": GTC_MKT}])
def test_a_working_orders_made_up_fill_is_not_booked_again_when_its_execution_arrives(
    consumer_factory, bus: Bus, gateway, project: str
):
    """IB promises no order among an order's messages: our GTC buy's status (filled 3) reaches the consumer, its
    execution report lags, and the day ends before it arrives (a forex order filling just before midnight, an
    execution report held up across IB's day roll), so reqExecutions lists it no more. The sweep now makes up a
    fill for a WORKING order (decision 66, `_book_unreported`): `synthetic-{permId}-3`, while the real execution is
    still on its way. When it arrives it is booked too, under its own execId: 6 booked for the order's 3, dummy
    holding twice what the broker does. Nothing ties a synthetic fill to the execution that later reports it."""
    consumer = consumer_factory(order_timeout=3.0)
    gateway.hold_fills(True)
    (line,) = ok(bus, allocation({"SPY": 0.05}))["instruments"]
    assert line["outcome"] == "working", line
    ref = line["orderRef"]

    gateway.delay_executions(20.0)  # the execution report 20 s after the status that counts it
    gateway.call(setattr, gateway.server.scenario, "fillDelayMs", 600_000)  # one part, then a long pause
    gateway.set_max_fill_size(3)
    gateway.hold_fills(False)
    wait_for(lambda: [o["filled"] for o in broker_orders(gateway, 1) if o["orderRef"] == ref] == [3], what="a part")
    gateway.hold_fills(True)
    (real,) = [e["execId"] for e in gateway.executions() if e["orderRef"] == ref]
    gateway.roll_day()  # the GTC buy works on; reqExecutions lists nothing of yesterday's
    assert gateway.executions() == []
    assert gateway.positions()["SPY"] == 3

    swept = ok(bus, {"intent": "trade-reconciliation"})
    broker = consumer.service.services.broker
    wait_for(lambda: real in {f.exec_id for f in broker.session_fills()}, timeout=60, what="the lagging execution")
    ok(bus, {"intent": "trade-reconciliation"})  # whatever the connection heard is booked by now

    booked = {f["execId"]: f["quantity"] for f in fills_of(project, ref)}
    (at_ib,) = [o for o in broker_orders(gateway, 1) if o["orderRef"] == ref]
    assert sum(abs(q) for q in booked.values()) == at_ib["filled"] == 3, (booked, swept["syntheticFills"])
    assert holdings(project) == {"dummy": {"SPY": gateway.positions()["SPY"]}}


# -- decision 67: an order being cancelled is waited for -------------------------------------------------------------


def test_an_earlier_deployments_order_being_cancelled_is_not_sized_as_working(
    consumer_factory, bus: Bus, gateway, project: str
):
    """Decision 67's own case, across a change of IB_CLIENT_ID (an earlier deployment's order is ours: our document,
    our ref). The deployment on client id 2 bought for dummy, then its close-all asked IB to cancel the buy and gave
    up (PendingCancel); the deployment is replaced by one on client id 1. Its allocation buying more SPY should wait
    for IB's final status; `in_the_way` puts the PendingCancel order in the way, but `_why_kept` keeps it (another
    client id) and, not opposing, it stays in the sizing: the buy is counted as working and only the difference is
    sent. Once IB confirms the cancel, dummy holds half its target."""
    earlier = consumer_factory(order_timeout=1.0, ib_client_id=2)
    gateway.hold_fills(True)
    (buy,) = ok(bus, allocation({"SPY": 0.05}))["instruments"]
    assert buy["outcome"] == "working", buy
    gateway.cancel_delay(600)  # the exchange has not confirmed within the test
    gave_up = bus.reply_to(bus.publish({"intent": "close-all", "params": {"strategies": ["dummy"]}}), timeout=90)
    assert gave_up["status"] == "error", gave_up
    (pending,) = [o for o in gateway.orders() if o["orderRef"] == buy["orderRef"]]
    assert (pending["status"], pending["clientId"]) == ("PendingCancel", 2)
    earlier.stop()

    consumer_factory(order_timeout=1.0, intents_subscription=another_intents_subscription(project, STANDBY))
    again = bus.reply_to(bus.publish(allocation({"SPY": 0.10})), timeout=90)
    placed = [(o["orderRef"], o["action"], o["totalQuantity"]) for o in broker_orders(gateway, 1)]
    assert placed == [], (placed, (again.get("result") or {}).get("instruments") or again.get("error"))
