"""Historical bars counted as IB counts sessions: holidays absent, early closes short, no bar for a session that
has not opened yet (issue 15, gap 6: Monday 00:18 New York, '2 D' of hourly bars gave only Friday)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from ib_insync import IB, Forex, Stock

from ibsim import ThreadedGateway
from tests.support import ensure_loop, sim_scenario

SPY = Stock("SPY", "SMART", "USD")
NEW_YORK = ZoneInfo("America/New_York")
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


def _idealpro_open(t: dt.datetime) -> bool:
    """IDEALPRO's week, New York time: Sunday 17:15 to Friday 17:00, less the daily 17:00-17:15 break."""
    local = t.astimezone(NEW_YORK)
    minutes = local.hour * 60 + local.minute
    if local.weekday() == 5 or (local.weekday() == 4 and minutes >= 17 * 60):
        return False
    if local.weekday() == 6:
        return minutes >= 17 * 60 + 15
    return not 17 * 60 <= minutes < 17 * 60 + 15


@pytest.mark.parametrize(
    ("clock", "session_start"),
    [
        # Saturday: IDEALPRO closed from Friday 17:00 to Sunday 17:15 New York; the last session ran Thu 17:15-Fri 17:00
        ("2026-12-05T12:00:00-05:00", "2026-12-03T17:15:00-05:00"),
        # Monday 10:00: the session under way opened on Sunday at 17:15
        ("2026-11-30T10:00:00-05:00", "2026-11-29T17:15:00-05:00"),
    ],
    ids=["saturday", "monday-morning"],
)
def test_forex_intraday_bars_follow_idealpro_sessions_not_new_york_weekdays(clock: str, session_start: str) -> None:
    """Forex trades Sunday 17:15 to Friday 17:00 New York, each session crossing midnight. ibsim's intraday bars for
    a forex pair kept New York weekdays instead: Friday 17:00-24:00, when IDEALPRO is closed, had bars, and Sunday
    evening's session had none; '1 D' started at midnight, not with the session under way."""
    with ThreadedGateway(port=0, scenario=sim_scenario(clock=clock)) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            bars = ib.reqHistoricalData(Forex("EURUSD"), "", "1 D", "1 hour", "MIDPOINT", True, formatDate=2)
        finally:
            ib.disconnect()
    starts = [b.date for b in bars]
    assert starts, "no bars"
    closed = [f"{t.astimezone(NEW_YORK):%a %H:%M}" for t in starts if not _idealpro_open(t)]
    first, last = (f"{t.astimezone(NEW_YORK):%a %H:%M}" for t in (starts[0], starts[-1]))
    assert not closed, (
        f"at {clock} ibsim's 1-hour EUR.USD bars run {first} to {last} New York; {len(closed)} start while IDEALPRO "
        f"is closed: {closed}"
    )
    opened = dt.datetime.fromisoformat(session_start)
    assert starts[0] <= opened + dt.timedelta(hours=1), (
        f"at {clock} '1 D' of bars starts {first} New York, not with the last session ({opened:%a %H:%M})"
    )


def test_futures_intraday_bars_follow_cme_globex_sessions() -> None:
    """CME Globex trades ES Sunday 17:00 to Friday 16:00 Chicago with a daily break 16:00-17:00; the session that opens
    on Sunday evening is Monday's. '2 D' of hourly bars on Tuesday morning: Monday's and Tuesday's sessions."""
    from ib_insync import Future

    chicago = ZoneInfo("America/Chicago")
    with ThreadedGateway(port=0, scenario=sim_scenario(clock="2026-12-01T10:00:00-05:00")) as gw:  # Tuesday
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            bars = ib.reqHistoricalData(Future("ES", exchange="CME"), "", "2 D", "1 hour", "TRADES", False, 2)
        finally:
            ib.disconnect()
    starts = [b.date.astimezone(chicago) for b in bars]
    assert f"{starts[0]:%a %H:%M}" == "Sun 17:00"
    assert f"{starts[-1]:%a %H:%M}" == "Tue 09:00"  # the bar under way
    assert not [t for t in starts if t.hour == 16], "a bar in the daily break"
    assert len(starts) == 23 + 17  # Sunday 17:00 to Monday 16:00, then Monday 17:00 to Tuesday 10:00
