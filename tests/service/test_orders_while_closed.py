"""Orders IB takes while the market is closed (issue 15), through Pub/Sub, the simulated gateway (hours: regular) and
Firestore: the allocation's orderProperties decide whether the closed-market check lets them through. An OPG order
is held until the open and executes then; a goodAfterTime order waits for its time; an outsideRth limit order for a
stock trades in the extended session. Without them the same message is rejected before any order."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.support import CLOCKS, Bus, activity, allocation, holdings, mode_collection, wait_for, write_config

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")

PRE_MARKET = "2026-06-17T08:00:00-04:00"  # a Wednesday: NYSE's extended session is open, the regular one at 09:30


@pytest.fixture
def gateway_scenario() -> dict[str, Any]:
    return {"hours": "regular"}


def place(bus: Bus, properties: dict[str, Any]) -> dict[str, Any]:
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, params={"orderProperties": properties})))
    assert reply["status"] == "ok", reply
    (spy,) = reply["result"]["instruments"]
    return spy


def assert_fills_booked(gateway: Any, project: str, spy: dict[str, Any]) -> None:
    executions = gateway.executions()
    assert {e["orderRef"] for e in executions} == {spy["orderRef"]}
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": spy["target"]}}, what="the fills booked to dummy")
    fills = {f["execId"] for f in mode_collection(project, "fills")}
    assert fills == {e["execId"] for e in executions}
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the order closed in the books")


@pytest.mark.parametrize("market_clock", [PRE_MARKET], indirect=True)
def test_an_opg_order_is_taken_before_the_open_and_executes_at_the_open(bus: Bus, gateway, project: str):
    refused = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert (refused["status"], refused["error"]["code"]) == ("rejected", "market_closed"), refused
    assert gateway.orders() == []

    spy = place(bus, {"tif": "OPG"})
    assert spy["outcome"] == "working", spy
    assert spy["held"]["until"] == "2026-06-17T09:30:00-04:00"
    [order] = gateway.orders()
    assert (order["orderRef"], order["tif"], order["status"], order["filled"]) == (
        spy["orderRef"],
        "OPG",
        "PreSubmitted",
        0,
    )
    assert gateway.executions() == []
    assert [o["_id"] for o in mode_collection(project, "openOrders")] == [spy["orderRef"]]
    assert holdings(project) == {}

    gateway.set_time("2026-06-17T09:30:00-04:00")
    wait_for(lambda: gateway.positions().get("SPY") == spy["target"], what="the OPG order to execute at the open")
    assert_fills_booked(gateway, project, spy)


@pytest.mark.parametrize("market_clock", [PRE_MARKET], indirect=True)
def test_a_good_after_time_order_waits_for_its_time_then_trades(bus: Bus, gateway, project: str):
    spy = place(bus, {"goodAfterTime": "20260617 09:45:00 US/Eastern"})
    assert spy["outcome"] == "working", spy
    assert spy["held"]["until"] == "2026-06-17T09:45:00-04:00"
    assert [o["_id"] for o in mode_collection(project, "openOrders")] == [spy["orderRef"]]

    gateway.set_time("2026-06-17T09:35:00-04:00")  # the market is open, the order's time has not come
    bus.reply_to(bus.publish({"intent": "ping"}))  # a round trip through the consumer and the gateway
    [order] = gateway.orders()
    assert (order["orderRef"], order["status"], order["filled"]) == (spy["orderRef"], "PreSubmitted", 0)
    assert gateway.executions() == []

    gateway.set_time("2026-06-17T09:45:00-04:00")
    wait_for(lambda: gateway.positions().get("SPY") == spy["target"], what="the order to trade after its time")
    assert_fills_booked(gateway, project, spy)


@pytest.mark.parametrize("market_clock", ["2026-06-17T08:00:00+02:00"], indirect=True)  # Xetra opens at 09:00
def test_a_good_after_time_without_a_zone_is_sent_in_the_instruments_zone(bus: Bus, gateway, project: str):
    """Without a zone, the schema (and the closed-market check) read a goodAfterTime in the instrument's zone; IB
    reads it in the zone chosen at login (New York, gateway-image's default): SAP's 09:15 was worked at 09:15 New
    York, six hours late. The consumer names the instrument's zone on the order."""
    body = allocation({"SAP": 0.05}, params={"orderProperties": {"goodAfterTime": "20260617 09:15:00"}})
    body["params"]["strategyParams"]["dummy"]["instruments"] = {"SAP": {"exchange": "IBIS", "currency": "EUR"}}
    reply = bus.reply_to(bus.publish(body))
    assert reply["status"] == "ok", reply
    (sap,) = reply["result"]["instruments"]
    assert (sap["outcome"], sap["held"]["until"]) == ("working", "2026-06-17T09:15:00+02:00"), sap
    [order] = gateway.orders()
    assert (order["orderRef"], order["goodAfterTime"]) == (sap["orderRef"], "20260617 09:15:00 Europe/Berlin")

    gateway.set_time("2026-06-17T09:10:00+02:00")  # Xetra is open, the order's time has not come
    bus.reply_to(bus.publish({"intent": "ping"}))  # a round trip through the consumer and the gateway
    assert [(o["status"], o["filled"]) for o in gateway.orders()] == [("PreSubmitted", 0)]
    gateway.set_time("2026-06-17T09:20:00+02:00")  # 03:20 in New York
    wait_for(lambda: gateway.positions().get("SAP") == sap["target"], what="SAP to trade after 09:15 Berlin time")
    executions = gateway.executions()
    assert {e["orderRef"] for e in executions} == {sap["orderRef"]}
    wait_for(lambda: {f["execId"] for f in mode_collection(project, "fills")} == {e["execId"] for e in executions},
             what="the fills booked by execId")  # fmt: skip


@pytest.mark.parametrize("market_clock", [PRE_MARKET], indirect=True)
def test_an_outside_rth_limit_order_trades_in_the_extended_session(bus: Bus, gateway, project: str):
    write_config(project, orderDefaults={"orderType": "LMT", "limitOffsetBps": 5, "algo": "none", "tif": "DAY"})
    spy = place(bus, {"outsideRth": True})
    assert spy["outcome"] == "filled", spy
    [order] = gateway.orders()
    assert (order["orderRef"], order["orderType"], order["status"]) == (spy["orderRef"], "LMT", "Filled")
    assert_fills_booked(gateway, project, spy)


@pytest.mark.parametrize("market_clock", ["2026-06-17T21:00:00-04:00"], indirect=True)
def test_an_outside_rth_limit_order_is_rejected_when_even_the_extended_session_is_closed(
    bus: Bus, gateway, project: str
):
    write_config(project, orderDefaults={"orderType": "LMT", "algo": "none", "tif": "DAY"})
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, params={"orderProperties": {"outsideRth": True}})))
    assert (reply["status"], reply["error"]["code"]) == ("rejected", "market_closed"), reply
    assert "SPY (opens 2026-06-18 09:30 America/New_York)" in reply["error"]["message"]
    assert gateway.orders() == []


