"""Our own working orders are cancelled, never traded against (issue 12, bug 1).

close-all cancels the closed strategies' working orders; any trading intent cancels ours that its new order on an
instrument would go against. Either way IB's answer is awaited, what filled is booked by execId, and the new order
is sized from the holdings. Orders that are not ours are never cancelled. Every test checks the broker by orderRef
and Firestore by orderRef and execId.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from ib_insync import IB, MarketOrder, Stock

from tests.support import (
    STANDBY,
    Bus,
    ConsumerProcess,
    allocation,
    another_intents_subscription,
    ensure_loop,
    holdings,
    mode_collection,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("paper_config")


@pytest.fixture
def consumer(consumer_factory):
    """In-process, waiting 3 s, not 30, for a market order to finish before reporting it as working (fills are
    held here). The crash test runs its consumers as processes instead, on the same client id."""
    return consumer_factory(order_timeout=3.0)


CLIENT_ID = 1  # tests/support.py settings_for_tests
CLOSE_ALL_GTC = {"intent": "close-all", "params": {"strategies": ["dummy"], "orderProperties": {"tif": "GTC"}}}


def ok(bus: Bus, body: dict[str, Any]) -> dict[str, Any]:
    reply = bus.reply_to(bus.publish(body))
    assert reply["status"] == "ok", reply
    return reply["result"]


def spy(result: dict[str, Any]) -> dict[str, Any]:
    return next(i for i in result["instruments"] if i["instrument"] == "SPY")


def at_broker(gateway, order_ref: str) -> dict[str, Any]:
    (order,) = [o for o in gateway.orders() if o["orderRef"] == order_ref]
    return order


def closed_order(project: str, order_ref: str) -> dict[str, Any]:
    """The order's document in `orders` (closed); fails the test if it is not there."""
    found = [o for o in mode_collection(project, "orders") if o["orderRef"] == order_ref]
    assert len(found) == 1, f"{order_ref} is not closed in the books: {found}"
    return found[0]


def working_buy(bus: Bus, gateway) -> tuple[str, float]:
    """An allocation's DAY buy of SPY for dummy, held working at the broker with nothing filled."""
    gateway.hold_fills(True)
    line = spy(ok(bus, allocation({"SPY": 0.05})))
    assert line["outcome"] == "working", line
    order = at_broker(gateway, line["orderRef"])
    assert (order["action"], order["status"], order["filled"], order["tif"]) == ("BUY", "Submitted", 0, "DAY")
    return line["orderRef"], order["totalQuantity"]


@pytest.mark.usefixtures("consumer")
def test_close_all_cancels_the_working_buy_instead_of_selling_against_it(bus: Bus, gateway, project: str):
    """The issue, reproduced exactly: it used to end short at the broker, books saying dummy -quantity."""
    buy_ref, quantity = working_buy(bus, gateway)

    result = ok(bus, CLOSE_ALL_GTC)
    gateway.roll_day()
    gateway.hold_fills(False)

    assert [o["orderRef"] for o in gateway.orders()] == [buy_ref]  # no closing order was placed at all
    assert at_broker(gateway, buy_ref)["status"] == "Cancelled"
    assert at_broker(gateway, buy_ref)["filled"] == 0
    assert gateway.executions() == []
    assert gateway.positions().get("SPY", 0) == 0
    assert holdings(project) == {}
    assert mode_collection(project, "fills") == []
    assert mode_collection(project, "openOrders") == []
    assert closed_order(project, buy_ref)["state"] == "Cancelled"

    (cancelled,) = result["cancelled"]
    assert {k: v for k, v in cancelled.items() if k != "conId"} == {
        "orderRef": buy_ref,
        "instrument": "SPY",
        "quantity": quantity,
        "status": "Cancelled",
        "filled": 0.0,
        "reason": "close-all",
    }
    assert result["orders"] == {"sent": 0}


@pytest.mark.usefixtures("consumer")
def test_an_allocation_against_a_working_order_cancels_it_and_sizes_from_holdings(bus: Bus, gateway, project: str):
    buy_ref, _ = working_buy(bus, gateway)

    result = ok(bus, allocation({"SPY": -0.03}))
    line = spy(result)
    assert line["target"] < 0
    assert at_broker(gateway, buy_ref)["status"] == "Cancelled"
    sell = at_broker(gateway, line["orderRef"])
    assert (sell["action"], sell["totalQuantity"]) == ("SELL", -line["target"])  # from the holdings (none)
    assert len(gateway.orders()) == 2
    assert (line["current"], line["working"], line["order"]) == (0, 0, line["target"])
    assert [(c["orderRef"], c["status"], c["filled"]) for c in result["cancelled"]] == [(buy_ref, "Cancelled", 0.0)]

    gateway.hold_fills(False)
    wait_for(lambda: gateway.positions().get("SPY") == line["target"], what="the sell to fill")
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": line["target"]}}, what="the sell booked to dummy")
    executions = gateway.executions()
    assert {e["orderRef"] for e in executions} == {line["orderRef"]}
    fills = {f["execId"]: f for f in mode_collection(project, "fills")}
    assert set(fills) == {e["execId"] for e in executions}
    assert closed_order(project, buy_ref)["state"] == "Cancelled"
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the sell closed in the books")


