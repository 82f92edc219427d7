"""A gateway whose API is read-only, through Pub/Sub, the simulated gateway and Firestore (decision 26).

IBC's ReadOnlyApi=yes is gateway-image's default for live. IB Gateway then refuses orders, cancels and the lists of
open and completed orders with 321, and never ends a refused list. ib_insync's plain connect asks for both lists,
so the consumer waited out their timeouts, called the connect failed and started over, for ever: not even a
summary was answered. Now the connect notices the refusal and carries on read-only: reads answer, a trading intent
gets one clear rejection and nothing reaches the broker, and a gateway made writable trades again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.support import Bus, allocation, holdings, mode_collection, mode_document, wait_for, write_config

pytestmark = pytest.mark.usefixtures("paper_config")


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    return {"readOnlyApi": True}


def order_requests(gateway) -> list[str]:
    wanted = {"placeOrder", "cancelOrder", "reqGlobalCancel", "reqAllOpenOrders"}
    return [name for _, name in gateway.requests_received() if name in wanted]


def test_a_read_only_gateway_answers_reads_refuses_trading_once_and_trades_when_made_writable(
    consumer_factory, bus: Bus, gateway, project: str
):
    consumer_factory(order_timeout=3.0)
    ping = bus.reply_to(bus.publish({"intent": "ping"}))
    assert ping["result"]["connected"] is True, ping
    assert ping["result"]["readOnlyApi"] is True
    # One connect: the refused downloads were ended when refused, not waited out and retried.
    assert ping["result"]["connections"] == 1
    assert [n for _, n in gateway.requests_received() if n == "startApi"] == ["startApi"]

    summary = bus.reply_to(bus.publish({"intent": "summary"}))
    assert summary["status"] == "ok", summary
    assert summary["result"]["openOrders"] is None  # unknown, not "none"
    assert "read-only" in summary["result"]["unavailable"]["openOrders"]
    assert summary["result"]["positions"] == []
    assert summary["result"]["accountValues"]

    refused = bus.replies_to(bus.publish(allocation({"SPY": 0.05}, idempotencyKey="read-only")))
    assert [r["status"] for r in refused] == ["rejected"], refused
    assert refused[0]["error"]["code"] == "gateway_read_only"
    assert "IB_READ_ONLY_API=no" in refused[0]["error"]["message"]
    # Nothing was sent that IB would refuse, and nothing was written as if it had been placed.
    assert order_requests(gateway) == []
    assert gateway.orders() == []
    assert mode_collection(project, "openOrders") == []
    assert mode_collection(project, "orders") == []

    # A dry run too: its plan starts from the broker's working orders, which IB refuses a read-only API.
    dry = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, dry_run=True)))
    assert (dry["status"], dry["error"]["code"]) == ("rejected", "gateway_read_only")
    assert order_requests(gateway) == []

    # The operator redeploys with IB_READ_ONLY_API=no: the gateway restarts writable.
    gateway.read_only_api(False)
    gateway.restart()
    after = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert after["status"] == "ok", after
    (spy,) = [i for i in after["result"]["instruments"] if i["instrument"] == "SPY"]
    assert spy["outcome"] == "filled"
    assert [o["orderRef"] for o in gateway.orders()] == [spy["orderRef"]]
    executed = {e["execId"] for e in gateway.executions() if e["orderRef"] == spy["orderRef"]}
    assert executed
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": spy["order"]}}, what="the fill booked")
    assert {f["execId"] for f in mode_collection(project, "fills")} == executed
    ping = bus.reply_to(bus.publish({"intent": "ping"}))
    assert ping["result"]["readOnlyApi"] is False


def test_an_order_working_when_the_gateway_turns_read_only_stays_open_in_the_books_and_its_fills_are_booked(
    consumer_factory, bus: Bus, gateway, project: str
):
    """Half done: an order placed while writable is still working when the gateway comes back read-only. What became
    of it cannot be asked, so the books keep it open and eod-check says so; its fills are booked by execId, and the
    order is closed when IB reports it filled."""
    gateway.read_only_api(False)
    gateway.hold_fills(True)
    consumer_factory(order_timeout=1.0)
    placed = bus.reply_to(bus.publish(allocation({"TLT": 0.05})))
    (tlt,) = placed["result"]["instruments"]
    assert tlt["outcome"] == "working", placed
    ref = tlt["orderRef"]

    gateway.read_only_api(True)
    gateway.restart()
    wait_for(lambda: bus.reply_to(bus.publish({"intent": "ping"}))["result"].get("readOnlyApi"), what="read-only")
    day = bus.reply_to(bus.publish({"intent": "eod-check", "params": {}}))
    assert day["status"] == "ok", day
    assert day["result"]["clean"] is False
    assert day["alert"] is True
    assert day["result"]["openOrders"] is None
    assert "read-only" in day["result"]["unavailable"]["openOrders"]
    assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [ref]
    assert [(o["orderRef"], o["status"]) for o in gateway.orders()] == [(ref, "Submitted")]
    # risk-check goes by the books for working orders: this one, two hours old, is stale.
    mode_document(project).collection("openOrders").document(ref).update(
        {"createdAt": datetime.now(UTC) - timedelta(hours=2)}
    )
    write_config(project, risk={"staleOrders": {"maxMinutes": 60}})
    risk = bus.reply_to(bus.publish({"intent": "risk-check", "params": {}}))
    (stale,) = [line for line in risk["result"]["limits"] if line["limit"] == "staleOrders"]
    assert stale["verdict"] == "breach", risk
    assert [o["orderRef"] for o in stale["orders"]] == [ref]

    gateway.hold_fills(False)  # the order fills at the broker
    filled = wait_for(lambda: gateway.positions().get("TLT"), what="the fill at the broker")
    executed = {e["execId"] for e in gateway.executions() if e["orderRef"] == ref}
    # Booked live if ib_insync knew the order (IB's openOrder on the fill tells it), else by the sweep: reqExecutions
    # still answers a read-only API. Either way by execId, once.
    swept = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert swept["status"] == "ok", swept
    assert {f["execId"] for f in swept["result"]["fillsApplied"]} <= executed
    assert holdings(project) == {"dummy": {"TLT": filled}}
    assert {f["execId"] for f in mode_collection(project, "fills")} == executed
    # Closed once IB itself reported the order filled (its status on the live stream), not on a guess.
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the order closed")
    (closed,) = mode_collection(project, "orders")
    assert (closed["orderRef"], closed["filled"]) == (ref, filled)

    # A breach whose action is to reduce places nothing: IB would refuse the order. (ib_insync reports no live fill
    # for an order a read-only connect never downloaded, so the consumer cannot know to wait for the account values
    # that follow it: the test waits for the portfolio to hold the position first.)
    wait_for(
        lambda: any(
            p["symbol"] == "TLT" and p["position"] == filled
            for p in bus.reply_to(bus.publish({"intent": "summary"}))["result"]["portfolio"]
        ),
        what="the account window to count the fill",
    )
    write_config(project, risk={"leverage": {"max": 0.001, "action": "reduce"}})
    risk = bus.reply_to(bus.publish({"intent": "risk-check", "params": {}}))
    assert risk["alert"] is True, risk
    (reduced,) = risk["result"]["reduced"]
    assert "read-only" in reduced["skipped"]
    assert [o["orderRef"] for o in gateway.orders()] == [ref]
    assert holdings(project) == {"dummy": {"TLT": filled}}
