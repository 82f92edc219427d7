"""Instruments other than US stocks (futures, a symbol with two listings) through sizing, risk and contract
lookup: futures measured at their notional by risk-check, traded through the Globex session, and a listing looked
up by conId never answering an ambiguous symbol. Found by an independent review; each failed before its fix."""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest
import yaml

from tests.support import (
    STANDBY,
    Bus,
    allocation,
    another_intents_subscription,
    clock_seen,
    mode_collection,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")


@pytest.fixture
def consumer(consumer_factory):
    return consumer_factory(order_timeout=3.0)


@pytest.fixture
def paper_config_overrides() -> dict[str, object]:
    return {"exposure": {"overall": 1.0, "strategies": {"dummy": 0.5, "testsignalgenerator": 0.5}}}


@pytest.fixture
def gateway_scenario(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The built-in scenario, or a test's own through indirect parametrization."""
    return getattr(request, "param", {})


def two_saps() -> dict[str, Any]:
    """The default instruments (SAP on IBIS in EUR among them) and SAP's NYSE listing (USD), as test_shared_symbol."""
    default = yaml.safe_load(resources.files("ibsim").joinpath("scenarios/default.yaml").read_text())
    nyse = {"key": "SAP.NYSE", "symbol": "SAP", "secType": "STK", "primaryExchange": "NYSE", "price": 180.0}
    return {"instruments": [*default["instruments"], nyse]}


ES = {"ES": {"secType": "FUT", "exchange": "CME", "currency": "USD"}}


def es_body(weight: float, **body: Any) -> dict[str, Any]:
    request = allocation({"ES": weight}, **body)
    request["params"]["strategyParams"]["dummy"]["instruments"] = ES
    return request


def booked(project: str) -> dict[str, float]:
    doc = next((d for d in mode_collection(project, "holdings") if d["_id"] == "dummy"), {})
    return {p["symbol"]: p["quantity"] for p in doc.get("positions", {}).values() if p.get("quantity")}


def test_risk_check_leverage_counts_a_futures_notional_as_the_allocation_cap_does(bus: Bus, gateway, project: str):
    """The allocation's leverage cap counts a future's notional (price x multiplier x quantity); risk-check's
    leverage limit reads IB's GrossPositionValue, which leaves futures out: 0.75x of ES notional measures 0."""
    write_config(project, exposure={"overall": 1.0, "strategies": {"dummy": 0.9}})
    reply = bus.reply_to(bus.publish(es_body(1.0)))
    assert reply["status"] == "ok", reply
    (line,) = reply["result"]["instruments"]
    assert line["outcome"] == "filled", line
    contracts = line["target"]
    assert contracts == 3, line
    wait_for(lambda: booked(project) == {line["instrument"]: contracts}, what="the ES buy booked")
    nlv = reply["result"]["netLiquidation"]
    notional = contracts * 5250.0 * 50 / nlv  # ~0.75x net liquidation

    write_config(project, exposure={"overall": 1.0, "strategies": {"dummy": 0.9}},
                 risk={"leverage": {"max": 0.5, "action": "reduce"}})  # fmt: skip
    check = bus.reply_to(bus.publish({"intent": "risk-check", "params": {}}))
    assert check["status"] == "ok", check
    leverage = next(x for x in check["result"]["limits"] if x["limit"] == "leverage")
    assert leverage["value"] > 0.7, (
        f"risk-check measures leverage {leverage['value']} with {contracts} ES held ({notional:.2f}x net liquidation "
        f"in notional, which the allocation's cap counts): verdict {leverage['verdict']}, nothing reduced"
    )
    assert leverage["verdict"] == "breach", leverage
    wait_for(lambda: gateway.positions().get("ES", 0) < contracts, what="the reduce to sell ES")


def test_a_future_is_traded_in_globex_hours_not_only_in_its_liquid_hours(bus: Bus, gateway, project: str):
    """ES trades on CME Globex through its trading hours (Sunday to Friday 17:00-16:00 Chicago); its liquid hours
    (08:30-15:00 Chicago) are the pit session. At 20:00 New York on a Wednesday IB takes and fills the order; the
    consumer refuses it as a closed market (and so would a risk-check reduce, or close-all, of a future at night)."""
    gateway.set_time("2026-06-17T20:00:00-04:00")
    clock_seen(bus, gateway)
    reply = bus.reply_to(bus.publish(es_body(1.0)))
    assert reply["status"] == "ok", f"ES refused in Globex hours: {reply['error']}"
    (line,) = reply["result"]["instruments"]
    assert line["outcome"] == "filled", line
    assert gateway.positions().get("ES") == line["target"], gateway.positions()


@pytest.mark.parametrize("gateway_scenario", [two_saps()], indirect=True, ids=["two-listings"])
def test_a_symbol_two_listings_share_stays_ambiguous_after_a_held_listing_is_looked_up_by_con_id(
    bus: Bus, gateway, project: str, consumer, consumer_factory
):
    """Plain "SAP" (SMART, any currency) names two listings: refused as ambiguous. Once the books' IBIS SAP has
    been looked up by conId from the contract store (a restarted consumer's close-all; any rebalance of a held,
    untargeted instrument, or a sweep pricing a fill, does it), the cache files it under the spec plain "SAP" resolves
    to, and the next plain "SAP" silently trades the IBIS listing in EUR."""
    plain = bus.reply_to(bus.publish(allocation({"SAP": 0.05})))
    assert plain["status"] == "error", plain
    assert plain["error"]["code"] == "unknown_instrument", plain
    assert "ambiguous" in plain["error"]["message"], plain

    ibis = allocation({"SAP": 0.05})
    ibis["params"]["strategyParams"]["dummy"]["instruments"] = {"SAP": {"exchange": "IBIS", "currency": "EUR"}}
    bought = bus.reply_to(bus.publish(ibis))
    assert bought["status"] == "ok", bought
    wait_for(lambda: booked(project).get("SAP"), what="the IBIS buy booked")
    consumer.stop()
    consumer_factory(order_timeout=3.0, intents_subscription=another_intents_subscription(project, STANDBY))
    closed = bus.reply_to(bus.publish({"intent": "close-all", "params": {}}))
    assert closed["status"] == "ok", closed
    orders_before = len(gateway.orders())

    again = bus.reply_to(bus.publish(allocation({"SAP": 0.05})))
    sent = gateway.orders()[orders_before:]
    lines = (again["result"] or {}).get("instruments", [])
    assert again["status"] == "error", (
        f"plain SAP, ambiguous before, now resolved from the cache and traded: {again['status']}, "
        f"{[(i['instrument'], i['currency'], i.get('outcome')) for i in lines]}, "
        f"orders at the broker {[(o['symbol'], o['action'], o['totalQuantity']) for o in sent]}"
    )
    assert sent == [], sent


@pytest.mark.parametrize("gateway_scenario", [{"hours": "regular"}], indirect=True, ids=["regular-hours"])
def test_the_eod_close_all_sells_the_open_markets_and_reports_a_closed_one(bus: Bus, gateway, project: str):
    """dummy holds SPY (NYSE) and SAP (Xetra, closed at 11:30 New York). close-all at 15:55 New York, as the
    eod-close-all job runs, was refused whole (`market_closed`, SAP): SPY stayed open overnight. It now sells SPY,
    leaves SAP (and the books' SAP) as it is, and says so with an alert. Found by a review of instruments."""
    bought = bus.reply_to(bus.publish(allocation({"SPY": 0.05, "SAP": 0.05})))  # 11:00 New York: both open
    assert bought["status"] == "ok", bought
    held = {i["instrument"]: i["target"] for i in bought["result"]["instruments"]}
    wait_for(lambda: booked(project) == held, what="both buys booked to dummy")

    gateway.set_time("2026-06-17T15:55:00-04:00")
    clock_seen(bus, gateway)
    reply = bus.reply_to(bus.publish({"intent": "close-all", "params": {"strategies": ["dummy"]}}))
    assert reply["status"] == "ok", reply
    result = reply["result"]
    assert [m.split(" ")[0] for m in result["closedMarkets"]] == ["SAP"], result
    assert result["alert"] is True
    sales = [(o["symbol"], o["action"], o["totalQuantity"]) for o in gateway.orders() if o["action"] == "SELL"]
    assert sales == [("SPY", "SELL", held["SPY"])]
    assert gateway.positions().get("SPY", 0) == 0
    assert gateway.positions()["SAP"] == held["SAP"]
    wait_for(lambda: booked(project) == {"SAP": held["SAP"]}, what="the SPY sale booked, SAP still dummy's")
    fills = {f["execId"] for f in mode_collection(project, "fills")}
    assert fills == {e["execId"] for e in gateway.executions()}