@pytest.mark.usefixtures("consumer")
def test_a_partly_filled_working_order_is_cancelled_and_its_fill_booked_before_sizing(bus: Bus, gateway, project: str):
    buy_ref, quantity = working_buy(bus, gateway)
    assert quantity > 10
    gateway.call(setattr, gateway.server.scenario, "fillDelayMs", 60_000)  # one execution, then a long pause
    gateway.set_max_fill_size(10)
    gateway.hold_fills(False)
    wait_for(lambda: at_broker(gateway, buy_ref)["filled"] == 10, what="the first partial fill")
    gateway.hold_fills(True)
    (partial,) = gateway.executions()

    result = ok(bus, CLOSE_ALL_GTC)
    line = spy(result)
    assert at_broker(gateway, buy_ref)["status"] == "Cancelled"
    assert at_broker(gateway, buy_ref)["filled"] == 10
    sell = at_broker(gateway, line["orderRef"])
    assert (sell["action"], sell["totalQuantity"], sell["tif"]) == ("SELL", 10, "GTC")
    assert (line["current"], line["working"], line["order"]) == (10, 0, -10)  # the partial fill, booked first
    assert [(c["orderRef"], c["status"], c["filled"]) for c in result["cancelled"]] == [(buy_ref, "Cancelled", 10.0)]
    booked = mode_collection(project, "fills")
    assert [(f["execId"], f["orderRef"], f["strategies"]) for f in booked] == [
        (partial["execId"], buy_ref, {"dummy": 10.0})
    ]
    assert closed_order(project, buy_ref)["state"] == "Cancelled"
    assert closed_order(project, buy_ref)["filled"] == 10

    gateway.roll_day()
    gateway.hold_fills(False)
    wait_for(lambda: at_broker(gateway, line["orderRef"])["status"] == "Filled", what="the closing sell to fill")
    assert gateway.positions().get("SPY", 0) == 0
    wait_for(lambda: holdings(project) == {}, what="dummy's book flat")
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the sell closed in the books")


@pytest.fixture
def manual(gateway) -> Iterator[IB]:
    """Another API client of the same account (client id 7): its orders are not the consumer's."""
    ensure_loop()  # an async test before this one may have left this thread without an event loop
    ib = IB()
    ib.connect("127.0.0.1", gateway.port, clientId=7, timeout=5)
    yield ib
    ib.disconnect()


@pytest.mark.usefixtures("consumer")
def test_orders_that_are_not_ours_are_never_cancelled(bus: Bus, gateway, project: str, manual: IB):
    gateway.hold_fills(True)
    manual.placeOrder(Stock("SPY", "SMART", "USD"), MarketOrder("SELL", 5, orderRef="by-hand"))
    wait_for(lambda: at_broker(gateway, "by-hand")["status"] == "Submitted", what="the manual order working")
    buy_ref, _ = working_buy(bus, gateway)

    result = ok(bus, CLOSE_ALL_GTC)
    assert [c["orderRef"] for c in result["cancelled"]] == [buy_ref]
    (kept,) = result["kept"]
    assert (kept["orderRef"], kept["quantity"]) == ("by-hand", -5)
    assert "never cancelled" in kept["reason"]
    assert at_broker(gateway, "by-hand")["status"] == "Submitted"
    assert at_broker(gateway, buy_ref)["status"] == "Cancelled"

    gateway.hold_fills(False)
    wait_for(lambda: at_broker(gateway, "by-hand")["status"] == "Filled", what="the manual sell to fill")
    assert gateway.positions().get("SPY") == -5
    assert {e["orderRef"] for e in gateway.executions()} == {"by-hand"}
    assert holdings(project).get("dummy") is None


@pytest.mark.usefixtures("consumer")
def test_a_dry_run_reports_what_it_would_cancel_and_cancels_nothing(bus: Bus, gateway, project: str):
    buy_ref, quantity = working_buy(bus, gateway)

    result = ok(bus, {**CLOSE_ALL_GTC, "dryRun": True})
    assert result["cancelled"] == []
    assert [(w["orderRef"], w["quantity"], w["reason"]) for w in result["wouldCancel"]] == [
        (buy_ref, quantity, "close-all")
    ]
    assert result["instruments"] == []  # with the buy cancelled, dummy holds nothing to close
    assert at_broker(gateway, buy_ref)["status"] == "Submitted"
    assert len(gateway.orders()) == 1
    assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [buy_ref]

    gateway.hold_fills(False)
    wait_for(lambda: gateway.positions().get("SPY") == quantity, what="the untouched buy to fill")
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": quantity}}, what="the buy booked to dummy")


