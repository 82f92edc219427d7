"""hours: regular: orders outside the session are held with IB's 399 and placed at the open; holidays and early
closes come from the exchange's calendar and show in contract details as IB shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from ib_insync import IB, Forex, Future, LimitOrder, MarketOrder, Stock, Trade

from ibsim import ThreadedGateway
from tests.support import CLOCKS

from .conftest import wait_until

SPY = Stock("SPY", "SMART", "USD")
EURUSD = Forex("EURUSD")
ES = Future("ES", exchange="CME")


@pytest.fixture
def gateway_scenario() -> dict[str, Any]:
    return {"hours": "regular"}


def errors_of(ib: IB) -> list[tuple[int, int, str]]:
    seen: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: seen.append((req_id, code, msg))
    return seen


def held(ib: IB, trade: Trade, errors: list[tuple[int, int, str]], code: int = 399) -> str:
    """IB's warning that holds the order (a small forex order also gets a 399 that holds nothing: an odd lot)."""

    def holding() -> list[str]:
        return [m for oid, c, m in errors if (oid, c) == (trade.order.orderId, code) and "odd lot" not in m]

    wait_until(ib, lambda: bool(holding()), what=f"warning {code}")
    return holding()[0]


@pytest.mark.parametrize(
    ("market_clock", "opens"),
    [
        (CLOCKS["saturday"], "2026-12-07 09:30:00 US/Eastern"),
        (CLOCKS["thanksgiving"], "2026-11-27 09:30:00 US/Eastern"),
        ("2026-11-27T13:30:00-05:00", "2026-11-30 09:30:00 US/Eastern"),  # after the 13:00 early close
        ("2026-06-17T20:00:00-04:00", "2026-06-18 09:30:00 US/Eastern"),
    ],
    ids=["saturday", "thanksgiving", "after-early-close", "after-the-close"],
    indirect=["market_clock"],
)
def test_market_order_outside_the_session_is_held_with_399_naming_the_open(
    gw: ThreadedGateway, ib: IB, opens: str
) -> None:
    errors = errors_of(ib)
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 10, orderRef="held-1"))
    message = held(ib, trade, errors)
    assert message == (
        f"Order Message:\nBUY 10 SPY ARCA\nWarning: your order will not be placed at the exchange until {opens}"
    )
    ib.reqOpenOrders()  # a round trip after the placement: a fill would have come before its answer
    assert trade.orderStatus.status == "PreSubmitted"
    [order] = gw.orders()
    assert (order["orderRef"], order["status"], order["filled"]) == ("held-1", "PreSubmitted", 0)
    assert gw.executions() == []


def test_held_order_fills_at_the_open_on_a_clock_move(gw: ThreadedGateway, ib: IB) -> None:
    gw.set_time(CLOCKS["thanksgiving"])
    errors = errors_of(ib)
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 10, orderRef="held-2"))
    held(ib, trade, errors)
    gw.set_time("2026-11-27T09:30:00-05:00")
    wait_until(ib, trade.isDone, what="the held order filled at the open")
    assert trade.orderStatus.status == "Filled"
    [execution] = gw.executions()
    assert (execution["orderRef"], execution["shares"]) == ("held-2", 10)
    opened = datetime.fromisoformat("2026-11-27T09:30:00-05:00").timestamp()
    assert opened <= execution["time"] < opened + 60
    assert gw.positions()["SPY"] == 10


def test_held_day_order_survives_the_day_roll_and_fills_at_the_open(gw: ThreadedGateway, ib: IB) -> None:
    gw.set_time(CLOCKS["saturday"])
    errors = errors_of(ib)
    trade = ib.placeOrder(SPY, MarketOrder("SELL", 5, orderRef="held-3"))
    held(ib, trade, errors)
    gw.roll_day()  # Saturday noon -> Monday noon: the DAY order was for Monday's session, not expired by the roll
    wait_until(ib, trade.isDone, what="the held order filled after the roll")
    assert trade.orderStatus.status == "Filled"
    assert [e["orderRef"] for e in gw.executions()] == ["held-3"]


