"""Limit prices on the tick grid, against a gateway that refuses any other price with 110 (issue 15).

SPY here trades in steps of 0.05: 10 bp through the ask (520.05) is 520.570..., which IB refuses; the consumer
must send 520.55, the grid price on the passive side of its offset.
"""

from __future__ import annotations

import pytest

from tests.support import Bus, allocation, holdings, mode_collection, wait_for, write_config

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    return {
        "instruments": [
            {"symbol": "SPY", "secType": "ETF", "primaryExchange": "ARCA", "price": 520.00, "minTick": 0.05},
            {"symbol": "EUR.USD", "secType": "CASH", "price": 1.085},
        ]
    }


@pytest.fixture
def consumer(consumer_factory):
    return consumer_factory(order_timeout=3.0)


def test_a_limit_on_a_coarse_tick_is_sent_on_the_grid_and_fills(bus: Bus, gateway, project: str):
    write_config(
        project,
        exposure={"overall": 1.0, "strategies": {"dummy": 0.5}},
        orderDefaults={"orderType": "LMT", "algo": "none", "tif": "DAY", "limitOffsetBps": 10},
    )
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert reply["status"] == "ok", reply
    (leg,) = reply["result"]["instruments"]
    assert (leg["outcome"], leg["orderType"]) == ("filled", "LMT")
    assert leg["limitPrice"] == pytest.approx(520.55)

    (sent,) = [o for o in gateway.orders() if o["orderRef"] == leg["orderRef"]]
    assert sent["lmtPrice"] == pytest.approx(520.55)
    assert sent["status"] == "Filled"
    executions = [e for e in gateway.executions() if e["orderRef"] == leg["orderRef"]]
    assert sum(e["shares"] for e in executions) == leg["target"] > 0
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the filled order closed in the books")
    booked = {f["execId"] for f in mode_collection(project, "fills")}
    assert {e["execId"] for e in executions} <= booked
    assert holdings(project) == {"dummy": {"SPY": leg["target"]}}


def test_a_leg_ib_refuses_with_110_carries_the_code_and_text_though_ib_insync_files_it_as_a_warning(
    bus: Bus, gateway, project: str
):
    off_tick = "The price does not conform to the minimum price variation for this contract."
    gateway.reject_next_order(code=110, message=off_tick)
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert reply["status"] == "ok", reply
    (leg,) = reply["result"]["instruments"]
    assert leg["outcome"] == "rejected"
    assert leg["error"] == {"code": 110, "message": off_tick}
    assert gateway.orders() == []
    assert gateway.executions() == []
    closed = wait_for(lambda: mode_collection(project, "orders"), what="the refused order closed in the books")
    assert [(o["orderRef"], o["filled"]) for o in closed] == [(leg["orderRef"], 0)]
    assert mode_collection(project, "openOrders") == []
    assert holdings(project) == {}
