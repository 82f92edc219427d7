"""Books and records: fills booked once, holdings equal to the broker, reconcile, market data (issue: books)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import (
    SIGNAL_PARAMS,
    TRADING_CLOCK,
    Bus,
    allocation,
    booked_totals,
    holdings,
    long_signal,
    mode_collection,
    mode_document,
    stock_positions,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")


@pytest.fixture
def paper_config_overrides() -> dict[str, object]:
    return {"exposure": {"overall": 1.0, "strategies": {"dummy": 0.5, "testsignalgenerator": 0.5}}}


def allocate(bus: Bus, weights: dict[str, float], **instruments: dict[str, Any]) -> dict[str, Any]:
    dummy: dict[str, Any] = {"weights": weights, **({"instruments": instruments} if instruments else {})}
    reply = bus.reply_to(bus.publish(allocation(weights, params={"strategyParams": {"dummy": dummy}})))
    assert reply["status"] == "ok", reply
    return reply


def test_after_allocation_and_trade_reconciliation_holdings_equal_broker_positions(bus: Bus, gateway, project: str):
    allocate(bus, {"SPY": 0.1, "TLT": 0.05, "GLD": 0.05})
    reply = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert reply["status"] == "ok", reply
    assert booked_totals(project) == stock_positions(gateway)
    assert mode_collection(project, "openOrders") == []
    fills = mode_collection(project, "fills")
    assert {f["execId"] for f in fills} == {e["execId"] for e in gateway.executions()}


def test_trade_reconciliation_twice_or_redelivered_changes_nothing(bus: Bus, gateway, project: str):
    allocate(bus, {"SPY": 0.1})
    first = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    fills = sorted(f["execId"] for f in mode_collection(project, "fills"))
    books = holdings(project)

    second = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert second["status"] == "ok"
    assert second["result"]["fillsApplied"] == []
    assert second["result"]["fillsKnown"] >= len(fills)
    again = bus.reply_to(bus.publish({"intent": "trade-reconciliation", "idempotencyKey": first["requestId"]}))
    assert again["status"] == "ok"
    assert sorted(f["execId"] for f in mode_collection(project, "fills")) == fills
    assert holdings(project) == books


def test_a_sweep_over_booked_fills_books_nothing_twice_and_a_missing_commission_is_added(
    bus: Bus, gateway, project: str
):
    """The sweep reads the booking state of every fill of the day at once and skips the finished ones; a fill
    booked without its commission is not finished (the gateway reports the commission again with the executions,
    and the live booking or the sweep adds it)."""
    allocate(bus, {"SPY": 0.1, "TLT": 0.05})
    executions = {e["execId"] for e in gateway.executions()}
    wait_for(
        lambda: (
            {f["execId"] for f in mode_collection(project, "fills") if f.get("commission") is not None} == executions
        ),
        what="every fill booked with its commission",
    )
    books = holdings(project)
    lacking = sorted(executions)[0]
    mode_document(project).collection("fills").document(lacking).update(
        {"commission": None, "commissionCurrency": None}
    )

    reply = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert reply["status"] == "ok", reply
    assert reply["result"]["fillsApplied"] == []
    assert len(reply["result"]["commissionsAdded"]) + reply["result"]["fillsKnown"] == len(executions)
    wait_for(
        lambda: next(f for f in mode_collection(project, "fills") if f["execId"] == lacking)["commission"] is not None,
        what="the missing commission booked",
    )
    assert {f["execId"] for f in mode_collection(project, "fills")} == executions
    assert holdings(project) == books


def test_a_partial_fill_then_the_rest_is_two_fills_and_one_closed_order(bus: Bus, gateway, project: str):
    gateway.set_max_fill_size(100)
    reply = allocate(bus, {"SPY": 0.15})  # about 150 shares: two executions
    spy = next(i for i in reply["result"]["instruments"] if i["instrument"] == "SPY")
    executions = [e for e in gateway.executions() if e["orderRef"] == spy["orderRef"]]
    assert len(executions) == 2
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the order closed")
    fills = [f for f in mode_collection(project, "fills") if f["orderRef"] == spy["orderRef"]]
    assert sorted(f["quantity"] for f in fills) == sorted(e["shares"] for e in executions)
    closed = mode_collection(project, "orders")
    assert [(o["orderRef"], o["state"], o["filled"]) for o in closed] == [(spy["orderRef"], "Filled", spy["target"])]


@pytest.mark.parametrize(**TRADING_CLOCK)
def test_two_strategies_sharing_one_order_each_get_their_share(bus: Bus, gateway, project: str):
    symbol, weight = long_signal(bus, gateway)
    reply = bus.reply_to(
        bus.publish(
            {"intent": "allocation", "params": {"strategies": ["dummy", "testsignalgenerator"], "strategyParams": {
                "dummy": {"weights": {symbol: weight / 2}},
                "testsignalgenerator": SIGNAL_PARAMS}}}
        )
    )  # fmt: skip
    leg = next(i for i in reply["result"]["instruments"] if i["instrument"] == symbol)
    shares = leg["strategies"]
    assert shares["dummy"] > 0
    assert shares["testsignalgenerator"] > 0
    assert len([o for o in gateway.orders() if o["symbol"] == symbol]) == 1
    wait_for(
        lambda: (
            holdings(project).get("dummy", {}).get(symbol) == shares["dummy"]
            and holdings(project).get("testsignalgenerator", {}).get(symbol) == shares["testsignalgenerator"]
        ),
        what="each strategy's share booked",
    )


def test_a_fill_whose_commission_report_arrives_late_gets_its_commission(bus: Bus, gateway, project: str):
    gateway.hold_commissions(True)
    reply = allocate(bus, {"GLD": 0.05})
    ref = reply["result"]["instruments"][0]["orderRef"]
    fill = wait_for(
        lambda: next((f for f in mode_collection(project, "fills") if f["orderRef"] == ref), None), what="the fill"
    )
    assert fill["commission"] is None
    gateway.hold_commissions(False)
    booked = wait_for(
        lambda: next((f for f in mode_collection(project, "fills") if f["orderRef"] == ref and f["commission"]), None),
        what="the late commission booked",
    )
    assert booked["commission"] == next(e["commission"] for e in gateway.executions() if e["orderRef"] == ref)


def test_reconcile_finds_a_difference_made_behind_the_systems_back_and_fix_books_it_unallocated(
    bus: Bus, gateway, project: str
):
    allocate(bus, {"SPY": 0.05})
    consistent = bus.reply_to(bus.publish({"intent": "reconcile"}))
    assert consistent["result"]["differences"] == []
    spy = stock_positions(gateway)["SPY"]
    gateway.set_position("SPY", spy + 7)

    found = bus.reply_to(bus.publish({"intent": "reconcile"}))
    assert [(d["instrument"], d["difference"]) for d in found["result"]["differences"]] == [("SPY", 7)]
    assert holdings(project) == {"dummy": {"SPY": spy}}

    fixed = bus.reply_to(bus.publish({"intent": "reconcile", "params": {"fix": True}}))
    assert fixed["result"]["fixed"][0]["bookedTo"] == "unallocated"
    assert holdings(project) == {"dummy": {"SPY": spy}, "unallocated": {"SPY": 7}}
    assert bus.reply_to(bus.publish({"intent": "reconcile"}))["result"]["consistent"] is True


def test_collect_market_data_twice_stores_one_copy(bus: Bus, project: str):
    body = {"intent": "collect-market-data", "params": {"instruments": ["SPY", "EUR.USD"], "barSize": "1 hour",
            "duration": "2 D", "snapshot": True}}  # fmt: skip
    first = bus.reply_to(bus.publish(body))
    assert first["status"] == "ok", first
    assert first["result"]["instruments"]["SPY"]["bars"] > 0

    def stored() -> dict[str, Any]:
        root = mode_document(project).collection("marketData")
        return {
            f"{symbol}/{doc.id}": doc.to_dict()["bars"]
            for symbol in ("SPY", "EUR.USD")
            for doc in root.document(symbol).collection("bars").stream()
        }

    once = stored()
    assert once
    assert (
        sum(len(bars) for key, bars in once.items() if key.startswith("SPY/"))
        == first["result"]["instruments"]["SPY"]["bars"]
    )
    second = bus.reply_to(bus.publish(body))
    assert second["status"] == "ok"
    assert stored() == once


def test_a_strategys_forex_holding_is_a_currency_exposure_that_reconcile_finds_in_the_cash_balance(
    bus: Bus, gateway, project: str
):
    eur_before = gateway.cash()["EUR"]  # free cash no book claims
    reply = allocate(bus, {"EUR.USD": 0.1}, **{"EUR.USD": {"secType": "CASH"}})
    leg = next(i for i in reply["result"]["instruments"] if i["instrument"] == "EUR.USD")
    bought = leg["target"]
    assert bought > 0
    assert leg["outcome"] == "filled"
    assert gateway.positions() == {}  # IB books IDEALPRO fills as cash, never as a position
    assert gateway.cash()["EUR"] == eur_before + bought
    (execution,) = [e for e in gateway.executions() if e["orderRef"] == leg["orderRef"]]
    fill = wait_for(lambda: next((f for f in mode_collection(project, "fills") if f["execId"] == execution["execId"]),
                                 None), what="the fill booked")  # fmt: skip
    assert fill["strategies"] == {"dummy": bought}
    assert holdings(project) == {"dummy": {"EUR.USD": bought}}

    result = bus.reply_to(bus.publish({"intent": "reconcile"}))["result"]
    assert result["differences"] == [], result
    assert result["consistent"] is True
    (eur,) = [c for c in result["currencies"] if c["currency"] == "EUR"]
    assert eur["books"] == bought
    assert eur["byStrategy"] == {"dummy": bought}
    assert eur["freeCash"] == pytest.approx(eur_before)

    # Behind the system's back the account loses EUR it does not have free: dummy's claim is no longer backed.
    gateway.set_cash("EUR", bought - 1000)
    found = bus.reply_to(bus.publish({"intent": "reconcile"}))["result"]
    assert [(d["currency"], d["difference"]) for d in found["differences"]] == [("EUR", -1000)]
    assert holdings(project) == {"dummy": {"EUR.USD": bought}}

    fixed = bus.reply_to(bus.publish({"intent": "reconcile", "params": {"fix": True}}))["result"]
    assert [(f["instrument"], f["bookedTo"], f["quantity"]) for f in fixed["fixed"]] == [
        ("EUR.USD", "unallocated", -1000)
    ]
    assert holdings(project) == {"dummy": {"EUR.USD": bought}, "unallocated": {"EUR.USD": -1000}}
    assert bus.reply_to(bus.publish({"intent": "reconcile"}))["result"]["consistent"] is True


def test_fills_and_commissions_arriving_together_are_each_booked_once_with_the_holdings_right(
    bus: Bus, gateway, project: str
):
    """Live booking takes what arrived while a booking was in flight as one batch: several orders' fills released
    at once (each order in several executions), then every commission report at once. Each is booked once by
    execId, each order's progress counts each of its executions once, and the costs include the commissions."""
    exposure = {"overall": 1.0, "strategies": {"dummy": 0.5, "testsignalgenerator": 0.5}}
    write_config(project, exposure=exposure, orderDefaults={"timeoutSeconds": 1})  # held orders: reported working
    gateway.set_max_fill_size(20)
    gateway.hold_commissions(True)
    gateway.hold_fills(True)
    reply = allocate(bus, {"SPY": 0.1, "TLT": 0.05, "GLD": 0.05})
    legs = {i["orderRef"]: i for i in reply["result"]["instruments"]}
    assert {i["outcome"] for i in legs.values()} == {"working"}
    gateway.hold_fills(False)
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="every order filled and booked")
    executions = {e["execId"]: e for e in gateway.executions()}
    assert all(len([e for e in executions.values() if e["orderRef"] == ref]) > 1 for ref in legs)
    assert all(f["commission"] is None for f in mode_collection(project, "fills"))

    gateway.hold_commissions(False)
    wait_for(
        lambda: all(f["commission"] is not None for f in mode_collection(project, "fills")),
        what="every commission booked",
    )
    fills = {f["execId"]: f for f in mode_collection(project, "fills")}
    assert set(fills) == set(executions)
    for exec_id, fill in fills.items():
        assert fill["quantity"] == executions[exec_id]["shares"]
        assert fill["commission"] == pytest.approx(executions[exec_id]["commission"])
        assert fill["strategies"] == {"dummy": executions[exec_id]["shares"]}
    for order in mode_collection(project, "orders"):
        of_order = sorted(e for e, x in executions.items() if x["orderRef"] == order["orderRef"])
        assert sorted(order["execIds"]) == of_order  # each once
        assert order["state"] == "Filled"
        assert order["filled"] == sum(executions[e]["shares"] for e in of_order) == legs[order["orderRef"]]["target"]
    assert {o["orderRef"] for o in mode_collection(project, "orders")} == set(legs)
    assert holdings(project) == {"dummy": stock_positions(gateway)}
    (book,) = mode_collection(project, "holdings")
    for position in book["positions"].values():
        of_symbol = [e for e in executions.values() if e["symbol"] == position["symbol"]]
        cost = sum(e["price"] * e["shares"] + e["commission"] for e in of_symbol)
        assert position["avgCost"] == pytest.approx(cost / position["quantity"])