@pytest.mark.parametrize("market_clock", ["2026-06-17T18:00:00-04:00"], indirect=True)
def test_outside_rth_limit_fills_in_the_extended_session_a_market_order_does_not(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    limit = LimitOrder("BUY", 10, 600.0, orderRef="ext-lmt", outsideRth=True)
    lmt = ib.placeOrder(SPY, limit)
    wait_until(ib, lmt.isDone, what="the outsideRth limit filled at 18:00")
    assert lmt.orderStatus.status == "Filled"
    mkt = ib.placeOrder(SPY, MarketOrder("BUY", 10, orderRef="ext-mkt", outsideRth=True))
    assert "is ignored based on the order type" in held(ib, mkt, errors, code=2109)
    assert "2026-06-18 09:30:00 US/Eastern" in held(ib, mkt, errors)
    assert mkt.orderStatus.status == "PreSubmitted"
    assert [e["orderRef"] for e in gw.executions()] == ["ext-lmt"]


@pytest.mark.parametrize("market_clock", [CLOCKS["thanksgiving"]], indirect=True)
def test_contract_details_show_the_holiday_closed_and_the_early_close(ib: IB) -> None:
    [d] = ib.reqContractDetails(SPY)
    liquid = d.liquidHours.split(";")
    trading = d.tradingHours.split(";")
    assert "20261126:CLOSED" in liquid
    assert "20261126:CLOSED" in trading
    assert "20261127:0930-20261127:1300" in liquid
    assert "20261127:0400-20261127:1700" in trading
    assert "20261130:0930-20261130:1600" in liquid


@pytest.mark.parametrize("market_clock", ["2026-11-25T12:00:00-05:00"], indirect=True)
def test_futures_close_at_noon_chicago_on_thanksgiving_as_cme_globex_does(ib: IB) -> None:
    [d] = ib.reqContractDetails(ES)
    assert d.timeZoneId == "America/Chicago"
    trading, liquid = d.tradingHours.split(";"), d.liquidHours.split(";")
    assert "20261124:1700-20261125:1600" in trading  # an ordinary session: Sunday-Thursday 17:00 to 16:00
    assert "20261125:1700-20261126:1200" in trading  # Thanksgiving: the session ends at 12:00
    assert "20261126:0830-20261126:1200" in liquid
    assert "20261125:0830-20261125:1500" in liquid


@pytest.mark.parametrize(
    ("market_clock", "contract", "closed"),
    [
        ("2026-12-23T12:00:00-05:00", ES, ["20261224:CLOSED", "20261225:CLOSED"]),  # Christmas
        ("2026-04-01T12:00:00-04:00", ES, ["20260402:CLOSED", "20260403:CLOSED"]),  # Good Friday
        ("2026-12-23T12:00:00-05:00", EURUSD, ["20261224:CLOSED", "20261225:CLOSED"]),  # Christmas
        ("2026-12-30T12:00:00-05:00", EURUSD, ["20261231:CLOSED", "20270101:CLOSED"]),  # New Year
    ],
    ids=["es-christmas", "es-good-friday", "fx-christmas", "fx-new-year"],
    indirect=["market_clock"],
)
def test_futures_and_forex_holidays_show_closed_in_trading_hours(ib: IB, contract: Any, closed: list[str]) -> None:
    """The session that would end on the holiday is closed (in tradingHours under the day it would start)."""
    [d] = ib.reqContractDetails(contract)
    trading = d.tradingHours.split(";")
    assert [day for day in trading if day.endswith("CLOSED")][:2] == closed
    assert not any(day.startswith(closed[0][:8]) and not day.endswith("CLOSED") for day in trading)


@pytest.mark.parametrize(
    ("market_clock", "contract", "opens"),
    [
        ("2026-12-31T18:00:00-05:00", EURUSD, "2027-01-03 17:15:00 US/Eastern"),  # New Year's Eve after 17:00
        ("2026-11-26T13:00:00-06:00", ES, "2026-11-26 17:00:00 US/Central"),  # after Thanksgiving's noon close
        ("2026-12-24T18:00:00-06:00", ES, "2026-12-27 17:00:00 US/Central"),  # Christmas: no session until Sunday
    ],
    ids=["fx-new-year", "es-thanksgiving", "es-christmas"],
    indirect=["market_clock"],
)
def test_forex_and_futures_orders_on_a_holiday_are_held_until_the_next_session(
    gw: ThreadedGateway, ib: IB, contract: Any, opens: str
) -> None:
    errors = errors_of(ib)
    [contract] = ib.qualifyContracts(contract)
    quantity = 20_000 if contract.secType == "CASH" else 1
    trade = ib.placeOrder(contract, MarketOrder("BUY", quantity, orderRef="holiday"))
    assert held(ib, trade, errors).endswith(f"will not be placed at the exchange until {opens}")
    ib.reqOpenOrders()  # a round trip after the placement: a fill would have come before its answer
    [order] = gw.orders()
    assert (order["orderRef"], order["status"], order["filled"]) == ("holiday", "PreSubmitted", 0)
    assert gw.executions() == []
