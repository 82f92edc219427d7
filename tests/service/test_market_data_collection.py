"""collect-market-data against ibsim: a collect never loses bars stored before, IB's refusal of one instrument's
history is that instrument's alone (with IB's code and text), history is refused as IB refuses it during a competing
live session, and the gateway's clock stamps what is stored.

Found by an independent review of collect-market-data (dates, idempotency, IB's history limits)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.support import Bus, clock_seen, mode_document, trading_days_until, trending_bars, wait_for

pytestmark = pytest.mark.usefixtures("paper_config")

COMPETING_HISTORY = (
    162,
    "Historical Market Data Service error message:Trading TWS session is connected from a different IP address",
)


def stored_bars(project: str, symbol: str) -> dict[str, list[dict[str, Any]]]:
    """{document id: its bars} of an instrument's collected bars."""
    bars = mode_document(project).collection("marketData").document(symbol).collection("bars")
    return {doc.id: (doc.to_dict() or {})["bars"] for doc in bars.stream()}


# A Tuesday at 16:30 New York: the IDEALPRO session labelled Tuesday (Monday 17:15 to Tuesday 17:00 New York) is
# still open; the day after, its Wednesday session opened at 17:15 Tuesday New York, 21:15 UTC.
TUESDAY_EVENING = "2026-06-16T16:30:00-04:00"


@pytest.mark.parametrize("market_clock", [TUESDAY_EVENING], indirect=True)
def test_a_forex_collect_the_next_day_keeps_the_hourly_bars_stored_the_day_before(
    bus: Bus, gateway: Any, consumer: Any, project: str
):
    """Tuesday evening, 1-hour EUR.USD bars over '2 D' are collected: the document 1hour@2026-06-16 holds Tuesday's
    bars, 00:00 to 20:00 UTC. On Wednesday evening the day's '1 D' is collected: IDEALPRO's Wednesday session opened
    at 17:15 New York on Tuesday (21:15 UTC), so its first bars fall on Tuesday's UTC date. The collect replaced
    1hour@2026-06-16 with those 3 bars: Tuesday's 21 bars stored the day before were lost (documents are keyed by
    the bar's UTC date, and each write replaced the whole document). Now a collect merges its bars into the stored
    documents by bar time, and the document holds both sessions' bars."""
    body = {
        "intent": "collect-market-data",
        "params": {"instruments": ["EUR.USD"], "barSize": "1 hour", "duration": "2 D"},
    }
    first = bus.reply_to(bus.publish(body))
    assert first["status"] == "ok", first
    tuesday = stored_bars(project, "EUR.USD")["1hour@2026-06-16"]
    assert len(tuesday) == 21, [b["time"] for b in tuesday]  # 00:00 .. 20:00 UTC, the session so far

    gateway.roll_day()  # Wednesday 16:30 New York
    clock_seen(bus, gateway)
    body["params"]["duration"] = "1 D"
    second = bus.reply_to(bus.publish(body))
    assert second["status"] == "ok", second
    after = stored_bars(project, "EUR.USD")["1hour@2026-06-16"]
    lost = {b["time"] for b in tuesday} - {b["time"] for b in after}
    assert not lost, f"Tuesday's bars stored the day before and gone: {sorted(lost)}; the document now: " + str(
        [b["time"] for b in after]
    )
    times = [b["time"] for b in after]
    assert times == sorted(times), times
    assert len(times) == len(set(times)) > len(tuesday), times


def test_a_collect_replaces_a_stored_bar_with_ibs_newer_one_of_the_same_time_and_keeps_the_others(
    bus: Bus, gateway: Any, consumer: Any, project: str
):
    """The merge's rule on the same bar time: IB's newer bar wins (a bar collected while its session was under way
    is completed by the next collect); the days this collect did not ask for keep what was stored."""
    days = trading_days_until(gateway.now(), 5)
    gateway.set_bars("SPY", trending_bars(days, 100.0, 1.0))
    body = {"intent": "collect-market-data", "params": {"instruments": ["SPY"], "barSize": "1 day", "duration": "5 D"}}
    assert bus.reply_to(bus.publish(body))["status"] == "ok"

    gateway.set_bars("SPY", trending_bars(days, 200.0, 1.0))  # IB's bars have changed since
    body["params"]["duration"] = "3 D"  # not the first request again (an identical one within 15 s reuses its answer)
    assert bus.reply_to(bus.publish(body))["status"] == "ok"
    closes = {doc: [b["close"] for b in bars] for doc, bars in stored_bars(project, "SPY").items()}
    assert closes == {
        f"1day@{day.isoformat()}": [close] for day, close in zip(days, [100.0, 101.0, 202.0, 203.0, 204.0], strict=True)
    }


