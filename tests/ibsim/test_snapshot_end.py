"""A snapshot's end: IB sends the ticks it has at once and tickSnapshotEnd 11 s later ("Streaming Data Snapshots"),
and ib_insync's reqTickers returns only at that end. marketData.snapshotEndSeconds sets the wait; `end_snapshots`
sends every open end now, so no test waits 11 s to see one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from ib_insync import IB, Stock

from ibsim import Scenario, ThreadedGateway
from tests.ibsim.conftest import wait_until

SPY = Stock("SPY", "SMART", "USD")


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    # An end far off: no slow host ends a snapshot these tests expect open (IB's 11 s is the scenario's default).
    return {"marketData": {"snapshotEndSeconds": 600}}


def test_the_default_end_is_ibs_11_seconds() -> None:
    assert Scenario.default().snapshotEndSeconds == 11.0


def test_ticks_come_at_once_and_the_end_only_when_its_seconds_are_up(gw: ThreadedGateway, ib: IB) -> None:
    tickers = asyncio.ensure_future(ib.reqTickersAsync(SPY))
    ticker = wait_until(
        ib, lambda: ib.wrapper.reqId2Ticker and next(iter(ib.wrapper.reqId2Ticker.values())), what="a ticker"
    )
    wait_until(ib, lambda: (ticker.bid, ticker.ask, ticker.last) == (519.99, 520.01, 520.0), what="the ticks")
    ib.reqCurrentTime()  # a round trip: anything sent with the ticks has been read
    assert not tickers.done()
    assert gw.open_snapshots() == 1

    assert gw.end_snapshots() == 1
    wait_until(ib, tickers.done, what="reqTickers to return at the end")
    assert [t.last for t in tickers.result()] == [520.0]
    assert gw.open_snapshots() == 0


@pytest.mark.parametrize("gateway_scenario", [{"marketData": {"snapshotEndSeconds": 0.2}}])
def test_the_scenario_sets_the_seconds_to_the_end(ib: IB) -> None:
    [ticker] = ib.reqTickers(SPY)  # returns at the end, 0.2 s after the request
    assert ticker.last == 520.0


def test_a_cancelled_or_disconnected_snapshot_is_never_ended(gw: ThreadedGateway, connect: Callable[..., IB]) -> None:
    first, second = connect(1), connect(2)
    cancelled = first.reqMktData(SPY, snapshot=True)
    wait_until(first, lambda: cancelled.last == 520.0, what="the first client's ticks")
    second.reqMktData(Stock("TLT", "SMART", "USD"), snapshot=True)
    wait_until(first, lambda: gw.open_snapshots() == 2, what="two open snapshots")

    first.cancelMktData(SPY)
    second.disconnect()
    wait_until(first, lambda: gw.open_snapshots() == 0, what="both gone")
    assert gw.end_snapshots() == 0
