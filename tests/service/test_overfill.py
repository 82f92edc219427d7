"""An execution beyond its order's quantity is booked, to unallocated, and blocks nothing.

An orderRef is ours, but nothing stops another client id from placing under it: an earlier deployment with
another IB_CLIENT_ID finishing the same request, a person copying it in TWS. Its executions carry our orderRef.
The books took them for our order's, and the part beyond the order's quantity raised in the attribution: the
booking transaction, with every fill batched beside it, failed on every sweep from then on. Now an execution
under our ref is the order's only with the order's permId (and on its instrument, decision 65); another's goes
to unallocated, and so does any part beyond the order's quantity.
"""

from __future__ import annotations

from typing import Any

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
    assert (order["filled"], order["booked"]) == (spy["target"], {"dummy": spy["target"]})  # the copy's are not its
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


def at_broker(gateway, order_ref: str, client_id: int = 1) -> dict[str, Any]:
    (order,) = [o for o in gateway.orders() if o["orderRef"] == order_ref and o["clientId"] == client_id]
    return order


def open_refs(project: str) -> set[str]:
    return {o["orderRef"] for o in mode_collection(project, "openOrders")}


def partly_filled_working_buy(consumer_factory, bus: Bus, gateway) -> dict[str, Any]:
    """dummy's DAY market buy of SPY, replied `working`, 10 of it filled, the rest working (IB's next execution a
    minute away)."""
    consumer_factory(order_timeout=1.0)
    gateway.hold_fills(True)
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    (buy,) = reply["result"]["instruments"]
    assert buy["outcome"] == "working", buy
    gateway.call(setattr, gateway.server.scenario, "fillDelayMs", 60_000)  # one execution, then a long pause
    gateway.set_max_fill_size(10)
    gateway.hold_fills(False)
    wait_for(lambda: at_broker(gateway, buy["orderRef"])["filled"] == 10, what="the first partial fill")
    gateway.call(setattr, gateway.server.scenario, "fillDelayMs", 5)  # other orders fill at once
    return buy


def test_another_clients_order_under_our_ref_finishing_does_not_close_our_working_order(
    consumer_factory, bus: Bus, gateway, project, manual: IB
):
    """Our buy is partly filled and still working when another client id's order under the same orderRef fills. The
    sweep (`find_orders` -> `_match`) took the most final trade with the ref for our order's fate, whoever placed
    it: our order's document was closed as Filled while IB still worked 40 of it. Sizing counts only orders with an
    open document as working, so the next allocation buys the 40 again: dummy ends 40 over its target (and the
    copy's 10 are booked to dummy meanwhile)."""
    buy = partly_filled_working_buy(consumer_factory, bus, gateway)
    copy_under(manual, gateway, "SPY", buy["orderRef"], 10)

    swept = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert swept["status"] == "ok", swept
    ours = at_broker(gateway, buy["orderRef"])
    assert (ours["status"], ours["filled"]) == ("Submitted", 10)  # still working at IB
    closed_while_working = buy["orderRef"] not in open_refs(project)

    again = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))  # the same target: the working buy carries it
    assert again["status"] == "ok", again
    second = [o for o in gateway.orders() if o["clientId"] == 1 and o["orderRef"] != buy["orderRef"]]
    assert second == [], f"a second buy beside our working one (closed in the books: {closed_while_working})"
    assert not closed_while_working


def test_an_execution_under_our_ref_on_another_instrument_is_not_booked_to_the_strategy(
    consumer_factory, bus: Bus, gateway, project, manual: IB
):
    """An execution carrying the orderRef of our working SPY buy, on QQQ (another client id's order under our ref),
    was split among the SPY order's strategies: dummy's book held 10 QQQ it never ordered (a close-all of dummy
    would sell them), and they counted against the SPY order's quantity. An execution is its order's only on the
    order's instrument; any other is booked to unallocated, as an execution of no order of ours is."""
    buy = partly_filled_working_buy(consumer_factory, bus, gateway)
    copy_under(manual, gateway, "QQQ", buy["orderRef"], 10)

    swept = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert swept["status"] == "ok", swept
    every_execution_booked_once(gateway, project)
    assert holdings(project) == {"dummy": {"SPY": 10}, "unallocated": {"QQQ": 10}}, holdings(project)