@pytest.mark.slow(seconds=14)
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_crash_between_cancel_and_place_is_redelivered_without_doubling(bus: Bus, gateway, project: str, tmp_path):
    """SIGKILL once the opposing buy is cancelled at the broker (most runs: before the sell is placed); the
    redelivery must place the sell once, sized from the holdings, and cancel nothing twice."""
    gateway.hold_fills(True)
    gateway.set_latency(fixed=0.15)  # stretch cancel -> book -> place so the kill lands inside it
    standby = another_intents_subscription(project, STANDBY)  # gets its own copy of every message from here on
    first = ConsumerProcess(project, gateway.port, tmp_path / "first.log", ORDER_TIMEOUT_SECONDS="3")
    try:
        first.wait_ready()
        buy = spy(ok(bus, allocation({"SPY": 0.05})))
        assert buy["outcome"] == "working", buy
        message_id = bus.publish(allocation({"SPY": -0.03}))
        wait_for(lambda: at_broker(gateway, buy["orderRef"])["status"] == "Cancelled", what="the buy cancelled")
        first.kill()
    finally:
        first.stop()
    gateway.set_latency(fixed=0.0)

    second = ConsumerProcess(
        project, gateway.port, tmp_path / "second.log", ORDER_TIMEOUT_SECONDS="3", INTENTS_SUBSCRIPTION=standby
    )
    try:
        second.wait_ready()
        replies = wait_for(
            lambda: [r for r in bus.settle(quiet=0.2) if r["messageId"] == message_id], 120, "the redelivery's reply"
        )
        assert replies[-1]["status"] == "ok", replies
        line = spy(replies[-1]["result"])
        assert line["target"] < 0
        refs = [o["orderRef"] for o in gateway.orders()]
        assert sorted(refs) == sorted([buy["orderRef"], line["orderRef"]])  # each once: no second sell or buy
        sell = at_broker(gateway, line["orderRef"])
        assert (sell["action"], sell["totalQuantity"]) == ("SELL", -line["target"])
        assert at_broker(gateway, buy["orderRef"])["status"] == "Cancelled"
        assert closed_order(project, buy["orderRef"])["state"] == "Cancelled"

        gateway.hold_fills(False)
        wait_for(lambda: gateway.positions().get("SPY") == line["target"], what="the sell to fill")
        wait_for(lambda: holdings(project) == {"dummy": {"SPY": line["target"]}}, what="the sell booked to dummy")
        fills = mode_collection(project, "fills")
        assert sorted(f["execId"] for f in fills) == sorted(e["execId"] for e in gateway.executions())
        assert {f["orderRef"] for f in fills} == {line["orderRef"]}
    finally:
        second.stop()


def test_a_cancel_the_exchange_has_not_confirmed_is_sent_once_and_never_taken_for_done(
    consumer_factory, bus: Bus, gateway, project: str
):
    """The exchange is slow to confirm a cancel: the order is PendingCancel, and it can still fill. A second cancel
    gets IB's 161, on which ib_insync marks the order Cancelled: the consumer used to resend on every redelivery
    and take that for done, reply that close-all had cancelled a buy, and leave the buy's fill standing."""
    consumer_factory(order_timeout=1.0)  # waits 1 s for IB to confirm a cancel, then retries the message
    buy_ref, quantity = working_buy(bus, gateway)
    gateway.cancel_delay(600)  # the exchange has not confirmed within the test

    gave_up = bus.reply_to(bus.publish({"intent": "close-all", "params": {"strategies": ["dummy"]}}), timeout=90)
    assert gave_up["status"] == "error", gave_up
    assert gave_up["error"]["code"] == "dead_lettered"  # after its last attempt, for a person to look at
    assert "cancel_unconfirmed: IB has not confirmed the cancellation of " + buy_ref in gave_up["error"]["message"]
    assert [name for _, name in gateway.requests_received() if name == "cancelOrder"] == ["cancelOrder"]
    assert at_broker(gateway, buy_ref)["status"] == "PendingCancel"
    assert [o["orderRef"] for o in gateway.orders()] == [buy_ref]  # nothing sold against it
    assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [buy_ref]  # not closed on a guess

    gateway.hold_fills(False)  # the buy executes before the exchange takes the cancel
    wait_for(lambda: at_broker(gateway, buy_ref)["status"] == "Filled", what="the buy filled at the broker")
    bought = {e["execId"] for e in gateway.executions() if e["orderRef"] == buy_ref}
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": quantity}}, what="the buy's fill booked")
    assert {f["execId"] for f in mode_collection(project, "fills")} == bought
    assert closed_order(project, buy_ref)["state"] == "Filled"

    closed = ok(bus, {"intent": "close-all", "params": {"strategies": ["dummy"]}})
    sale = spy(closed)
    assert (sale["order"], sale["outcome"]) == (-quantity, "filled")
    assert gateway.positions().get("SPY", 0) == 0
    wait_for(lambda: holdings(project) == {}, what="dummy flat in the books")
    sold = {e["execId"] for e in gateway.executions() if e["orderRef"] == sale["orderRef"]}
    assert {f["execId"] for f in mode_collection(project, "fills")} == bought | sold


