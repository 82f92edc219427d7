"""A GTC order across IB's day boundary: IB reports the current day's executions only, so a part filled on an earlier
day is known from the completed order alone (decision 34) or from the position (decision 44). Checked at the broker
by orderRef and in Firestore by execId."""

from __future__ import annotations

from typing import Any

import pytest

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
SPY_TARGET = allocation({"SPY": 0.05})
PART = 3.0


@pytest.fixture
def paper_config_overrides() -> dict[str, object]:
    return {"orderDefaults": GTC_MKT}


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    # A working order fills in parts 3 s apart, so that a test can stop it after its first part (hold_fills).
    return {"fillDelayMs": 3000}


def ok(bus: Bus, body: dict[str, Any]) -> dict[str, Any]:
    reply = bus.reply_to(bus.publish(body), timeout=60.0)
    assert reply["status"] == "ok", reply
    return reply["result"]


def books_total(project: str, symbol: str) -> float:
    return sum(h.get(symbol, 0.0) for h in holdings(project).values())


def test_a_gtc_order_filled_partly_on_an_earlier_day_is_not_booked_twice_after_reconcile_fix(
    consumer_factory, bus: Bus, gateway, project: str
):
    """A GTC buy fills 3 while the consumer is away, the day ends, the order still works. The next day reconcile
    reports the 3 SPY the books lack, and the operator books them with fix=true (to unallocated), as the
    books_disagree refusal says to. The order then fills its rest: the sweep made up the earlier day's 3 for the
    order as well (decision 34), and the books held 3 SPY more than the broker. Now it is closed with what is
    booked: the position shows no more beyond the books."""
    first = consumer_factory(order_timeout=3.0)
    gateway.hold_fills(True)
    (line,) = ok(bus, SPY_TARGET)["instruments"]
    assert line["outcome"] == "working", line
    target = line["target"]
    assert target > PART
    first.stop()

    gateway.set_max_fill_size(PART)
    gateway.hold_fills(False)  # the first part fills now, the next one 3 s later
    wait_for(lambda: gateway.orders()[0]["filled"] == PART, what="the first part filled")
    gateway.hold_fills(True)  # the rest waits (the next part's timer finds the fills held)
    gateway.roll_day()  # a GTC order works on; IB reports nothing of yesterday's execution
    assert gateway.executions() == []
    assert gateway.positions()["SPY"] == PART

    consumer_factory(order_timeout=3.0, intents_subscription=another_intents_subscription(project, STANDBY))
    # reconcile (and eod-check, alert) reports the 3 SPY the books lack; its remedy: reconcile with fix=true.
    found = ok(bus, {"intent": "reconcile"})
    assert [(d["instrument"], d["difference"]) for d in found["differences"]] == [("SPY", PART)], found
    fixed = ok(bus, {"intent": "reconcile", "params": {"fix": True}})
    assert [f["quantity"] for f in fixed["fixed"]] == [PART], fixed

    gateway.set_max_fill_size(100000)
    gateway.hold_fills(False)  # the rest fills today, the consumer connected
    wait_for(lambda: gateway.orders()[0]["status"] == "Filled", what="the rest filled")
    swept = ok(bus, {"intent": "trade-reconciliation"})
    assert gateway.positions()["SPY"] == target
    assert books_total(project, "SPY") == target, (holdings(project), swept)
    assert holdings(project) == {"dummy": {"SPY": target - PART}, "unallocated": {"SPY": PART}}
    assert swept["syntheticFills"] == []
    fills = {f["execId"]: f for f in mode_collection(project, "fills")}
    assert sorted(fills) == sorted(e["execId"] for e in gateway.executions())  # today's, each once
    assert mode_collection(project, "openOrders") == []
    (order,) = mode_collection(project, "orders")
    assert (order["orderRef"], order["state"], order["filled"]) == (line["orderRef"], "Filled", target - PART)
