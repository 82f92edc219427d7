"""What a finished order filled is booked from its executions while IB reports them; only an earlier day's fills,
which IB no longer reports, are booked from the order itself (a synthetic fill). Checked at the broker by orderRef
and in Firestore by execId."""

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

SAME_TARGET = allocation({"SPY": 0.05})  # a trading intent: it sweeps the books first, then finds nothing to do


def ok(bus: Bus, body: dict[str, Any]) -> dict[str, Any]:
    reply = bus.reply_to(bus.publish(body))
    assert reply["status"] == "ok", reply
    return reply["result"]


def working_buy(bus: Bus, gateway) -> tuple[str, float]:
    gateway.hold_fills(True)
    (line,) = ok(bus, SAME_TARGET)["instruments"]
    assert line["outcome"] == "working", line
    return line["orderRef"], line["target"]


def fills_by_exec_id(project: str) -> dict[str, dict[str, Any]]:
    return {f["execId"]: f for f in mode_collection(project, "fills")}


def test_a_fill_whose_status_comes_before_its_execution_is_booked_once_as_itself(
    consumer_factory, bus: Bus, gateway, project: str
):
    consumer_factory(order_timeout=3.0)
    ref, target = working_buy(bus, gateway)
    gateway.delay_executions(30.0)  # the execution's report trails the Filled status
    gateway.hold_fills(False)
    wait_for(lambda: gateway.orders()[0]["status"] == "Filled", what="the buy filled at IB")
    # A round trip on the same socket: the consumer has read the Filled status sent before its answer.
    assert "gatewayTime" in ok(bus, {"intent": "ping"})

    again = ok(bus, SAME_TARGET)
    assert again["booksReconciled"]["syntheticFills"] == 0, again["booksReconciled"]
    assert again["orders"] == {"sent": 0}
    (execution,) = gateway.executions()
    assert execution["orderRef"] == ref
    assert set(fills_by_exec_id(project)) == {execution["execId"]}  # booked as itself, nothing made up
    assert holdings(project) == {"dummy": {"SPY": target}}
    assert [o["orderRef"] for o in mode_collection(project, "orders")] == [ref]
    assert mode_collection(project, "openOrders") == []


def test_an_earlier_days_fill_ib_no_longer_reports_is_booked_from_the_order(
    consumer_factory, bus: Bus, gateway, project: str
):
    first = consumer_factory(order_timeout=3.0)
    ref, target = working_buy(bus, gateway)
    first.stop()  # the consumer is away while the buy fills
    gateway.hold_fills(False)
    wait_for(lambda: gateway.orders()[0]["status"] == "Filled", what="the buy filled at IB")
    gateway.roll_day()  # IB reports the current day's executions only
    assert gateway.executions() == []

    # The emulator can hand messages to a stopped consumer's stream for minutes: the next pulls from its own.
    consumer_factory(order_timeout=3.0, intents_subscription=another_intents_subscription(project, STANDBY))
    again = ok(bus, SAME_TARGET)  # after the sweep that follows the connect: the books hold the target
    assert again["orders"] == {"sent": 0}, again
    (order,) = gateway.orders()
    assert (order["orderRef"], order["filled"]) == (ref, target)
    wait_for(lambda: len(fills_by_exec_id(project)) == 1, what="the fill booked")
    ((exec_id, fill),) = fills_by_exec_id(project).items()
    assert exec_id == f"synthetic-{order['permId']}-{target:g}"
    assert (fill["quantity"], fill["synthetic"]) == (target, True)
    assert fill["price"] == 520.0  # IB's completed orders carry no average price: IB's mark of SPY
    assert holdings(project) == {"dummy": {"SPY": target}}
    assert mode_collection(project, "openOrders") == []
    assert again["booksReconciled"]["ordersOpen"] == 0
