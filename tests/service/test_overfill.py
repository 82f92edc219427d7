"""An execution beyond its order's quantity is booked, to unallocated, and blocks nothing.

An orderRef is ours, but nothing stops another client id from placing under it: an earlier deployment with
another IB_CLIENT_ID finishing the same request, a person copying it in TWS. Its executions carry our orderRef,
so the books take them for our order's; the part beyond the order's quantity used to raise in the attribution,
and the booking transaction, with every fill batched beside it, failed on every sweep from then on.
"""

from __future__ import annotations

import pytest
from ib_insync import IB, MarketOrder, Stock

from tests.support import (
    SIGNAL_PARAMS,
    Bus,
    allocation,
    holdings,
    long_signal,
    mode_collection,
    stock_positions,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.usefixtures("paper_config")


def copy_under(manual: IB, gateway, symbol: str, order_ref: str, quantity: int) -> None:
    """Another client's buy under our orderRef, filled."""
    before = stock_positions(gateway).get(symbol, 0)
    trade = manual.placeOrder(Stock(symbol, "SMART", "USD"), MarketOrder("BUY", quantity, orderRef=order_ref))
    wait_for(trade.isDone, what="the copy under our orderRef to fill", ib=manual)
    assert stock_positions(gateway)[symbol] == before + quantity


def every_execution_booked_once(gateway, project: str) -> None:
    executions = sorted(e["execId"] for e in gateway.executions())
    assert sorted(f["execId"] for f in mode_collection(project, "fills")) == executions


def consistent(bus: Bus) -> None:
    reconciled = bus.reply_to(bus.publish({"intent": "reconcile"}))
    assert reconciled["result"]["consistent"] is True, reconciled


@pytest.mark.usefixtures("consumer")
def test_an_execution_beyond_its_orders_quantity_is_booked_to_unallocated_not_to_the_strategy(
    bus: Bus, gateway, project: str, manual: IB
):
    first = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert first["status"] == "ok", first
    (spy,) = first["result"]["instruments"]
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": spy["target"]}}, what="the buy booked")

    copy_under(manual, gateway, "SPY", spy["orderRef"], 5)
    swept = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert swept["status"] == "ok", swept
    assert [(f["clientId"], f["shares"]) for f in swept["result"]["fillsApplied"]] == [(7, 5)]
    every_execution_booked_once(gateway, project)
    assert holdings(project) == {"dummy": {"SPY": spy["target"]}, "unallocated": {"SPY": 5}}
    (order,) = [o for o in mode_collection(project, "orders") if o["orderRef"] == spy["orderRef"]]
    assert (order["filled"], order["booked"]) == (spy["target"] + 5, {"dummy": spy["target"]})
    consistent(bus)


def test_an_execution_beyond_a_shared_orders_quantity_blocks_no_booking(
    bus: Bus, gateway, project: str, manual: IB, consumer_factory
):
    """Two strategies' order, 3 shares beyond it: their parts could not be split in whole shares within their
    targets, and the attribution raised in the booking transaction, on this sweep and every later one."""
    consumer_factory(order_timeout=3.0)
    write_config(project, exposure={"overall": 0.1, "strategies": {"dummy": 0.5, "testsignalgenerator": 0.5}})
    symbol, _ = long_signal(bus, gateway)
    reply = bus.reply_to(
        bus.publish({"intent": "allocation", "params": {"strategies": ["dummy", "testsignalgenerator"],
                     "strategyParams": {"dummy": {"weights": {symbol: 0.2}}, "testsignalgenerator": SIGNAL_PARAMS}}})
    )  # fmt: skip
    assert reply["status"] == "ok", reply
    (line,) = [i for i in reply["result"]["instruments"] if i["instrument"] == symbol]
    parts = line["strategies"]
    assert set(parts) == {"dummy", "testsignalgenerator"}, parts
    assert all(q > 0 for q in parts.values()), parts
    wait_for(lambda: holdings(project) == {s: {symbol: q} for s, q in parts.items()}, what="the parts booked")

    copy_under(manual, gateway, symbol, line["orderRef"], 3)
    swept = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert swept["status"] == "ok", swept
    every_execution_booked_once(gateway, project)
    assert holdings(project) == {**{s: {symbol: q} for s, q in parts.items()}, "unallocated": {symbol: 3}}
    consistent(bus)
