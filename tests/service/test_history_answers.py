"""What a history answer means: a request IB never answered is no "no bars", and a session's bar so far is no close.

Found by an independent review of how strategies get market data.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.support import DEFAULT_CLOCK, Bus, mode_document, trading_days_until, trending_bars

pytestmark = pytest.mark.usefixtures("paper_config")


@pytest.fixture
def paper_config_overrides() -> dict[str, object]:
    return {"exposure": {"overall": 1.0, "strategies": {"dummy": 0.5, "spymacdvixy": 0.5}}}


# Listed the day after the tests' clock: IB has no bar of it yet, and says so with 162 "HMDS query returned no data".
NOT_YET_LISTED = (datetime.fromisoformat(DEFAULT_CLOCK).date() + timedelta(days=1)).isoformat()


NEW_LISTING = {
    "instruments": [
        {"symbol": "SPY", "secType": "ETF", "primaryExchange": "ARCA", "price": 520.0},
        {"symbol": "NEWCO", "secType": "STK", "primaryExchange": "NYSE", "price": 20.0, "listed": NOT_YET_LISTED},
    ]
}


@pytest.mark.parametrize("gateway_scenario", [NEW_LISTING])
def test_a_listing_with_no_history_yet_is_no_bars_for_it_not_a_failed_collection(
    bus: Bus, gateway: Any, consumer_factory: Any, project: str
):
    """IB refuses a history window that holds no bar with 162 "HMDS query returned no data": that is IB saying there
    are none. collect-market-data failed whole (`history_refused`) over one new listing among its instruments."""
    consumer_factory()
    body = {"intent": "collect-market-data", "params": {"instruments": ["SPY", "NEWCO"], "duration": "5 D"}}
    reply = bus.reply_to(bus.publish(body))
    assert reply["status"] == "ok", reply
    collected = reply["result"]["instruments"]
    assert (collected["SPY"]["bars"], collected["NEWCO"]["bars"], collected["NEWCO"]["days"]) == (5, 0, [])
    market_data = mode_document(project).collection("marketData")
    assert len(list(market_data.document("SPY").collection("bars").stream())) == 5
    assert list(market_data.document("NEWCO").collection("bars").stream()) == []


@pytest.mark.slow(seconds=15)
def test_a_history_request_ib_never_answers_is_retried_not_answered_as_no_bars(
    bus: Bus, gateway: Any, consumer_factory: Any, project: str
):
    """HMDS not answering (its farm down, the nightly reset) is not IB saying there are no bars, but ib_insync
    answers a request it gave up waiting for with an empty list and no error: collect-market-data replied ok with
    zero bars and wrote the instrument's document as fresh."""
    consumer_factory(history_timeout=3.0)
    gateway.stall_request("reqHistoricalData", 0)  # the next history request is never answered
    body = {"intent": "collect-market-data", "params": {"instruments": ["SPY"], "barSize": "1 day", "duration": "5 D"}}
    message_id = bus.publish(body)
    replies = bus.replies_to(message_id, quiet=5.0)
    assert [(r["status"], r["result"]["instruments"]["SPY"]["bars"]) for r in replies] == [("ok", 5)], replies
    bars = mode_document(project).collection("marketData").document("SPY").collection("bars").stream()
    assert len([b.id for b in bars]) == 5


@pytest.mark.parametrize("market_clock", ["2026-06-09T09:30:20-04:00"], indirect=True)  # a Tuesday, 20 s after the open
def test_a_daily_signal_is_computed_on_completed_sessions_not_on_the_session_under_way(
    bus: Bus, gateway: Any, consumer_factory: Any
):
    """During a session IB ends daily history with that session's bar so far, its close the last trade. The 09:30
    open-allocation's daily MACD was read from it: a few seconds either side of the open, or a redelivery later in
    the day, traded opposite ways. Here SPY rose for 60 sessions and today's bar so far has halved: on completed
    sessions the MACD is bullish (SPY), with today's bar it is not (VIXY)."""
    days = trading_days_until(gateway.now(), 61)
    rising = trending_bars(days[:-1], 400.0, 2.0)
    crash = {"date": days[-1].isoformat(), "open": 520.0, "high": 520.0, "low": 260.0, "close": 260.0}
    gateway.set_bars("SPY", [*rising, crash])
    consumer_factory()

    reply = bus.reply_to(
        bus.publish({"intent": "allocation", "dryRun": True, "params": {"strategies": ["spymacdvixy"]}}), timeout=60
    )
    assert reply["status"] == "ok", reply
    assert reply["result"]["strategies"]["spymacdvixy"]["weights"] == {"SPY": 1.0, "VIXY": 0.0}


@pytest.mark.slow(seconds=20)
def test_minute_bars_for_many_instruments_are_stored_in_commits_firestore_takes(
    bus: Bus, gateway: Any, consumer_factory: Any, project: str
):
    """A day of 1-minute bars is a 50 kB document; 27 instruments over 5 days were one commit of 162 of them, about
    6 MiB, cut by the count of writes alone: Firestore refuses a request over 10 MiB (the emulator's gRPC server
    one over 4 MiB, and the client retried that for a minute before the intent failed, its first commits kept)."""
    consumer_factory()
    symbols = [f"SYM{i:03d}" for i in range(20)] + ["SPY", "QQQ", "IWM", "TLT", "GLD", "AAPL", "MSFT"]
    body = {"intent": "collect-market-data", "params": {"instruments": symbols, "barSize": "1 min", "duration": "5 D"}}
    reply = bus.reply_to(bus.publish(body), timeout=120)
    assert reply["status"] == "ok", reply
    counts = {s: i["bars"] for s, i in reply["result"]["instruments"].items()}
    assert set(counts) == set(symbols)
    assert len(set(counts.values())) == 1, counts
    assert counts["SPY"] > 4 * 390  # four whole sessions at least, the one under way besides
    stored = mode_document(project).collection("marketData").document("SYM019").collection("bars").stream()
    assert sum(len(b.to_dict()["bars"]) for b in stored) == counts["SYM019"]


@pytest.mark.parametrize("market_clock", ["2026-06-09T09:30:20-04:00"], indirect=True)  # a Tuesday, 20 s after the open
def test_a_strategy_given_just_enough_history_has_its_signal_during_a_session(bus: Bus, gateway: Any, consumer_factory):
    """spymacdvixy's `history` is the daily bars it asks for, at least slow + signal (35 with the default spans).
    `daily_bars(symbol, days)` asked IB for `days` sessions and dropped the one under way, so during a session it
    returned one too few: with history 35 the 09:30 open-allocation skipped the strategy every day ("34 daily
    bars, need at least 35") while the 16:15 nightly dry run signalled. Found by a review of calendars."""
    days = trading_days_until(gateway.now(), 61)
    today = {"date": days[-1].isoformat(), "open": 518.0, "high": 521.0, "low": 517.0, "close": 520.0}
    gateway.set_bars("SPY", [*trending_bars(days[:-1], 400.0, 2.0), today])  # 60 rising sessions and today's so far
    consumer_factory()
    params = {"strategies": ["spymacdvixy"], "strategyParams": {"spymacdvixy": {"history": 35}}}
    reply = bus.reply_to(bus.publish({"intent": "allocation", "dryRun": True, "params": params}), timeout=60)
    assert reply["status"] == "ok", reply
    outcome = reply["result"]["strategies"]["spymacdvixy"]
    assert outcome.get("weights") == {"SPY": 1.0, "VIXY": 0.0}, f"at 09:30:20 with history 35: {outcome}"
