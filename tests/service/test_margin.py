"""A margin refusal through Pub/Sub, the simulated gateway (margin enforced) and Firestore (issue 15).

IB refuses the leg that would take the initial margin above the equity with loan value (Inactive + 201); the
other legs go on, the refused one leaves the books unchanged, and the reply says the request was only partly done.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import IB_MARGIN_REJECTION, Bus, allocation, holdings, mode_collection, wait_for

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    return {"margin": {"enforce": True}}


@pytest.fixture
def consumer(consumer_factory):
    return consumer_factory(order_timeout=3.0)


def line(reply: dict[str, Any], symbol: str) -> dict[str, Any]:
    return next(i for i in reply["result"]["instruments"] if i["instrument"] == symbol)


def test_a_leg_refused_for_margin_carries_ibs_code_and_text_while_the_other_leg_fills(bus: Bus, gateway, project: str):
    first = bus.reply_to(bus.publish(allocation({"TLT": 0.05})))
    assert first["status"] == "ok", first
    tlt_held = line(first, "TLT")["target"]
    assert tlt_held > 0
    wait_for(lambda: holdings(project) == {"dummy": {"TLT": tlt_held}}, what="TLT booked to dummy")

    # A manual position bought on margin: the account's initial margin is now far above its equity with loan value,
    # so IB accepts only orders that lower it.
    gateway.set_position("AAPL", 20_000)  # 3.8M USD, 950,000 initial margin
    gateway.set_cash("USD", -3_300_000)

    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))  # sell all TLT, buy SPY
    assert reply["status"] == "ok", reply
    spy, tlt = line(reply, "SPY"), line(reply, "TLT")
    assert spy["order"] > 0
    assert tlt["order"] == -tlt_held
    assert spy["outcome"] == "rejected"
    assert spy["error"]["code"] == 201
    assert spy["error"]["message"].startswith(IB_MARGIN_REJECTION)
    assert "MUST EXCEED THE INITIAL MARGIN [" in spy["error"]["message"]
    assert tlt["outcome"] == "filled"
    assert reply["result"]["orders"] == {"sent": 2, "filled": 1, "rejected": 1, "partial": True}

    # The broker: the TLT sale went through, the SPY order was never working and nothing executed for it.
    assert spy["orderRef"] not in {o["orderRef"] for o in gateway.orders()}
    assert [e for e in gateway.executions() if e["orderRef"] == spy["orderRef"]] == []
    sold = [e for e in gateway.executions() if e["orderRef"] == tlt["orderRef"]]
    assert sum(e["shares"] for e in sold) == tlt_held
    assert "SPY" not in gateway.positions()
    assert "TLT" not in gateway.positions()

    # Firestore: the sale booked by execId, the refused order closed with nothing booked, dummy holds nothing.
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="both orders closed in the books")
    booked = {f["execId"]: f for f in mode_collection(project, "fills")}
    assert all(e["execId"] in booked for e in sold)
    assert not [f for f in booked.values() if f.get("orderRef") == spy["orderRef"]]
    closed = {o["orderRef"]: o for o in mode_collection(project, "orders")}
    assert closed[spy["orderRef"]]["filled"] == 0
    assert closed[tlt["orderRef"]]["filled"] == -tlt_held  # signed: a sale
    assert holdings(project) == {}