PERMISSIONS_FOR_SOME = {
    "instruments": [
        {"symbol": "SPY", "secType": "ETF", "primaryExchange": "ARCA", "price": 520.0},
        {"symbol": "AAPL", "secType": "STK", "primaryExchange": "NASDAQ", "price": 190.0, "permissions": "delayed"},
    ]
}


@pytest.mark.parametrize("gateway_scenario", [PERMISSIONS_FOR_SOME])
def test_one_instrument_without_permission_does_not_throw_away_the_others_bars(
    bus: Bus, gateway: Any, consumer: Any, project: str
):
    """A login with a market-data subscription for the US ETFs only (the paper scenario `make run` serves):
    collect-market-data for SPY and AAPL. IB answers SPY's history and refuses AAPL's with 162 "No market data
    permissions for ISLAND STK". The reply was error `history_refused` naming AAPL alone, and nothing was stored:
    SPY's bars were thrown away, and every scheduled collect with one such instrument stored nothing, day after day
    (the histories were gathered without return_exceptions). Now SPY's bars are stored and counted, AAPL is
    reported refused with IB's code and text, and the reply alerts."""
    body = {"intent": "collect-market-data",
            "params": {"instruments": ["SPY", "AAPL"], "barSize": "1 day", "duration": "5 D"}}  # fmt: skip
    reply = bus.reply_to(bus.publish(body))
    assert reply["status"] == "ok", reply
    assert reply["result"].get("alert") is True, reply
    assert reply["result"]["instruments"]["SPY"]["bars"] == 5, reply
    assert reply["result"]["instruments"]["AAPL"]["refused"] == (
        "IB 162: Historical Market Data Service error message:No market data permissions for ISLAND STK"
    ), reply
    assert "bars" not in reply["result"]["instruments"]["AAPL"], reply  # refused, not "no bars"
    assert len(stored_bars(project, "SPY")) == 5
    assert stored_bars(project, "AAPL") == {}
    assert not mode_document(project).collection("marketData").document("AAPL").get().exists


def test_ibsim_refuses_history_during_a_competing_live_session_with_ibs_code_and_text(gateway: Any, manual: Any):
    """While the login's live user is logged in elsewhere, IB refuses quotes with 10197 and history with 162
    "...Trading TWS session is connected from a different IP address" (docs/ibsim.md lists the sources). ibsim's
    `competing_session` refused quotes only: history went on as if nothing were wrong. Now it answers IB's 162, and
    history flows again once the other session ends."""
    from ib_insync import Stock

    errors: list[tuple[int, str]] = []
    manual.errorEvent += lambda req_id, code, message, contract: errors.append((code, message))
    spy = Stock("SPY", "SMART", "USD")
    gateway.competing_session(True)
    bars = manual.reqHistoricalData(spy, "", "5 D", "1 day", "TRADES", useRTH=True, timeout=10)
    assert (list(bars), [e for e in errors if e[0] == 162]) == ([], [COMPETING_HISTORY])

    gateway.competing_session(False)
    assert len(manual.reqHistoricalData(spy, "", "5 D", "1 day", "TRADES", useRTH=True, timeout=10)) == 5


def test_history_during_a_competing_live_session_is_refused_as_ib_refuses_it(
    bus: Bus, gateway: Any, consumer: Any, project: str
):
    """While the login's live user is logged in elsewhere, IB refuses historical requests with 162 "Historical
    Market Data Service error message:Trading TWS session is connected from a different IP address" (users of IB
    Gateway report it alongside 10197: extrange/ibkr-docker#118). ibsim's `competing_session` refused snapshots and
    streams only, so collect-market-data replied ok and stored 5 fresh bars IB would never have sent. Now nothing is
    stored and IB's refusal is in the reply: every instrument refused, so the collect failed `history_refused`."""
    gateway.competing_session(True)
    body = {"intent": "collect-market-data", "params": {"instruments": ["SPY"], "barSize": "1 day", "duration": "5 D"}}
    reply = bus.reply_to(bus.publish(body))
    assert (reply["status"], reply["error"]["code"]) == ("error", "history_refused"), reply
    assert reply["error"]["message"] == f"SPY history: IB error {COMPETING_HISTORY[0]}: {COMPETING_HISTORY[1]}"
    assert stored_bars(project, "SPY") == {}


