"""Two listings of one symbol in one request: each leg its own orderRef (decision 38).

SAP trades on IBIS in EUR and on NYSE in USD (SHOP on TSX and NYSE, RY on TSX and NYSE...): one symbol, one
localSymbol, two conIds. A strategy that moves from one listing to the other sells one and buys the other in one
request. Their orderRefs used to be made of the symbol alone, so both legs shared one: the second was taken for
the first's order and never placed, and a close-all cancelled only one of two working orders. Every test checks the
broker by orderRef and Firestore by orderRef and execId.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest
import yaml

from consumer.broker.instruments import Instrument
from consumer.broker.orders import LegOrder, order_ref
from tests.support import (
    Bus,
    allocation,
    delete_mode_documents,
    mode_collection,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("paper_config")

IBIS = {"exchange": "IBIS", "currency": "EUR"}
NYSE = {"primaryExchange": "NYSE", "currency": "USD"}
CLIENT_ID = 1  # tests/support.py settings_for_tests


@pytest.fixture
def gateway_scenario() -> dict[str, Any]:
    """The default instruments (SAP on IBIS among them) and SAP's NYSE listing, named SAP.NYSE in the scenario."""
    default = yaml.safe_load(resources.files("ibsim").joinpath("scenarios/default.yaml").read_text())
    nyse = {"key": "SAP.NYSE", "symbol": "SAP", "secType": "STK", "primaryExchange": "NYSE", "price": 180.0}
    return {"instruments": [*default["instruments"], nyse]}


@pytest.fixture
def consumer(consumer_factory):
    """Waiting 3 s, not 30, for a market order to finish before reporting it working (some tests hold fills)."""
    return consumer_factory(order_timeout=3.0)


def sap(listing: dict[str, str], weight: float = 0.05, **body: Any) -> dict[str, Any]:
    request = allocation({"SAP": weight}, **body)
    request["params"]["strategyParams"]["dummy"]["instruments"] = {"SAP": listing}
    return request


def ok(bus: Bus, body: dict[str, Any]) -> dict[str, Any]:
    reply = bus.reply_to(bus.publish(body))
    assert reply["status"] == "ok", reply
    return reply["result"]


def held(project: str) -> dict[str, dict[int, float]]:
    """{strategy: {conId: quantity}}: by conId, since both listings are "SAP"."""
    out: dict[str, dict[int, float]] = {}
    for doc in mode_collection(project, "holdings"):
        positions = {int(c): p["quantity"] for c, p in doc.get("positions", {}).items() if p.get("quantity")}
        if positions:
            out[doc["_id"]] = positions
    return out


def booked_once(gateway, project: str) -> None:
    """Every execution at the broker booked once, by execId, under its order's orderRef."""
    executions = sorted((e["execId"], e["orderRef"]) for e in gateway.executions())
    assert executions

    def booked() -> list[tuple[str, str]]:
        return sorted((f["execId"], f["orderRef"]) for f in mode_collection(project, "fills"))

    wait_for(lambda: booked() == executions, what="each execution booked once by execId")


def bought_on_ibis(bus: Bus, gateway, project: str) -> dict[str, Any]:
    (line,) = ok(bus, sap(IBIS))["instruments"]
    assert (line["instrument"], line["currency"], line["outcome"]) == ("SAP", "EUR", "filled"), line
    wait_for(lambda: held(project) == {"dummy": {line["conId"]: line["target"]}}, what="the IBIS buy booked")
    return line


@pytest.mark.usefixtures("consumer")
def test_moving_a_strategy_to_another_listing_sells_one_and_buys_the_other(bus: Bus, gateway, project: str):
    ibis = bought_on_ibis(bus, gateway, project)
    gateway.set_price("SAP.NYSE", 181.25)

    result = ok(bus, sap(NYSE))
    lines = {line["currency"]: line for line in result["instruments"]}
    sell, buy = lines["EUR"], lines["USD"]
    assert (sell["instrument"], buy["instrument"]) == ("SAP", "SAP")
    # Each line says what it was sized at: the listing bought, at its own price; the one sold out, at none needed.
    assert (buy["price"], sell["price"], result["prices"]) == (181.25, None, {"SAP": 181.25})
    assert sell["conId"] == ibis["conId"] != buy["conId"]
    assert (sell["order"], sell["outcome"]) == (-ibis["target"], "filled"), sell
    assert (buy["order"], buy["outcome"], buy["existing"]) == (buy["target"], "filled", False), buy
    assert sell["orderRef"] != buy["orderRef"]
    assert result["orders"]["sent"] == 2

    at_broker = {o["orderRef"]: (o["symbol"], o["action"], o["totalQuantity"]) for o in gateway.orders()}
    assert at_broker == {
        ibis["orderRef"]: ("SAP", "BUY", ibis["target"]),
        sell["orderRef"]: ("SAP", "SELL", ibis["target"]),
        buy["orderRef"]: ("SAP.NYSE", "BUY", buy["target"]),
    }
    assert gateway.positions() == {"SAP.NYSE": buy["target"]}
    booked_once(gateway, project)
    wait_for(lambda: held(project) == {"dummy": {buy["conId"]: buy["target"]}}, what="the books on the NYSE listing")
    closed = {o["orderRef"]: o["state"] for o in mode_collection(project, "orders")}
    assert closed == dict.fromkeys([ibis["orderRef"], sell["orderRef"], buy["orderRef"]], "Filled")
    assert mode_collection(project, "openOrders") == []


