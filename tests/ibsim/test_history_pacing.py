"""Historical data as IB limits it: its bar sizes only (321), and with pacing.historical its pacing rules (162) for
bars under a minute ("Historical Data Limitations for barSize = '1 mins' and greater have been lifted")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ib_insync import IB, Stock

from ibsim import Scenario, ThreadedGateway
from tests.support import ensure_loop, sim_scenario

PACING = "Historical Market Data Service error message:Historical data request pacing violation"


@pytest.fixture
def gateway_scenario() -> dict[str, Any]:
    return {"pacing": {"historical": True}}


def errors_of(ib: IB) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: seen.append((code, msg))
    return seen


def history(ib: IB, symbol: str, duration: str = "5 D", size: str = "1 day", end: str = "") -> list[Any]:
    return ib.reqHistoricalData(Stock(symbol, "SMART", "USD"), end, duration, size, "TRADES", True)


def small(ib: IB, symbol: str, seconds: int = 600) -> int:
    """How many 30-second bars IB answers for the last `seconds` (0: refused)."""
    return len(history(ib, symbol, duration=f"{seconds} S", size="30 secs"))


def test_an_invalid_bar_size_is_321_with_the_legal_ones(ib: IB) -> None:
    errors = errors_of(ib)
    assert len(history(ib, "SPY", size="7 mins")) == 0
    [(code, message)] = errors
    assert code == 321
    assert message.startswith("Error validating request:-'bS' : cause - Historical data bar size setting is invalid.")
    assert "1 min, 2 mins, 3 mins, 5 mins, 10 mins" in message
    assert len(history(ib, "SPY", duration="1 D", size="5 mins")) > 0  # a legal size still answers


def test_an_identical_request_within_15_seconds_is_a_pacing_violation(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    assert small(ib, "SPY") > 0
    assert small(ib, "SPY") == 0
    assert errors == [(162, PACING)]
    assert small(ib, "SPY", 1200) > 0  # not identical: answered
    gw.advance_time(15)
    assert small(ib, "SPY") > 0  # 15 s on, the same request is answered again


def test_six_requests_for_one_contract_within_two_seconds(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    for minutes in range(1, 6):
        assert small(ib, "QQQ", 60 * minutes) > 0
    assert small(ib, "QQQ", 360) == 0
    assert errors == [(162, PACING)]
    assert small(ib, "IWM") > 0  # another contract is not paced
    gw.advance_time(2)
    assert small(ib, "QQQ", 360) > 0


def test_more_than_60_requests_in_ten_minutes(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    symbols = [f"SYM{i:03d}" for i in range(60)]
    for symbol in symbols:
        assert small(ib, symbol) > 0
    assert small(ib, "SPY") == 0
    assert errors == [(162, PACING)]
    gw.advance_time(600)
    assert small(ib, "SPY") > 0


def test_bars_of_a_minute_and_more_are_not_paced(gw: ThreadedGateway, ib: IB) -> None:
    """IB lifted its pacing limits for bars of a minute and more: 70 daily requests, identical ones among them,
    are all answered."""
    errors = errors_of(ib)
    for symbol in [f"SYM{i:03d}" for i in range(60)] + ["QQQ", "IWM", "TLT", "GLD", "AAPL"] + ["SPY"] * 5:
        assert len(history(ib, symbol)) == 5
    assert len(history(ib, "SPY", duration="1 D", size="1 min")) > 0
    assert errors == []


def test_without_pacing_historical_repeats_are_answered() -> None:
    """The default scenario keeps answering (the realistic setting is opt-in: scenarios/paper.yaml)."""
    with ThreadedGateway(port=0, scenario=sim_scenario()) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=7, timeout=4)
        try:
            assert [len(history(ib, "SPY")) for _ in range(8)] == [5] * 8
        finally:
            ib.disconnect()


def test_the_paper_scenario_turns_on_regular_hours_and_history_pacing() -> None:
    paper = Scenario.load(Path(__file__).parents[2] / "ibsim" / "scenarios" / "paper.yaml")
    assert paper.hours == "regular"
    assert paper.pacing["historical"]


def test_a_clients_51st_unanswered_history_request_is_refused_with_322(gw: ThreadedGateway, ib: IB) -> None:
    """IB allows 50 simultaneous open historical requests per API client; it answers them in a fraction of a second
    to seconds (historyDelayMs). ib_insync sends 45 requests a second, so 51 are open at once when IB takes more
    than ~1.1 s. Once answered, they no longer count."""
    import asyncio

    gw.call(setattr, gw.server.scenario, "historyDelayMs", 3000.0)
    errors = errors_of(ib)
    contracts = [Stock(f"SYM{i:03d}", "SMART", "USD") for i in range(51)]

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(
            *(ib.reqHistoricalDataAsync(c, "", "2 D", "1 day", "TRADES", True) for c in contracts)
        )

    answers = ib.run(all_at_once())
    assert [len(bars) for bars in answers] == [2] * 50 + [0]
    too_many = "Error processing request:-'wd' : cause - Only 50 simultaneous API historical data requests allowed."
    assert errors == [(322, too_many)]
    assert len(history(ib, "SYM051", duration="2 D")) == 2  # the 50 answered: room again


def test_more_than_365_days_must_be_asked_in_years_321(ib: IB) -> None:
    """IB: "Error validating request.-'bH' : cause - Historical data requests for durations longer than 365 days
    must be made in years." (ib_async issue 229); ibsim answered 366 D as if it were legal."""
    errors = errors_of(ib)
    assert len(history(ib, "SPY", duration="366 D")) == 0
    [(code, message)] = errors
    assert code == 321
    assert "durations longer than 365 days must be made in years" in message
    assert len(history(ib, "SPY", duration="365 D")) > 200
    assert len(history(ib, "SPY", duration="2 Y")) > 400


@pytest.mark.parametrize(
    ("duration", "size"),
    [("9000000000000000000 Y", "1 day"), ("100000 Y", "1 min"), ("9000000000000000000 S", "1 hour")],
)
def test_an_absurd_duration_is_answered_without_losing_the_connection(ib: IB, duration: str, size: str) -> None:
    """A duration no date can hold overflowed ibsim's date arithmetic (the connection dropped), and one of years of
    minute bars walked every minute of them before refusing. IB answers what it has (daily bars since the listing)
    or refuses the request; the connection stays."""
    errors = errors_of(ib)
    bars = history(ib, "SPY", duration=duration, size=size)
    assert ib.isConnected()
    assert bars or [code for code, _ in errors] == [162], errors
    assert len(history(ib, "SPY", duration="5 D")) == 5  # the same connection answers the next one