# IB's note on an order it keeps working (ib_async #191, #217); ib_insync marks the order Cancelled on it.
TIF_PRESET = "Order TIF was set to DAY based on order preset."


@pytest.mark.usefixtures("consumer")
@pytest.mark.parametrize("when", ["while placing", "after the reply"])
def test_an_error_ib_sends_about_a_working_order_is_no_cancel(bus: Bus, gateway, project: str, when: str):
    """ib_insync's Cancelled on IB's 10349 is not IB's: the order stays ours and working, the next allocation
    counts it and buys nothing more, and released it fills once, booked by execId."""
    gateway.hold_fills(True)
    noting = threading.Thread(
        target=lambda: gateway.send_error(
            10349, TIF_PRESET, wait_for(lambda: gateway.orders(), what="the buy at IB")[0]["orderId"]
        )
    )
    if when == "while placing":
        noting.start()
    first = ok(bus, allocation({"SPY": 0.05}))
    if when == "after the reply":
        noting.start()
    noting.join()
    line = spy(first)
    ref = line["orderRef"]
    assert at_broker(gateway, ref)["status"] == "Submitted"  # live at IB
    assert line["outcome"] == "working", line
    if when == "while placing":
        assert line["notes"] == [{"code": 10349, "message": TIF_PRESET}], line
        assert "alert" not in first

    again = ok(bus, allocation({"SPY": 0.05}))
    assert (spy(again)["working"], spy(again)["order"]) == (line["target"], 0), spy(again)
    assert [o["orderRef"] for o in gateway.orders()] == [ref]  # nothing bought twice
    assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [ref]

    gateway.hold_fills(False)
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": line["target"]}}, what="the buy booked to dummy")
    assert gateway.positions()["SPY"] == line["target"]
    executions = gateway.executions()
    assert {e["orderRef"] for e in executions} == {ref}
    assert {f["execId"] for f in mode_collection(project, "fills")} == {e["execId"] for e in executions}
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the buy closed in the books")
    assert closed_order(project, ref)["state"] == "Filled"


@pytest.mark.usefixtures("consumer")
def test_a_working_order_that_fills_while_the_next_allocation_reads_its_books_is_not_bought_twice(
    bus: Bus, gateway, project: str
):
    """Sizing reads the holdings and our working orders: a working buy that filled after the holdings were read and
    before IB listed its working orders was in neither, and the same target was bought a second time."""
    buy_ref, quantity = working_buy(bus, gateway)
    gateway.stall_request("reqAllOpenOrders", 3.0)
    since = len(gateway.requests_received())
    asked = bus.publish(allocation({"SPY": 0.05}))  # the same target: the working buy carries it

    def open_orders_asked() -> bool:
        return "reqAllOpenOrders" in [n for c, n in gateway.requests_received()[since:] if c == CLIENT_ID]

    wait_for(open_orders_asked, what="the allocation to ask IB for its working orders")
    gateway.hold_fills(False)  # the buy fills while that answer is on its way
    wait_for(lambda: gateway.positions().get("SPY") == quantity, what="the working buy to fill")

    reply = bus.reply_to(asked)
    assert reply["status"] == "ok", reply
    line = spy(reply["result"])
    assert (line["order"], line["current"] + line["working"]) == (0, quantity), line
    assert [(o["orderRef"], o["action"], o["status"]) for o in gateway.orders()] == [(buy_ref, "BUY", "Filled")]
    assert gateway.positions() == {"SPY": quantity}
    executions = gateway.executions()
    assert {e["orderRef"] for e in executions} == {buy_ref}
    wait_for(lambda: sorted(f["execId"] for f in mode_collection(project, "fills"))
             == sorted(e["execId"] for e in executions), what="each execution booked once")  # fmt: skip
    assert holdings(project) == {"dummy": {"SPY": quantity}}
    assert closed_order(project, buy_ref)["state"] == "Filled"