@pytest.mark.usefixtures("consumer")
def test_close_all_cancels_the_working_orders_of_both_listings_and_closes_what_is_held(bus: Bus, gateway, project: str):
    ibis = bought_on_ibis(bus, gateway, project)
    gateway.hold_fills(True)
    moving = ok(bus, sap(NYSE))
    working = {line["currency"]: line["orderRef"] for line in moving["instruments"]}
    assert len(set(working.values())) == 2
    assert {o["orderRef"]: o["status"] for o in gateway.orders() if o["orderRef"] in working.values()} == dict.fromkeys(
        working.values(), "Submitted"
    )

    closing = ok(bus, {"intent": "close-all", "params": {"strategies": ["dummy"]}})
    assert sorted((c["orderRef"], c["status"], c["filled"]) for c in closing["cancelled"]) == sorted(
        (ref, "Cancelled", 0.0) for ref in working.values()
    )
    (close,) = closing["instruments"]  # what dummy holds: the IBIS listing, bought first
    assert (close["conId"], close["order"]) == (ibis["conId"], -ibis["target"]), close
    assert close["orderRef"] not in working.values()
    statuses = {o["orderRef"]: o["status"] for o in gateway.orders()}
    assert {ref: statuses[ref] for ref in working.values()} == dict.fromkeys(working.values(), "Cancelled")

    gateway.hold_fills(False)
    wait_for(lambda: gateway.positions() == {}, what="the close to fill, nothing else working")
    assert {o["orderRef"]: o["status"] for o in gateway.orders()} == {
        ibis["orderRef"]: "Filled",
        **dict.fromkeys(working.values(), "Cancelled"),
        close["orderRef"]: "Filled",
    }
    booked_once(gateway, project)
    wait_for(lambda: held(project) == {}, what="dummy flat in the books")
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="every order closed in the books")
    closed = {o["orderRef"]: o["state"] for o in mode_collection(project, "orders")}
    assert {ref: closed[ref] for ref in working.values()} == dict.fromkeys(working.values(), "Cancelled")


@pytest.mark.usefixtures("consumer")
def test_an_order_placed_under_the_orderref_of_before_the_upgrade_is_found_not_placed_again(
    bus: Bus, gateway, project: str, monkeypatch: pytest.MonkeyPatch
):
    """A request whose first run placed its leg under the symbol-only orderRef (the version before decision 38),
    then lost its documents, runs again on this version: the leg is found under its former ref, on its conId."""

    def symbol_only(cls: type[LegOrder], intent: str, request_id: str, instrument: Instrument, quantity: float):
        return cls(order_ref(intent, request_id, instrument.symbol), instrument, quantity)

    gateway.hold_fills(True)  # working at the broker, so the second run has something to find
    request = sap(NYSE, idempotencyKey="placed-before-the-upgrade")
    with monkeypatch.context() as before:
        before.setattr(LegOrder, "of_instrument", classmethod(symbol_only))
        (first,) = ok(bus, request)["instruments"]
    assert first["orderRef"].endswith("-SAP"), first
    delete_mode_documents(project)  # its claim and write-ahead gone: the next run sizes it afresh

    since = len(gateway.requests_received())
    (again,) = ok(bus, request)["instruments"]
    assert (again["conId"], again["existing"], again["orderRef"]) == (first["conId"], True, first["orderRef"])
    sent = [name for client, name in gateway.requests_received()[since:] if client == CLIENT_ID]
    assert "placeOrder" not in sent, sent
    assert [o["orderRef"] for o in gateway.orders()] == [first["orderRef"]]
    assert mode_collection(project, "openOrders") == []  # nothing written ahead under the new ref
