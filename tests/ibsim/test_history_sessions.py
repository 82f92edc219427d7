"""Historical bars counted as IB counts sessions: holidays absent, early closes short, no bar for a session that
has not opened yet (issue 15, gap 6: Monday 00:18 New York, '2 D' of hourly bars gave only Friday)."""

from __future__ import annotations

import datetime as dt

import pytest
from ib_insync import IB, Stock

from ibsim import ThreadedGateway
from tests.support import ensure_loop, sim_scenario

SPY = Stock("SPY", "SMART", "USD")
MONDAY_BEFORE_THE_OPEN = "2026-11-30T00:18:00-05:00"  # after Thanksgiving (Thu) and its half day (Fri)


def days_of(bars: list) -> list[str]:
    return sorted({f"{b.date:%Y-%m-%d}" for b in bars})


@pytest.mark.parametrize("market_clock", [MONDAY_BEFORE_THE_OPEN], indirect=True)
def test_n_days_of_hourly_bars_before_the_open_are_the_last_sessions_that_opened(ib: IB) -> None:
    bars = ib.reqHistoricalData(SPY, "", "2 D", "1 hour", "TRADES", True)
    assert days_of(bars) == ["2026-11-25", "2026-11-27"]  # Thanksgiving has none, Monday has not opened
    friday = [b.date for b in bars if b.date.day == 27]
    assert [(t.hour, t.minute) for t in friday] == [(9, 30), (10, 0), (11, 0), (12, 0)]  # closes at 13:00
    assert len(bars) == 7 + 4


@pytest.mark.parametrize("market_clock", [MONDAY_BEFORE_THE_OPEN], indirect=True)
def test_no_daily_bar_for_a_session_that_has_not_opened_and_none_for_a_holiday(ib: IB) -> None:
    bars = ib.reqHistoricalData(SPY, "", "5 D", "1 day", "TRADES", True)
    assert [f"{b.date:%m-%d}" for b in bars] == ["11-20", "11-23", "11-24", "11-25", "11-27"]
    assert bars[-1].close == 520.0  # the newest bar is Friday's, at the current price


@pytest.mark.parametrize("market_clock", ["2026-11-30T09:45:00-05:00"], indirect=True)
def test_the_session_in_progress_counts_once_it_has_opened(ib: IB) -> None:
    bars = ib.reqHistoricalData(SPY, "", "2 D", "1 day", "TRADES", True)
    assert [b.date for b in bars] == [dt.date(2026, 11, 27), dt.date(2026, 11, 30)]


def test_a_listing_has_no_bar_before_its_first_session_and_a_window_before_it_is_162() -> None:
    """IB's history starts at a listing's first trade; a window holding none is refused with 162 "HMDS query
    returned no data: SYM@SMART Trades" (issue threads of Lean and ib-ruby users), not answered with no bars."""
    listings = [
        {"symbol": "NEWCO", "secType": "STK", "primaryExchange": "NYSE", "price": 20.0, "listed": "2026-11-27"},
        {"symbol": "LATER", "secType": "STK", "primaryExchange": "NYSE", "price": 30.0, "listed": "2026-12-01"},
    ]
    scenario = sim_scenario({"instruments": listings}, clock="2026-11-30T09:45:00-05:00")
    with ThreadedGateway(port=0, scenario=scenario) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            errors: list[tuple[int, str]] = []
            ib.errorEvent += lambda req_id, code, msg, contract: errors.append((code, msg))
            young = ib.reqHistoricalData(Stock("NEWCO", "SMART", "USD"), "", "5 D", "1 day", "TRADES", True)
            assert [b.date for b in young] == [dt.date(2026, 11, 27), dt.date(2026, 11, 30)]
            hourly = ib.reqHistoricalData(Stock("NEWCO", "SMART", "USD"), "", "5 D", "1 hour", "TRADES", True)
            assert {f"{b.date:%m-%d}" for b in hourly} == {"11-27", "11-30"}
            assert errors == []
            assert list(ib.reqHistoricalData(Stock("LATER", "SMART", "USD"), "", "5 D", "1 day", "TRADES", True)) == []
            assert errors == [
                (162, "Historical Market Data Service error message:HMDS query returned no data: LATER@SMART Trades")
            ]
        finally:
            ib.disconnect()
