"""Historical data under IB's pacing rules (ibsim pacing.historical): the consumer never asks in a way IB refuses,
and a refusal it could not avoid is retried, never stored or traded on as "no bars"."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Bus, mode_document, trading_days_until, trending_bars, wait_for

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")

SYMBOLS = ["SPY", "QQQ", "IWM", "TLT", "GLD", "AAPL", "MSFT"] + [f"SYM{i:03d}" for i in range(20)]


@pytest.fixture
def gateway_scenario() -> dict[str, Any]:
    return {"pacing": {"historical": True}}


def stored_days(project: str, symbol: str) -> list[str]:
    root = mode_document(project).collection("marketData")
    return sorted(doc.to_dict()["date"] for doc in root.document(symbol).collection("bars").stream())


def test_collect_market_data_for_many_instruments_twice_in_a_row_meets_no_pacing_violation(
    bus: Bus, gateway, project: str
):
    body = {"intent": "collect-market-data", "params": {"instruments": SYMBOLS, "barSize": "1 day", "duration": "5 D"}}
    first = bus.reply_to(bus.publish(body))
    assert first["status"] == "ok", first
    # The same requests again within IB's 15 s: identical requests IB would refuse with 162.
    second = bus.reply_to(bus.publish(body))
    assert second["status"] == "ok", second
    for reply in (first, second):
        assert {s: i["bars"] for s, i in reply["result"]["instruments"].items()} == {s: 5 for s in SYMBOLS}
    assert gateway.history_pacing_violations() == 0
    assert len(stored_days(project, "SYM019")) == 5


@pytest.mark.slow(seconds=12)
def test_a_pacing_violation_it_did_not_cause_is_retried_not_stored_as_no_bars(bus: Bus, gateway, project: str):
    """IB refuses a history request with 162 for pacing (for bars under a minute, which another client of the
    login may have spent the budget of; the consumer asks for none, so the gateway's fault stands in): the intent is
    retried rather than answered with zero bars."""
    gateway.pace_next_history()
    body = {"intent": "collect-market-data", "params": {"instruments": ["SPY"], "barSize": "1 day", "duration": "7 D"}}
    message_id = bus.publish(body)
    wait_for(lambda: gateway.history_pacing_violations() >= 1, what="the consumer's request refused for pacing")
    replies = bus.replies_to(message_id, quiet=8.0)
    final = replies[-1]
    assert final["status"] == "ok", replies
    assert final["result"]["instruments"]["SPY"]["bars"] == 7
    assert all(r["status"] != "ok" or r["result"]["instruments"]["SPY"]["bars"] == 7 for r in replies)
    assert len(stored_days(project, "SPY")) == 7


@pytest.mark.slow(seconds=15)
def test_collect_market_data_keeps_under_ibs_50_open_history_requests(bus: Bus, gateway, project: str):
    """IB answers a history request in a fraction of a second to seconds and refuses a client's 51st unanswered one
    (322): 55 instruments collected at once, with IB taking 2 s a request, all get their bars."""
    gateway.call(setattr, gateway.server.scenario, "historyDelayMs", 2000.0)
    symbols = [f"SYM{i:03d}" for i in range(55)]
    body = {"intent": "collect-market-data", "params": {"instruments": symbols, "barSize": "1 day", "duration": "3 D"}}
    reply = bus.reply_to(bus.publish(body), timeout=60)
    assert reply["status"] == "ok", reply
    assert {s: i["bars"] for s, i in reply["result"]["instruments"].items()} == dict.fromkeys(symbols, 3)
    assert gateway.history_pacing_violations() == 0
    assert len(stored_days(project, "SYM054")) == 3


MANY = ["SPY"] + [f"SYM{i:03d}" for i in range(60)]  # 61 instruments of the default scenario


@pytest.fixture
def paper_config_overrides() -> dict[str, object]:
    return {"exposure": {"overall": 1.0, "strategies": {"dummy": 0.5, "spymacdvixy": 0.5}}}


def test_collect_market_data_of_daily_bars_for_more_than_sixty_instruments_completes(bus: Bus, gateway):
    """IB keeps its 60-requests-in-10-minutes budget for bars under a minute. The consumer counted every size, and
    failed a request whose slot was more than 30 s away Transient: every redelivery of a 61-instrument collect asked
    again, spent the budget again and failed again at the 61st (dead-lettered). Found by a review of calendars."""
    body = {"intent": "collect-market-data", "params": {"instruments": MANY, "barSize": "1 day", "duration": "5 D"}}
    replies = bus.replies_to(bus.publish(body), quiet=5.0)
    assert [r["status"] for r in replies] == ["ok"], [(r["status"], r.get("error")) for r in replies]
    assert {s: i["bars"] for s, i in replies[0]["result"]["instruments"].items()} == dict.fromkeys(MANY, 5)
    assert gateway.history_pacing_violations() == 0


def test_an_allocation_after_a_large_collect_market_data_still_trades(bus: Bus, gateway):
    """The pacer's budget is the process's: after a 60-instrument collect (09:25, say), every allocation reading a
    daily bar in the next ~9.5 minutes was dead-lettered with nothing placed (the 09:30 open-allocation lost its
    day). Found by a review of calendars."""
    days = trading_days_until(gateway.now(), 61)
    gateway.set_bars("SPY", trending_bars(days[:-1], 400.0, 2.0))  # 60 rising sessions: spymacdvixy holds SPY
    collect = {"intent": "collect-market-data",
               "params": {"instruments": MANY[1:], "barSize": "1 day", "duration": "5 D"}}  # fmt: skip
    assert bus.reply_to(bus.publish(collect))["status"] == "ok"

    reply = bus.reply_to(bus.publish({"intent": "allocation", "params": {"strategies": ["spymacdvixy"]}}))
    assert reply["status"] == "ok", reply
    (spy,) = [i for i in reply["result"]["instruments"] if i["instrument"] == "SPY"]
    assert [o["orderRef"] for o in gateway.orders()] == [spy["orderRef"]]
