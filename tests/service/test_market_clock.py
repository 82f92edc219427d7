"""The service keeps the market's time by the gateway's clock, so it trades on the day the gateway says it is."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import CLOCKS, Bus, allocation, holdings, wait_for

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")


@pytest.fixture
def gateway_scenario() -> dict[str, Any]:
    return {"hours": "regular"}  # NYSE 09:30-16:00 New York time on weekdays


@pytest.mark.parametrize(
    "market_clock", [CLOCKS["weekday"], CLOCKS["monday-2026-11-30"], CLOCKS["month-and-year-end"]], indirect=True
)
def test_in_session_by_the_gateways_clock_an_allocation_trades(bus: Bus, gateway, project: str):
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert reply["status"] == "ok", reply
    (spy,) = reply["result"]["instruments"]
    assert spy["outcome"] == "filled"
    assert [o["orderRef"] for o in gateway.orders()] == [spy["orderRef"]]
    assert gateway.positions()["SPY"] == spy["target"] > 0
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": spy["target"]}}, what="the fill booked")


@pytest.mark.parametrize(
    ("market_clock", "opens"),
    [
        (CLOCKS["saturday"], "2026-12-07 09:30"),
        ("2026-06-17T20:00:00-04:00", "2026-06-18 09:30"),
        ("2026-06-17T09:00:00-04:00", "2026-06-17 09:30"),
        (CLOCKS["thanksgiving"], "2026-11-27 09:30"),  # NYSE holiday (exchange calendar)
        ("2026-11-27T13:30:00-05:00", "2026-11-30 09:30"),  # after the 13:00 early close
    ],
    ids=["saturday", "after-the-close", "before-the-open", "thanksgiving", "after-early-close"],
    indirect=["market_clock"],
)
def test_out_of_session_by_the_gateways_clock_an_allocation_is_rejected(bus: Bus, gateway, project: str, opens: str):
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert reply["status"] == "rejected", reply
    assert reply["error"]["code"] == "market_closed"
    assert f"SPY (opens {opens} America/New_York)" in reply["error"]["message"]
    assert gateway.orders() == []
    assert gateway.executions() == []
    assert holdings(project) == {}