def test_what_is_stored_is_stamped_by_the_gateways_clock_and_a_refused_snapshot_says_why_and_alerts(
    bus: Bus, gateway: Any, consumer: Any, project: str
):
    """`updatedAt` and `lastSnapshot.at` were the consumer's wall clock, not the gateway's (decision 5: the market's
    time is the gateway's); and a snapshot IB refused showed as `"snapshot": null`, with no reason and no alert.
    Now both are stamped by the gateway's clock, and a refused snapshot carries IB's code and text and alerts.

    Here the snapshot is refused after the history was answered: its request is held a moment (stall_request) while
    the login's live user logs in elsewhere (10197)."""
    body = {"intent": "collect-market-data",
            "params": {"instruments": ["SPY"], "barSize": "1 day", "duration": "5 D", "snapshot": True}}  # fmt: skip
    collected = bus.reply_to(bus.publish(body))
    assert collected["status"] == "ok", collected
    assert "alert" not in collected["result"], collected
    head = mode_document(project).collection("marketData").document("SPY").get().to_dict() or {}
    gateway_now = gateway.now()
    for stamp in (head["updatedAt"], head["lastSnapshot"]["at"]):
        assert abs(stamp - gateway_now) < timedelta(minutes=5), (stamp, gateway_now)  # the fixed clock's day

    def snapshots_asked() -> int:
        return sum(r == "reqMktData" for _, r in gateway.requests_received())

    asked = snapshots_asked()
    gateway.stall_request("reqMktData", 3.0)
    body["params"]["duration"] = "4 D"  # not the first request again (an identical one within 15 s reuses its answer)
    message_id = bus.publish(body)
    wait_for(lambda: snapshots_asked() > asked, what="the snapshot asked")
    gateway.competing_session(True)
    refused = bus.reply_to(message_id)
    assert refused["status"] == "ok", refused
    spy = refused["result"]["instruments"]["SPY"]
    assert (spy["bars"], spy["snapshot"]) == (4, None), refused
    assert spy["snapshotRefused"] == "IB 10197: No market data during competing live session", refused
    assert refused["result"]["alert"] is True, refused


SLOW_HISTORY = {"historyDelayMs": 1500}
SIX = ["SPY", "QQQ", "IWM", "TLT", "GLD", "AAPL"]


@pytest.mark.slow(seconds=15)
@pytest.mark.parametrize("gateway_scenario", [SLOW_HISTORY])
def test_a_collect_the_gateway_drops_half_way_is_answered_once_with_every_instruments_bars(
    bus: Bus, gateway: Any, consumer: Any, project: str
):
    """The gateway drops every socket while collect-market-data's history requests are out (IB taking 1.5 s to
    answer each): the intent is retried once the gateway is back, and one final ok reply counts 5 daily bars for
    every instrument, stored once each (no duplicate, no gap). A lost connection still fails the whole run (to be
    retried), not just the instruments whose requests it cut."""
    body = {"intent": "collect-market-data", "params": {"instruments": SIX, "barSize": "1 day", "duration": "5 D"}}
    message_id = bus.publish(body)
    wait_for(
        lambda: sum(r == "reqHistoricalData" for _, r in gateway.requests_received()) >= len(SIX),
        what="the history requests sent",
    )
    assert gateway.drop_connections() >= 1
    replies = bus.replies_to(message_id, quiet=8.0)
    oks = [r for r in replies if r["status"] == "ok"]
    assert len(oks) == 1, replies
    assert replies[-1]["status"] == "ok", replies
    assert {s: i["bars"] for s, i in oks[0]["result"]["instruments"].items()} == {s: 5 for s in SIX}
    for symbol in SIX:
        days = stored_bars(project, symbol)
        assert len(days) == 5, (symbol, days)
        assert all(len(b) == 1 for b in days.values()), (symbol, days)
