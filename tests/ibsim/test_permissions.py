"""Market-data permissions per instrument (marketData.permissions and each instrument's permissions), and frozen
data after the close: IB's codes and texts through ib_insync."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ib_insync import IB, Stock

from ibsim import Scenario, ThreadedGateway
from tests.support import CLOCKS, DEFAULT_CLOCK, ensure_loop

SPY, AAPL, MSFT = (Stock(s, "SMART", "USD") for s in ("SPY", "AAPL", "MSFT"))
NOT_SUBSCRIBED = "Requested market data is not subscribed."


def scenario(clock: str, **extra: Any) -> Scenario:
    return Scenario.from_dict(
        {
            "clock": {"start": clock},
            # snapshots end when answered: these tests read their ticks, not IB's end 11 s later
            "marketData": {"permissions": "realtime", "snapshotEndSeconds": 0},
            "instruments": [
                {"symbol": "SPY", "secType": "ETF", "primaryExchange": "ARCA", "price": 520.0},
                {
                    "symbol": "AAPL",
                    "secType": "STK",
                    "primaryExchange": "NASDAQ",
                    "price": 190.0,
                    "permissions": "delayed",
                },
                {
                    "symbol": "MSFT",
                    "secType": "STK",
                    "primaryExchange": "NASDAQ",
                    "price": 420.0,
                    "permissions": "none",
                },
            ],
            "generated": {"count": 0},
            **extra,
        }
    )


@pytest.fixture
def connect() -> Iterator[Any]:
    gateways: list[ThreadedGateway] = []
    clients: list[IB] = []

    def start(sc: Scenario) -> tuple[IB, list[tuple[int, str]]]:
        gw = ThreadedGateway(port=0, scenario=sc)
        gw.__enter__()
        gateways.append(gw)
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        clients.append(ib)
        errors: list[tuple[int, str]] = []
        ib.errorEvent += lambda req_id, code, msg, contract: errors.append((code, msg))
        return ib, errors

    yield start
    for ib in clients:
        ib.disconnect()
    for gw in gateways:
        gw.__exit__(None, None, None)


def test_permissions_per_instrument_for_live_and_delayed_data(connect: Any) -> None:
    ib, errors = connect(scenario(DEFAULT_CLOCK))
    [spy, aapl, msft] = ib.reqTickers(SPY, AAPL, MSFT)
    assert (spy.bid, spy.ask) == (519.99, 520.01)
    assert aapl.bid != aapl.bid  # NaN: refused
    assert msft.bid != msft.bid
    assert sorted(code for code, _ in errors) == [354, 354]
    assert all(msg.startswith(NOT_SUBSCRIBED) for _, msg in errors)

    errors.clear()
    ib.reqMarketDataType(3)
    [spy, aapl, msft] = ib.reqTickers(SPY, AAPL, MSFT)
    assert (spy.bid, spy.marketDataType) == (519.99, 1)  # live where subscribed, as IB does
    assert (aapl.bid, aapl.marketDataType) == (189.99, 3)
    assert msft.bid != msft.bid  # no permission at all: no delayed data either
    assert sorted(code for code, _ in errors) == [354, 10167]
    assert (10167, "Requested market data is not subscribed. Displaying delayed market data.") in errors


def test_history_without_permission_is_162_no_market_data_permissions(connect: Any) -> None:
    ib, errors = connect(scenario(DEFAULT_CLOCK))
    assert len(ib.reqHistoricalData(SPY, "", "5 D", "1 day", "TRADES", True)) == 5
    assert len(ib.reqHistoricalData(AAPL, "", "5 D", "1 day", "TRADES", True)) == 0
    assert errors == [(162, "Historical Market Data Service error message:No market data permissions for ISLAND STK")]


@pytest.mark.parametrize(
    ("clock", "frozen"), [(CLOCKS["saturday"], True), (DEFAULT_CLOCK, False)], ids=["after-the-close", "in-session"]
)
def test_frozen_data_after_the_close(connect: Any, clock: str, frozen: bool) -> None:
    ib, _ = connect(scenario(clock, hours="regular"))
    ib.reqMarketDataType(2)
    [spy] = ib.reqTickers(SPY)
    assert (spy.bid, spy.marketDataType) == (519.99, 2 if frozen else 1)
    ib.reqMarketDataType(4)
    [spy, aapl] = ib.reqTickers(SPY, AAPL)
    assert spy.marketDataType == (2 if frozen else 1)
    assert (aapl.bid, aapl.marketDataType) == (189.99, 4 if frozen else 3)


@pytest.mark.parametrize(
    ("clock", "quoted"),
    [
        (CLOCKS["saturday"], False),
        ("2026-06-17T21:00:00-04:00", False),  # after NYSE Arca's late session (20:00)
        ("2026-06-17T18:00:00-04:00", True),  # in it: extended hours quote
        (DEFAULT_CLOCK, True),
    ],
    ids=["saturday", "night", "extended-hours", "in-session"],
)
def test_live_quotes_outside_the_trading_hours_have_no_bid_or_ask(connect: Any, clock: str, quoted: bool) -> None:
    """IB's -1 bid and ask (size 0) when nothing trades; the last trade and the close still come."""
    ib, _ = connect(scenario(clock, hours="regular"))
    [spy] = ib.reqTickers(SPY)
    assert (spy.bid, spy.bidSize, spy.ask, spy.askSize) == ((519.99, 300, 520.01, 300) if quoted else (-1, 0, -1, 0))
    assert (spy.last, spy.close) == (520.0, 520.0)
    assert spy.marketPrice() == 520.0  # ib_insync reads -1 as no quote


def test_quotes_at_any_hour_with_hours_always(connect: Any) -> None:
    ib, _ = connect(scenario(CLOCKS["saturday"], hours="always"))
    [spy] = ib.reqTickers(SPY)
    assert (spy.bid, spy.ask) == (519.99, 520.01)
