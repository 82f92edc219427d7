"""Contract details cached in Firestore across restarts (issue 17): a restarted consumer asks the gateway for none it
already knows today, an entry from an earlier trading day is fetched again, and IB's 200 for a cached conId drops it.

Every test trades and checks the broker by orderRef and Firestore by execId.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.support import (
    STANDBY,
    TEST_ACCOUNT,
    Bus,
    account_document,
    allocation,
    another_intents_subscription,
    holdings,
    mode_collection,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("paper_config")


def contracts(project: str) -> dict[str, dict[str, Any]]:
    """The cache's documents by their key."""
    docs = account_document(project, TEST_ACCOUNT).collection("contracts").stream()
    return {d.get("key"): d.to_dict() | {"_ref": d.reference} for d in docs}


def contract_details_requests(gateway: Any) -> int:
    """reqContractDetails the gateway has received, from every client."""
    return sum(1 for _, request in gateway.requests_received() if request == "reqContractDetails")


def spy_key(cached: dict[str, dict[str, Any]]) -> str:
    (key,) = [k for k, d in cached.items() if d["contract"]["symbol"] == "SPY"]
    return key


def restart(project: str, consumer_factory: Any) -> Any:
    """A new consumer in place of the stopped one. It pulls from a subscription of its own (the emulator would hand
    the next message to the stopped consumer's closed stream for up to a minute); what is under test is what the
    new process finds in Firestore, not redelivery."""
    return consumer_factory(order_timeout=3.0, intents_subscription=another_intents_subscription(project, STANDBY))


def trade_spy(bus: Bus, gateway: Any, project: str, weight: float) -> dict[str, Any]:
    """An allocation that buys SPY; checks the order at the broker by orderRef and its fills booked by execId."""
    reply = bus.reply_to(bus.publish(allocation({"SPY": weight})), timeout=30.0)
    assert reply["status"] == "ok", reply
    (spy,) = [i for i in reply["result"]["instruments"] if i["instrument"] == "SPY"]
    assert spy["order"] > 0, spy
    assert spy["outcome"] == "filled", spy
    (sent,) = [o for o in gateway.orders() if o["orderRef"] == spy["orderRef"]]
    assert (sent["symbol"], sent["status"]) == ("SPY", "Filled")
    exec_ids = {e["execId"] for e in gateway.executions() if e["orderRef"] == spy["orderRef"]}
    assert exec_ids
    wait_for(lambda: exec_ids <= {f.get("execId") for f in mode_collection(project, "fills")}, what="the fills booked")
    return spy


def test_a_restarted_consumer_asks_the_gateway_for_no_contract_it_cached_today(
    bus: Bus, gateway, project: str, consumer_factory
):
    first = consumer_factory(order_timeout=3.0)
    trade_spy(bus, gateway, project, 0.05)
    cached = contracts(project)
    spy = cached[spy_key(cached)]
    assert spy["conId"] == gateway.call(lambda: gateway.server.instruments["SPY"]).conId
    assert abs(spy["fetchedAt"] - gateway.now()) < timedelta(minutes=5)  # by the gateway's clock, not ours
    first.stop()

    asked = contract_details_requests(gateway)
    restart(project, consumer_factory)
    trade_spy(bus, gateway, project, 0.1)
    assert contract_details_requests(gateway) == asked  # SPY came from Firestore
    wait_for(lambda: holdings(project).get("dummy", {}).get("SPY", 0) > 0, what="SPY held by dummy")


def test_an_entry_fetched_before_the_trading_day_is_fetched_again(bus: Bus, gateway, project: str, consumer_factory):
    first = consumer_factory(order_timeout=3.0)
    trade_spy(bus, gateway, project, 0.05)
    first.stop()
    key = spy_key(contracts(project))
    yesterday = gateway.now() - timedelta(days=1)
    contracts(project)[key]["_ref"].update({"fetchedAt": yesterday})

    asked = contract_details_requests(gateway)
    restart(project, consumer_factory)
    trade_spy(bus, gateway, project, 0.1)
    assert contract_details_requests(gateway) > asked
    assert contracts(project)[key]["fetchedAt"] > yesterday + timedelta(hours=12)


def test_ib_answering_200_for_a_cached_con_id_drops_the_entry(bus: Bus, gateway, project: str, consumer_factory):
    first = consumer_factory(order_timeout=3.0)
    trade_spy(bus, gateway, project, 0.05)
    first.stop()
    orders_before = len(gateway.orders())
    key = spy_key(contracts(project))
    # A conId IB no longer knows (one that changed after a corporate action), cached today.
    contracts(project)[key]["_ref"].update({"conId": 999_000_999, "contract.conId": 999_000_999})

    restart(project, consumer_factory)
    refused = bus.reply_to(bus.publish(allocation({"SPY": 0.1})), timeout=30.0)
    # No price for a contract IB does not know: SPY is left alone, nothing is sent for it, and the reply says why.
    assert refused["result"]["strategies"]["dummy"] == {
        "status": "skipped",
        "reason": "no price for SPY (IB 200: No security definition has been found for the request)",
    }, refused
    assert refused["alert"] is True
    assert len(gateway.orders()) == orders_before
    wait_for(lambda: key not in contracts(project), what="the cached SPY dropped")

    asked = contract_details_requests(gateway)
    trade_spy(bus, gateway, project, 0.1)
    assert contract_details_requests(gateway) > asked
    real = gateway.call(lambda: gateway.server.instruments["SPY"]).conId
    assert contracts(project)[key]["conId"] == real
