"""Historical data under IB's pacing rules (ibsim pacing.historical): the consumer never asks in a way IB refuses,
and a refusal it could not avoid is retried, never stored or traded on as "no bars"."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Bus, mode_document, wait_for

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
    """Another client of the gateway made the very request the consumer is about to make (IB refuses an identical
    one within 15 s): the consumer's request is refused with 162, and the intent is retried rather than answered
    with zero bars. The gateway's clock, not the wall clock, decides when the 15 s are over."""
    from ib_insync import IB, Stock

    other = IB()
    other.connect("127.0.0.1", gateway.port, clientId=55, timeout=4)
    try:
        assert other.reqHistoricalData(Stock("SPY", "SMART", "USD"), "", "7 D", "1 day", "TRADES", True)
    finally:
        other.disconnect()
    body = {"intent": "collect-market-data", "params": {"instruments": ["SPY"], "barSize": "1 day", "duration": "7 D"}}
    message_id = bus.publish(body)
    wait_for(lambda: gateway.history_pacing_violations() >= 1, what="the consumer's request refused for pacing")
    gateway.advance_time(16)  # IB's 15 s for an identical request are over
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