@pytest.mark.parametrize("market_clock", [CLOCKS["saturday"]], indirect=True)
def test_a_good_after_time_naming_a_folder_of_zones_gets_one_invalid_params_reply_and_no_order(
    bus: Bus, gateway, project: str
):
    """'America' is a folder of the tz database, not a zone: the closed-market check crashed on it (IsADirectoryError)
    on every delivery, and the message was dead-lettered with a path of the machine in its one reply."""
    properties = {"goodAfterTime": "20261207 09:35:00 America"}
    message_id = bus.publish(allocation({"SPY": 0.05}, params={"orderProperties": properties}))
    (reply,) = bus.replies_to(message_id)
    assert (reply["status"], reply["error"]["code"]) == ("error", "invalid_params"), reply
    assert "params.orderProperties.goodAfterTime" in reply["error"]["message"]
    assert gateway.orders() == []
    assert holdings(project) == {}


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize("market_clock", ["2026-06-17T09:29:45-04:00"], indirect=True)  # 15 s before the open
def test_an_allocation_a_moment_before_the_open_waits_for_it_and_trades(bus: Bus, gateway, project: str):
    """The open-allocation job fires at 09:30:00; a gateway whose clock reads a moment earlier saw the market
    closed, and the rejection, stored under the slot's idempotency key, answered every retry of the day: no trade.
    A market opening within OPEN_GRACE_SECONDS is waited for. Found by a review of calendars."""
    message_id = bus.publish(allocation({"SPY": 0.05}))
    reply = bus.reply_to(message_id, timeout=60)
    assert reply["status"] == "ok", reply
    (spy,) = reply["result"]["instruments"]
    assert spy["outcome"] == "filled", spy
    (execution,) = gateway.executions()
    assert execution["orderRef"] == spy["orderRef"]
    opened = datetime.fromisoformat("2026-06-17T09:30:00-04:00").timestamp()
    assert execution["time"] >= opened, execution  # at or after the open
    assert_fills_booked(gateway, project, spy)
    (record,) = [a for a in activity(project) if a["messageId"] == message_id]
    assert record["deliveryAttempt"] == 1  # waited for the open in the first delivery, not retried into it


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize("market_clock", ["2026-06-17T09:29:45-04:00"], indirect=True)  # 15 s before the open
def test_the_kill_switch_turned_on_while_an_allocation_waits_for_the_open_stops_it(
    bus: Bus, gateway: Any, project: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Decision 58: an allocation 15 s before the open holds the trading lock and sleeps until the open, then
    trades. Its config (the kill switch) was read before the wait (decision 50 reads it once the lock is held, so
    that nothing trades past a halt) and is not read again: an operator who turns trading off at 09:29:50, having
    seen something wrong before the open, still gets the open's order placed at 09:30:01. Before decision 58 the
    allocation was rejected (market closed); now the emergency stop is blind for up to a minute."""
    message_id = bus.publish(allocation({"SPY": 0.05}))
    wait_for(
        lambda: any("a market opens in moments" in r.getMessage() for r in caplog.records),
        timeout=30,
        what="the allocation to wait for the open",
    )
    assert gateway.orders() == []
    write_config(project, tradingEnabled=False, haltedReason="operator: stop before the open")
    reply = bus.reply_to(message_id, timeout=90)
    placed = [(o["orderRef"], o["action"], o["totalQuantity"], o["status"]) for o in gateway.orders()]
    assert placed == [], (
        f"trading was turned off while the allocation waited for the open, yet it placed {placed} "
        f"(reply status {reply['status']}, error {reply.get('error')})"
    )
    assert reply["status"] == "rejected", reply


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize("market_clock", ["2026-06-17T09:29:45-04:00"], indirect=True)  # 15 s before the open
def test_a_limit_order_placed_after_waiting_for_the_open_is_priced_from_a_quote_taken_at_the_open(
    bus: Bus, gateway: Any, project: str, caplog: pytest.LogCaptureFixture
) -> None:
    """orderType LMT: the allocation quotes SPY to size it (the quote its marketable limit is priced from), then
    waits up to a minute for the open (decision 58) and places the limit from that pre-open quote. send_orders
    quotes afresh after a long wait for cancels ("waiting out cancels can take long: quote afresh"), but not after
    this one: SPY opening 1% higher than it was quoted before the open leaves the open's BUY resting below the
    market (limit = old ask + 10 bps), reported working, unfilled, for the rest of the day."""
    write_config(
        project,
        exposure={"overall": 1.0, "strategies": {"dummy": 0.5}},
        orderDefaults={"orderType": "LMT", "algo": "none", "tif": "DAY", "limitOffsetBps": 10},
    )
    message_id = bus.publish(allocation({"SPY": 0.05}))
    wait_for(
        lambda: any("a market opens in moments" in r.getMessage() for r in caplog.records),
        timeout=30,
        what="the allocation to wait for the open",
    )
    before = gateway.call(lambda: gateway.server._instrument("SPY").price)
    gateway.set_price("SPY", round(before * 1.01, 2))  # the open is 1% above the pre-open quote
    reply = bus.reply_to(message_id, timeout=90)
    assert reply["status"] == "ok", reply
    (spy,) = reply["result"]["instruments"]
    (sent,) = [o for o in gateway.orders() if o["orderRef"] == spy["orderRef"]]
    assert (spy["outcome"], sent["status"]) == ("filled", "Filled"), (
        f"SPY opened at {before * 1.01:.2f} (quoted {before:.2f} before the open); the open's BUY was sent at the "
        f"limit {sent['lmtPrice']} from the pre-open quote and is {sent['status']} (outcome {spy['outcome']}, "
        f"filled {spy.get('filled')} of {spy['order']})"
    )


@pytest.mark.slow(seconds=25)
@pytest.mark.parametrize("market_clock", ["2026-06-17T09:29:45-04:00"], indirect=True)  # 15 s before the open
def test_an_allocation_whose_expiry_passes_while_it_waits_for_the_open_places_nothing(
    bus: Bus, gateway: Any, project: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The same wait (decision 58) outlives the message's expiresAt, checked once before it: the sender said
    "not after 5 s from now" and the order goes to IB ~15 s later (decision 54: no order past a message's expiry)."""
    from datetime import UTC, datetime, timedelta

    expires = datetime.now(UTC) + timedelta(seconds=5)
    message_id = bus.publish(allocation({"SPY": 0.05}, expiresAt=expires.isoformat().replace("+00:00", "Z")))
    wait_for(
        lambda: any("a market opens in moments" in r.getMessage() for r in caplog.records),
        timeout=30,
        what="the allocation to wait for the open",
    )
    reply = bus.reply_to(message_id, timeout=90)
    placed = [
        (o["orderRef"], o["action"], o["totalQuantity"], o["status"], e["time"])
        for o in gateway.orders()
        for e in gateway.executions()
        if e["orderRef"] == o["orderRef"]
    ]
    assert placed == [], (
        f"the message expired at {expires.isoformat()} (wall clock), it is now {datetime.now(UTC).isoformat()}, "
        f"and the allocation placed and filled {placed} after waiting for the open (reply status {reply['status']})"
    )
