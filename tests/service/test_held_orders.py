"""Orders IB holds: for the open (hours: regular, placed with ignoreMarketHours on a closed market; 399), and a short
sale until shares are located (404): reported as working and held (IB's code and text, and when it will be placed)
as soon as IB says so, booked as open, and the one held for the open booked by execId when it executes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import CLOCKS, Bus, allocation, holdings, mode_collection, wait_for

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")


@pytest.fixture
def consumer(consumer_factory):
    """An order timeout far beyond the reply's wait: a held order must be reported on IB's 399 at once, not when
    the wait for its fill runs out."""
    return consumer_factory(order_timeout=600.0)


@pytest.fixture
def gateway_scenario() -> dict[str, Any]:
    return {"hours": "regular"}


@pytest.mark.parametrize("market_clock", [CLOCKS["saturday"]], indirect=True)
def test_an_order_held_for_the_open_is_working_until_it_fills_at_the_open(bus: Bus, gateway, project: str):
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, ignoreMarketHours=True)))
    assert reply["status"] == "ok", reply
    (spy,) = reply["result"]["instruments"]
    assert spy["outcome"] == "working", spy
    assert spy["held"]["code"] == 399
    assert "will not be placed at the exchange until 2026-12-07 09:30:00 US/Eastern" in spy["held"]["message"]
    assert spy["held"]["until"] == "2026-12-07T09:30:00-05:00"
    [order] = gateway.orders()
    assert (order["orderRef"], order["status"], order["filled"]) == (spy["orderRef"], "PreSubmitted", 0)
    assert gateway.executions() == []
    assert holdings(project) == {}
    assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [spy["orderRef"]]

    gateway.set_time("2026-12-07T09:30:00-05:00")  # Monday's open
    wait_for(lambda: gateway.positions().get("SPY") == spy["target"], what="the held order to fill at the open")
    executions = gateway.executions()
    assert {e["orderRef"] for e in executions} == {spy["orderRef"]}
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": spy["target"]}}, what="the fill booked to dummy")
    fills = {f["execId"]: f for f in mode_collection(project, "fills")}
    assert set(fills) == {e["execId"] for e in executions}
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the order closed in the books")


LOCATE_SCENARIO = {
    "instruments": [
        {"symbol": "SPY", "secType": "ETF", "primaryExchange": "ARCA", "price": 520.0},
        {"symbol": "HTB", "secType": "STK", "primaryExchange": "NASDAQ", "price": 50.0, "shortable": False},
    ]
}


@pytest.mark.parametrize("gateway_scenario", [LOCATE_SCENARIO])
def test_a_short_sale_held_for_a_locate_is_reported_working_and_held_at_once(bus: Bus, gateway, project: str):
    """IB holds a sale that would go short in a stock it has no shares to borrow (404, whyHeld "locate"): the reply
    says so at once, with IB's text (not after the order timeout, far beyond the reply's wait here), the order is
    booked as open, and the other leg trades as usual. The next allocation keeps the held leg rather than send
    another."""
    message_id = bus.publish(allocation({"SPY": 0.05, "HTB": -0.01}))
    reply = bus.reply_to(message_id, timeout=30)
    assert reply["status"] == "ok", reply
    htb, spy = sorted(reply["result"]["instruments"], key=lambda i: i["instrument"])
    assert (htb["outcome"], htb["held"]) == (
        "working",
        {"code": 404, "message": "Order held while securities are located.", "until": None},
    ), htb
    assert spy["outcome"] == "filled", spy
    ((order,),) = [[o for o in gateway.orders() if o["orderRef"] == htb["orderRef"]]]
    assert (order["action"], order["status"], order["filled"]) == ("SELL", "PreSubmitted", 0)
    assert {e["orderRef"] for e in gateway.executions()} == {spy["orderRef"]}
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": spy["target"]}}, what="SPY's fill booked")
    fills = mode_collection(project, "fills")
    assert sorted(f["execId"] for f in fills) == sorted(e["execId"] for e in gateway.executions())
    assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [htb["orderRef"]]

    again = bus.reply_to(bus.publish(allocation({"SPY": 0.05, "HTB": -0.01}, idempotencyKey="again")), timeout=30)
    assert (again["status"], again["requestId"], again.get("duplicate")) == ("ok", "again", None), again
    assert [o["orderRef"] for o in gateway.orders() if o["symbol"] == "HTB"] == [htb["orderRef"]]


@pytest.mark.parametrize("market_clock", ["2026-06-17T17:30:00-04:00"], indirect=True)  # a Wednesday, after the close
@pytest.mark.parametrize(
    "properties", [{"tif": "OPG"}, {"goodAfterTime": "20260618 09:35:00 US/Eastern"}], ids=["opg", "good-after"]
)
def test_an_order_placed_after_the_close_for_the_next_session_is_no_open_order_to_eod_check(
    bus: Bus, gateway, project: str, properties: dict[str, str]
):
    """README suggests an order placed after the close be shaped for the next session (tif OPG, or a goodAfterTime
    at or after the next open): IB holds it, and it is meant to work over the close. eod-check counted only GTC
    and GTD as knowingly open, and alerted on it as an order left working. Found by a review of calendars."""
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, params={"orderProperties": properties})))
    assert reply["status"] == "ok", reply
    (line,) = reply["result"]["instruments"]
    assert line["outcome"] == "working", line
    (order,) = gateway.orders()
    assert (order["orderRef"], order["status"]) == (line["orderRef"], "PreSubmitted")

    report = bus.reply_to(bus.publish({"intent": "eod-check", "params": {}}))
    assert report["status"] == "ok", report
    assert report["result"]["openOrders"] == []
    assert [o["orderRef"] for o in report["result"]["gtcOrders"]] == [line["orderRef"]]
    assert report["result"]["clean"] is True, report["result"]
    assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [line["orderRef"]]
