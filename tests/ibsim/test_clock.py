"""The simulated clock: what the gateway says the time is, and what follows from it (history, fills, day rolls)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from ib_insync import IB, Future, MarketOrder, Stock

from ibsim import Scenario, ScenarioError, ThreadedGateway
from tests.support import sim_scenario

from .conftest import ensure_loop, ibsim_cli, wait_until

NEW_YORK = ZoneInfo("America/New_York")
SPY = Stock("SPY", "SMART", "USD")


def gateway_at(start: str) -> ThreadedGateway:
    """Markets open 24x7 (`hours: always`): these tests are about the clock's day, and a Saturday's fill is one."""
    return ThreadedGateway(port=0, scenario=Scenario.from_dict({"clock": {"start": start}, "hours": "always"}))


@pytest.fixture
def saturday() -> Iterator[tuple[ThreadedGateway, IB]]:
    with gateway_at("2026-12-05T12:00:00-05:00") as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            yield gw, ib
        finally:
            ib.disconnect()


def test_current_time_and_fills_follow_the_clock_not_the_wall(saturday: tuple[ThreadedGateway, IB]) -> None:
    gw, ib = saturday
    start = dt.datetime(2026, 12, 5, 12, 0, tzinfo=NEW_YORK)
    told = ib.reqCurrentTime()
    assert start - dt.timedelta(seconds=1) <= told <= start + dt.timedelta(seconds=30)
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 3))
    wait_until(ib, trade.isDone, what="fill")
    assert {f.execution.time.astimezone(NEW_YORK).date() for f in trade.fills} == {start.date()}
    assert gw.executions()[0]["time"] >= start.timestamp()


def test_daily_history_ends_on_the_clocks_day(saturday: tuple[ThreadedGateway, IB]) -> None:
    gw, ib = saturday
    bars = ib.reqHistoricalData(SPY, "", "5 D", "1 day", "TRADES", True)
    assert [b.date for b in bars] == [dt.date(2026, 11, d) for d in (30,)] + [
        dt.date(2026, 12, d) for d in (1, 2, 3, 4)
    ]
    gw.set_time("2027-03-10T10:00:00-05:00")
    later = ib.reqHistoricalData(SPY, "", "2 D", "1 day", "TRADES", True)
    assert [b.date for b in later] == [dt.date(2027, 3, 9), dt.date(2027, 3, 10)]


def test_roll_day_moves_the_clock_to_the_next_weekday() -> None:
    with gateway_at("2026-12-04T15:00:00-05:00") as gw:  # a Friday
        gw.roll_day()
        monday = gw.now().astimezone(NEW_YORK)
        assert (monday.date(), monday.hour) == (dt.date(2026, 12, 7), 15)
        gw.roll_day()
        assert gw.now().astimezone(NEW_YORK).date() == dt.date(2026, 12, 8)
        gw.advance_time(3600)
        assert gw.now().astimezone(NEW_YORK).hour == 16


@pytest.mark.parametrize(
    ("friday", "monday"),
    [
        # US daylight saving time ends on Sunday 2026-11-01: EDT (-04:00) on Friday, EST (-05:00) on Monday
        ("2026-10-30T09:45:00-04:00", "Mon 2026-11-02 09:45"),
        # and starts on Sunday 2027-03-14: EST on Friday, EDT on Monday
        ("2027-03-12T15:30:00-05:00", "Mon 2027-03-15 15:30"),
    ],
    ids=["dst-ends", "dst-starts"],
)
def test_roll_day_over_a_dst_weekend_keeps_new_york_time(friday: str, monday: str) -> None:
    """`roll_day` is "the same time on the next weekday", and tests use it to start the next session's morning. It
    added 3 x 86,400 s, so over a DST weekend the New York hour moved: a roll at 09:45 landed at 08:45 (before the
    open: a test's order is held, not filled), one at 15:30 at 16:30 (after the close)."""
    with gateway_at(friday) as gw:
        gw.roll_day()
        rolled = gw.now().astimezone(NEW_YORK)
        assert f"{rolled:%a %Y-%m-%d %H:%M}" == monday, f"roll_day from {friday} landed at {rolled.isoformat()}"


def test_set_bars_serves_the_given_history_and_checks_it(saturday: tuple[ThreadedGateway, IB]) -> None:
    gw, ib = saturday
    given = [
        {"date": "2026-12-03", "open": 10, "high": 11, "low": 9, "close": 10.5, "volume": 100},
        {"date": "2026-12-04", "open": 10.5, "high": 12, "low": 10, "close": 11.5, "volume": 200},
    ]
    gw.set_bars("SPY", given)
    got = ib.reqHistoricalData(SPY, "", "5 D", "1 day", "TRADES", True)
    assert [(b.date, b.close) for b in got] == [(dt.date(2026, 12, 3), 10.5), (dt.date(2026, 12, 4), 11.5)]
    with pytest.raises(ScenarioError, match=r"set_bars\(SPY\)\[0\]: high/low"):
        gw.set_bars("SPY", [{"date": "2026-12-04", "open": 10, "high": 9, "low": 8, "close": 10}])


@pytest.mark.parametrize(
    ("start", "problem"),
    [("2026-12-05T12:00:00", "has no UTC offset"), ("next tuesday", "is not an ISO 8601 time")],
)
def test_a_clock_start_without_an_offset_is_refused(start: str, problem: str) -> None:
    with pytest.raises(ScenarioError, match=f"clock.start: .*{problem}"):
        Scenario.from_dict({"clock": {"start": start}})


def test_the_front_future_is_the_clocks_front_quarterly() -> None:
    scenario = Scenario.from_dict({"clock": {"start": "2026-12-31T12:00:00-05:00"}})
    assert scenario.instrument("ES").lastTradeDateOrContractMonth == "20270319"


def test_a_future_past_its_last_trade_date_is_no_longer_the_front_contract() -> None:
    """ibsim computes ES's expiry once, from the clock's start (the front quarterly on or after that day). Once the
    clock passes it, IB no longer lists the expired contract (error 200 "No security definition has been found for
    the request"; `includeExpired` still finds it). ibsim kept offering and filling the expired one."""
    # Thursday 2026-12-17: the front quarterly is Friday 2026-12-18 (the third Friday of December)
    with ThreadedGateway(port=0, scenario=sim_scenario(clock="2026-12-17T11:00:00-05:00")) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        errors: list[tuple[int, int, str]] = []
        ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code, msg))
        try:
            gw.roll_day()  # Friday 2026-12-18, the last trade date
            gw.set_time("2026-12-18T09:29:00-05:00")  # CME stops it at 09:30 New York, for the opening quotation
            [last_day] = ib.reqContractDetails(Future("ES", exchange="CME"))
            assert last_day.contract
            assert last_day.contract.lastTradeDateOrContractMonth == "20261218"
            gw.set_time("2026-12-18T09:30:00-05:00")
            assert ib.reqContractDetails(Future("ES", exchange="CME")) == []
            gw.roll_day()  # Monday 2026-12-21: the December contract has expired
            listed = ib.reqContractDetails(Future("ES", exchange="CME"))
            months = sorted(d.contract.lastTradeDateOrContractMonth for d in listed if d.contract)
            today = gw.now().astimezone(NEW_YORK).strftime("%Y%m%d")
            expired = [m for m in months if m < today]
            assert not expired, f"on {today} ibsim still lists ES expiring {expired} (all listed: {months})"
            assert (200, "No security definition has been found for the request") in [e[1:] for e in errors]
            trade = ib.placeOrder(Future("ES", "20261218", "CME"), MarketOrder("BUY", 1))
            wait_until(ib, lambda: trade.order.orderId in [e[0] for e in errors if e[1] == 200], what="error 200")
            assert gw.positions() == {}
            [old] = ib.reqContractDetails(Future("ES", "20261218", "CME", includeExpired=True))
            assert old.contract
            assert old.contract.lastTradeDateOrContractMonth == "20261218"
        finally:
            ib.disconnect()


def test_cli_clock_flag(tmp_path: Path) -> None:
    with ibsim_cli("--clock", "2026-11-26T11:00:00-05:00", cwd=tmp_path) as (_, port, _line):
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", port, clientId=1, timeout=4)
        try:
            assert ib.reqCurrentTime().astimezone(NEW_YORK).date() == dt.date(2026, 11, 26)
        finally:
            ib.disconnect()
