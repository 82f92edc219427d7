"""IB Gateway's order precautions through Pub/Sub, the simulated gateway and Firestore.

A gateway that keeps its precautions for API orders (a fresh one: "Bypass Order Precautions for API Orders" off)
refuses an order over its Size Limit with 383 and one over its Total Value Limit with 451. gateway-image bypasses
them through IBC; a deployment that keeps them gets each refused leg reported with IB's code and text, an alert,
and books that hold nothing for it, while the other legs trade. Once bypassed, the next allocation places the
refused legs once each.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Bus, allocation, holdings, mode_collection, wait_for

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")

PRECAUTIONS = "Restriction is specified in Precautionary Settings of Global Configuration/Presets."
# dummy has half of about 1,054,000 USD: SPY ~304 shares (~158,000 USD: over the value limit, within the size
# limit), AAPL ~693 shares (over the size limit), GLD ~245 shares (~53,000 USD: within both).
WEIGHTS = {"SPY": 0.3, "AAPL": 0.25, "GLD": 0.1}


@pytest.fixture
def consumer(consumer_factory):
    return consumer_factory(order_timeout=3.0)


def line(reply: dict[str, Any], symbol: str) -> dict[str, Any]:
    return next(i for i in reply["result"]["instruments"] if i["instrument"] == symbol)


def test_legs_over_the_gateways_precautions_are_reported_with_ibs_text_and_traded_once_bypassed(
    bus: Bus, gateway, project: str
):
    gateway.order_precautions()  # a fresh gateway's: Size Limit 500, Total Value Limit 100,000 USD
    reply = bus.reply_to(bus.publish(allocation(WEIGHTS, idempotencyKey="precautions-kept")))
    assert reply["status"] == "ok", reply
    spy, aapl, gld = line(reply, "SPY"), line(reply, "AAPL"), line(reply, "GLD")
    assert 0 < spy["order"] <= 500
    assert aapl["order"] > 500
    assert 0 < gld["order"] <= 500
    assert spy["outcome"] == aapl["outcome"] == "rejected"
    assert spy["error"]["code"] == 451
    assert spy["error"]["message"].startswith('The following order "ID:')
    assert "exceeds  the Total Value Limit of 100,000 USD. " + PRECAUTIONS in spy["error"]["message"]
    assert aapl["error"]["code"] == 383
    assert aapl["error"]["message"].endswith("size exceeds the Size Limit of 500. " + PRECAUTIONS)
    assert gld["outcome"] == "filled"
    assert reply["result"]["orders"] == {"sent": 3, "filled": 1, "rejected": 2, "partial": True}
    assert reply["alert"] is True  # work left undone: a person must look
    assert reply["result"]["alert"] is True

    # The broker: only GLD was ever an order there; nothing executed for the refused legs.
    assert {o["orderRef"] for o in gateway.orders()} == {gld["orderRef"]}
    assert {e["orderRef"] for e in gateway.executions()} == {gld["orderRef"]}
    assert gateway.positions() == {"GLD": gld["target"]}
    # Firestore: GLD's fills booked by execId, the refused orders closed with nothing filled, dummy holds GLD only.
    wait_for(lambda: holdings(project) == {"dummy": {"GLD": gld["target"]}}, what="GLD booked to dummy")
    booked = {f["execId"] for f in mode_collection(project, "fills")}
    assert booked == {e["execId"] for e in gateway.executions()}
    assert mode_collection(project, "openOrders") == []
    closed = {o["orderRef"]: o for o in mode_collection(project, "orders")}
    assert closed[spy["orderRef"]]["filled"] == closed[aapl["orderRef"]]["filled"] == 0

    # The operator bypasses the precautions (IBC_BYPASS_ORDER_PRECAUTIONS=yes, gateway-image's default).
    gateway.order_precautions(bypass=True)
    again = bus.replies_to(bus.publish(allocation(WEIGHTS, idempotencyKey="precautions-kept")))
    assert [r.get("duplicate") for r in again] == [True]  # the same request: its stored reply, no new order
    assert {o["orderRef"] for o in gateway.orders()} == {gld["orderRef"]}

    after = bus.reply_to(bus.publish(allocation(WEIGHTS)))
    assert after["status"] == "ok", after
    assert "alert" not in after
    spy2, aapl2, gld2 = line(after, "SPY"), line(after, "AAPL"), line(after, "GLD")
    assert (spy2["outcome"], aapl2["outcome"]) == ("filled", "filled")
    assert gld2["order"] == 0  # already held: not traded twice
    assert "orderRef" not in gld2
    by_ref: dict[str, float] = {}
    for e in gateway.executions():
        by_ref[e["orderRef"]] = by_ref.get(e["orderRef"], 0) + e["shares"]
    assert by_ref == {
        gld["orderRef"]: gld["target"],
        spy2["orderRef"]: spy2["target"],
        aapl2["orderRef"]: aapl2["target"],
    }
    targets = {"SPY": spy2["target"], "AAPL": aapl2["target"], "GLD": gld["target"]}
    wait_for(lambda: holdings(project) == {"dummy": targets}, what="every leg booked to dummy")
    assert {f["execId"] for f in mode_collection(project, "fills")} == {e["execId"] for e in gateway.executions()}
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the orders closed in the books")
