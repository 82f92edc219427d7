"""An order IB holds for the open (hours: regular, placed with ignoreMarketHours on a closed market): reported as
working, booked as open, and its fills booked by execId when the session opens and it executes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import CLOCKS, Bus, allocation, holdings, mode_collection, wait_for

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")


@pytest.fixture
def consumer(consumer_factory):
    """Waiting 3 s, not 30, before reporting a market order that has not finished as working."""
    return consumer_factory(order_timeout=3.0)


@pytest.fixture
def gateway_scenario() -> dict[str, Any]:
    return {"hours": "regular"}


@pytest.mark.parametrize("market_clock", [CLOCKS["saturday"]], indirect=True)
def test_an_order_held_for_the_open_is_working_until_it_fills_at_the_open(bus: Bus, gateway, project: str):
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, ignoreMarketHours=True)))
    assert reply["status"] == "ok", reply
    (spy,) = reply["result"]["instruments"]
    assert spy["outcome"] == "working", spy
    [order] = gateway.orders()
    assert (order["orderRef"], order["status"], order["filled"]) == (spy["orderRef"], "PreSubmitted", 0)
    assert gateway.executions() == []
    assert holdings(project) == {}
    assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [spy["orderRef"]]

    gateway.set_time("2026-12-07T09:30:00-05:00")  # Monday's open
    wait_for(lambda: gateway.positions().get("SPY") == spy["target"], what="the held order to fill at the open")
    executions = gateway.executions()
    assert {e["orderRef"] for e in executions} == {spy["orderRef"]}
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": spy["target"]}}, what="the fill booked to dummy")
    fills = {f["execId"]: f for f in mode_collection(project, "fills")}
    assert set(fills) == {e["execId"] for e in executions}
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the order closed in the books")
