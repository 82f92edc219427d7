"""A trading day's end and its opening: a DAY order expires when the clock passes its session's end, an OPG order
executes at the opening it is for (the next one the exchange holds), whatever moves the clock (IB's TWS Users'
Guide, Times in Force for Orders)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock, Trade

from ibsim import ThreadedGateway

from .conftest import wait_until

NEW_YORK = ZoneInfo("America/New_York")
SPY = Stock("SPY", "SMART", "USD")
WEDNESDAY_1530 = "2026-06-17T15:30:00-04:00"
BEFORE_THANKSGIVING = "2026-11-25T11:00:00-05:00"  # Wednesday; NYSE is closed on Thursday 2026-11-26


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    return {"hours": "regular"}


def executed(gw: ThreadedGateway) -> list[str]:
    """When each execution happened, New York time."""
    return [f"{dt.datetime.fromtimestamp(e['time'], NEW_YORK):%Y-%m-%dT%H:%M}" for e in gw.executions()]


def working(ib: IB, trade: Trade) -> Trade:
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="Submitted")
    return trade


@pytest.mark.parametrize("market_clock", [WEDNESDAY_1530], indirect=True)
def test_a_day_order_expires_at_the_close_not_at_the_next_roll_day(gw: ThreadedGateway, ib: IB) -> None:
    """IB cancels a DAY order still working at the end of its session (16:00 New York for a US stock without
    outsideRth). ibsim expired DAY orders only in `roll_day`: a clock moved past the close with `set_time` left
    yesterday's DAY order working, and it filled the next morning, an execution IB never makes."""
    trade = working(ib, ib.placeOrder(SPY, LimitOrder("BUY", 10, 400.0, tif="DAY", orderRef="day-below-the-market")))
    gw.set_time("2026-06-17T16:30:00-04:00")  # after the close
    wait_until(ib, trade.isDone, what="the DAY order to expire")
    after_close = trade.orderStatus.status
    gw.set_time("2026-06-18T10:00:00-04:00")  # Thursday's session
    gw.set_price("SPY", 399.0)
    ib.sleep(0.3)
    assert (after_close, executed(gw)) == ("Cancelled", []), (
        f"a DAY order placed Wednesday 15:30 is {after_close!r} at 16:30 and executed {executed(gw)}"
    )
    [order] = gw.orders()
    assert (order["status"], order["filled"]) == ("Cancelled", 0)


@pytest.mark.parametrize("market_clock", ["2026-06-17T15:59:58-04:00"], indirect=True)
def test_a_day_order_expires_as_the_clock_runs_past_the_close(gw: ThreadedGateway, ib: IB) -> None:
    """Nothing moves the clock but time: the order expires at 16:00 all the same."""
    trade = ib.placeOrder(SPY, LimitOrder("BUY", 10, 400.0, orderRef="day-at-the-bell"))
    wait_until(ib, trade.isDone, timeout=6, what="the DAY order to expire at 16:00")
    assert trade.orderStatus.status == "Cancelled"
    assert gw.now().astimezone(NEW_YORK).time() >= dt.time(16, 0)


@pytest.mark.parametrize("market_clock", [WEDNESDAY_1530], indirect=True)
def test_an_outside_rth_day_order_works_until_the_extended_session_ends(gw: ThreadedGateway, ib: IB) -> None:
    """IB: "Day orders submitted with 'Fill Outside RTH' after 4pm ET will be active until 8pm ET" (TWS Users'
    Guide, Times in Force for Orders)."""
    trade = working(ib, ib.placeOrder(SPY, LimitOrder("BUY", 10, 400.0, outsideRth=True, orderRef="day-ext")))
    gw.set_time("2026-06-17T19:59:00-04:00")
    ib.reqOpenOrders()  # a round trip: an expiry would have come before its answer
    assert trade.orderStatus.status == "Submitted"
    gw.set_time("2026-06-17T20:00:01-04:00")
    wait_until(ib, trade.isDone, what="the DAY order to expire at 20:00")
    assert trade.orderStatus.status == "Cancelled"


@pytest.mark.parametrize("market_clock", [BEFORE_THANKSGIVING], indirect=True)
def test_an_opg_order_placed_in_the_session_does_not_execute_on_an_exchange_holiday(
    gw: ThreadedGateway, ib: IB
) -> None:
    """An OPG (market-on-open) order placed during Wednesday's session is for the next opening auction: before
    Thanksgiving that is Friday 2026-11-27 09:30. `roll_day` goes to the next weekday, Thursday (NYSE closed), and
    executed every in-session OPG order there, on a day the exchange holds no auction."""
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 10, tif="OPG", orderRef="opg-before-thanksgiving"))
    wait_until(ib, lambda: trade.orderStatus.status in ("PreSubmitted", "Submitted"), what="accepted")
    gw.roll_day()  # the next weekday: Thursday 2026-11-26, Thanksgiving
    ib.reqOpenOrders()
    assert gw.now().astimezone(NEW_YORK).date() == dt.date(2026, 11, 26)
    assert executed(gw) == [], f"the OPG order executed on Thanksgiving (NYSE closed): {executed(gw)}"
    assert trade.orderStatus.status == "Submitted"
    gw.roll_day()  # Friday 2026-11-27: the exchange opened at 09:30
    wait_until(ib, trade.isDone, what="the OPG order to execute at Friday's opening")
    assert (trade.orderStatus.status, executed(gw)) == ("Filled", ["2026-11-27T11:00"])


@pytest.mark.parametrize("market_clock", [BEFORE_THANKSGIVING], indirect=True)
def test_an_opg_order_executes_when_the_clock_reaches_its_opening(gw: ThreadedGateway, ib: IB) -> None:
    """Not only a day roll: `set_time` to the opening executes it, and a limit-on-open the opening does not reach is
    cancelled there (an opening order does not carry on into the session)."""
    moo = working(ib, ib.placeOrder(SPY, MarketOrder("BUY", 10, tif="OPG", orderRef="moo")))
    loo = working(ib, ib.placeOrder(SPY, LimitOrder("BUY", 10, 400.0, tif="OPG", orderRef="loo")))
    gw.set_time("2026-11-27T09:29:00-05:00")
    ib.reqOpenOrders()
    assert (moo.orderStatus.status, loo.orderStatus.status, executed(gw)) == ("Submitted", "Submitted", [])
    gw.set_time("2026-11-27T09:30:00-05:00")
    wait_until(ib, lambda: moo.isDone() and loo.isDone(), what="the opening")
    assert (moo.orderStatus.status, loo.orderStatus.status) == ("Filled", "Cancelled")
    assert executed(gw) == ["2026-11-27T09:30"]
