"""P&L per strategy, the daily snapshot and eod-check on the simulated gateway with its clock (issue 16).

The broker is the reference: its executions (price, quantity, commission) give the realized P&L of a round trip,
and its net liquidation moves by exactly that much once the account is flat again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.service.test_cli import cli
from tests.support import (
    SIGNAL_PARAMS,
    Bus,
    allocation,
    clock_seen,
    holdings,
    long_signal,
    mode_collection,
    mode_document,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")

AFTER_CLOSE = "T16:05:00-04:00"  # DEFAULT_CLOCK is a June Wednesday: New York is on EDT


@pytest.fixture
def consumer(consumer_factory):
    return consumer_factory(order_timeout=3.0)


@pytest.fixture
def paper_config_overrides() -> dict[str, object]:
    return {"exposure": {"overall": 1.0, "strategies": {"dummy": 0.5, "testsignalgenerator": 0.5}}}


def ok(bus: Bus, body: dict[str, Any]) -> dict[str, Any]:
    reply = bus.reply_to(bus.publish(body))
    assert reply["status"] == "ok", reply
    return reply["result"]


def pnl(bus: Bus) -> dict[str, Any]:
    return ok(bus, {"intent": "pnl", "params": {}})


def settled_pnl(bus: Bus, gateway) -> dict[str, Any]:
    """The pnl reply once the account values the consumer holds have caught up with the broker's cash."""

    def check() -> dict[str, Any] | None:
        result = pnl(bus)
        return result if math.isclose(result["netLiquidation"], broker_nlv(gateway), abs_tol=0.005) else None

    return wait_for(check, what="net liquidation as the broker has it")


def broker_nlv(gateway) -> float:
    """Net liquidation as the simulated broker values the account now (what its account updates carry)."""

    def nlv() -> float:
        broker = gateway.server.broker
        rows = broker.account_values(broker.default_account)
        return next(float(value) for tag, value, currency in rows if tag == "NetLiquidation" and currency != "BASE")

    return float(gateway.call(nlv))


def round_trip_realized(executions: list[dict[str, Any]]) -> float:
    """What a set of executions that ends flat realized: sale proceeds - purchase cost - commissions."""
    cash = sum((e["price"] if e["side"] == "SLD" else -e["price"]) * e["shares"] for e in executions)
    return cash - sum(e["commission"] for e in executions)


def weight_for(bus: Bus, shares: int) -> float:
    probe = ok(bus, allocation({"SPY": 0.1}, dry_run=True))
    return (shares + 0.5) * probe["prices"]["SPY"] / (probe["netLiquidation"] * 0.5)


def on_day(gateway, time: str) -> str:
    """An instant on the gateway's current New York date."""
    return gateway.now().astimezone(__import__("zoneinfo").ZoneInfo("America/New_York")).date().isoformat() + time


@pytest.mark.slow(seconds=17)
def test_a_round_trip_over_two_days_agrees_with_the_broker_to_the_cent(bus: Bus, gateway, project: str):
    start = settled_pnl(bus, gateway)
    assert start["strategies"] == {}
    nlv_start = start["netLiquidation"]
    spy = gateway.call(lambda: gateway.server.instruments["SPY"]).price

    ok(bus, allocation({"SPY": weight_for(bus, 100)}))
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": 100}}, what="the buy booked")
    gateway.set_price("SPY", spy * 1.02)
    # Past IB's next three-minute tick: the held SPY is sized at its mark (decision 31), which then is the new price
    # whether or not the buy's account update came before the move.
    gateway.advance_time(180)
    clock_seen(bus, gateway)
    ok(bus, allocation({"SPY": weight_for(bus, 60)}))  # a partial sell at a higher price
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": 60}}, what="the partial sell booked")
    day1 = gateway.executions()
    assert len(day1) == 2
    assert all(e["commission"] > 0 for e in day1)
    wait_for(lambda: all(f["commission"] for f in mode_collection(project, "fills")), what="commissions booked")

    (buy,) = [e for e in day1 if e["side"] == "BOT"]
    (sell,) = [e for e in day1 if e["side"] == "SLD"]
    # Average cost: the buy's commission is part of the cost; the sell's is realized.
    cost = (buy["price"] * 100 + buy["commission"]) / 100
    expected_day1 = (sell["price"] - cost) * 40 - sell["commission"]
    (book,) = [h for h in mode_collection(project, "holdings") if h["_id"] == "dummy"]
    (position,) = book["positions"].values()
    assert position["avgCost"] == pytest.approx(cost)
    (realized,) = book["realized"].values()
    assert realized["realizedPnl"] == pytest.approx(expected_day1, abs=1e-6)
    assert realized["realizedPnlBase"] == pytest.approx(expected_day1, abs=1e-6)

    # A redelivered execution (the sweep sees every execId again) changes nothing.
    before = pnl(bus)["pnl"]["dummy"]
    swept = ok(bus, {"intent": "trade-reconciliation", "params": {}})
    assert swept["fillsAppliedCount"] == 0
    assert swept["fillsKnown"] == 2
    assert pnl(bus)["pnl"]["dummy"] == before

    gateway.set_time(on_day(gateway, AFTER_CLOSE))
    clock_seen(bus, gateway)
    closing = ok(bus, {"intent": "eod-check", "params": {}})  # day 1's snapshot
    assert (closing["clean"], closing.get("alert")) == (True, None), closing
    gateway.roll_day()
    gateway.set_time(on_day(gateway, "T11:00:00-04:00"))
    clock_seen(bus, gateway)
    gateway.set_price("SPY", spy * 0.97)
    ok(bus, allocation({"SPY": 0.0}))  # the rest, at a lower price than it cost
    wait_for(lambda: holdings(project) == {}, what="the close booked")
    day2 = gateway.executions()
    assert [e["side"] for e in day2] == ["SLD"]
    wait_for(lambda: all(f["commission"] for f in mode_collection(project, "fills")), what="commissions booked")

    broker_realized = round_trip_realized(day1 + day2)
    end = settled_pnl(bus, gateway)
    dummy = end["pnl"]["dummy"]
    assert dummy["unrealized"] == 0
    assert dummy["realizedToDate"] == pytest.approx(broker_realized, abs=0.005)
    assert dummy["sinceInception"] == pytest.approx(broker_realized, abs=0.005)
    assert end["netLiquidation"] - nlv_start == pytest.approx(broker_realized, abs=0.005)
    (first,) = [s for s in mode_collection(project, "snapshots") if s["_id"] == "2026-06-17"]
    first_total = first["strategies"]["dummy"]["realizedPnlToDate"] + first["strategies"]["dummy"]["unrealizedPnl"]
    assert first["strategies"]["dummy"]["realizedPnl"] == pytest.approx(expected_day1, abs=0.005)
    assert dummy["today"] == pytest.approx(dummy["sinceInception"] - first_total, abs=0.011)  # since day 1's close
    assert end["since"] == {"today": "2026-06-17", "monthToDate": None}
    assert dummy["monthToDate"] == pytest.approx(dummy["sinceInception"], abs=0.005)  # no snapshot before June
    summary = ok(bus, {"intent": "summary"})
    assert summary["pnl"]["dummy"] == dummy  # the same block, from the marks summary already has

    gateway.set_time(on_day(gateway, AFTER_CLOSE))
    clock_seen(bus, gateway)
    ok(bus, {"intent": "eod-check", "params": {}})  # day 2's snapshot
    days = {s["_id"]: s for s in mode_collection(project, "snapshots")}
    assert sorted(days) == ["2026-06-17", "2026-06-18"]
    second = days["2026-06-18"]
    assert second["strategies"]["dummy"]["realizedPnl"] == pytest.approx(broker_realized - expected_day1, abs=0.011)
    assert second["strategies"]["dummy"]["realizedPnlToDate"] == pytest.approx(broker_realized, abs=0.005)
    assert (first["realizedSince"], second["realizedSince"]) == (None, "2026-06-17")
    assert second["highWaterMark"] == max(first["highWaterMark"], second["netLiquidation"])
    assert second["netLiquidation"] - nlv_start == pytest.approx(broker_realized, abs=0.005)


def test_a_transfer_between_strategies_keeps_the_account_total(bus: Bus, gateway, project: str):
    nlv_start = settled_pnl(bus, gateway)["netLiquidation"]
    symbol, weight = long_signal(bus, gateway)
    ok(bus, allocation({symbol: weight / 2}))  # dummy buys at the first price
    wait_for(lambda: holdings(project).get("dummy", {}).get(symbol), what="dummy's buy booked")
    price = gateway.call(lambda: gateway.server.instruments[symbol]).price
    gateway.set_price(symbol, price * 1.01)
    # Past IB's next three-minute tick, so the account window marks the holding at the new price too: every sizing
    # below (a held instrument is sized at its mark, decision 31) sees the same price as the snapshots.
    gateway.advance_time(180)
    clock_seen(bus, gateway)

    # dummy closes, testsignalgenerator opens the same number of shares: the net order is zero, so the shares move
    # between their books without an order, at the market price of the moment.
    both = {
        "intent": "allocation",
        "params": {
            "strategies": ["dummy", "testsignalgenerator"],
            "strategyParams": {"dummy": {"weights": {symbol: 0.0}}, "testsignalgenerator": SIGNAL_PARAMS},
        },
    }
    wanted = ok(bus, {**both, "dryRun": True})["instruments"]
    target = next(i for i in wanted if i["instrument"] == symbol)["strategies"]["testsignalgenerator"]
    ok(bus, allocation({symbol: weight_for(bus, target)}))  # dummy now holds exactly that, partly at the new price
    wait_for(lambda: holdings(project).get("dummy", {}).get(symbol) == target, what="dummy holds the target")
    wait_for(lambda: all(f["commission"] for f in mode_collection(project, "fills")), what="commissions booked")
    orders_before = len(gateway.orders())

    ok(bus, both)
    assert len(gateway.orders()) == orders_before  # nothing went to the broker
    (transfer,) = mode_collection(project, "transfers")
    assert transfer["moves"] == {"dummy": -target, "testsignalgenerator": target}
    assert transfer["price"] == pytest.approx(price * 1.01, rel=1e-3)
    assert holdings(project) == {"testsignalgenerator": {symbol: target}}

    books = {h["_id"]: h for h in mode_collection(project, "holdings")}
    (position,) = books["testsignalgenerator"]["positions"].values()
    assert position["avgCost"] == pytest.approx(transfer["price"])  # the receiver opened at the market
    (given,) = books["dummy"]["realized"].values()
    assert given["realizedPnl"] != 0  # the giver realized what it earned up to the transfer (and its commissions)

    now = settled_pnl(bus, gateway)
    total = sum(line["sinceInception"] for line in now["pnl"].values())
    only = ok(bus, {"intent": "pnl", "params": {"strategies": ["dummy"]}})
    assert list(only["pnl"]) == ["dummy"]
    assert only["pnl"]["dummy"] == now["pnl"]["dummy"]
    # The books' P&L across strategies is the account's: moving shares between books made up no gain.
    assert now["netLiquidation"] - nlv_start == pytest.approx(total, abs=0.011)  # each line is rounded to the cent


SNAPSHOT_FIELDS = {"date", "baseCurrency", "netLiquidation", "cash", "highWaterMark", "strategies", "writtenAt"}
STRATEGY_FIELDS = {"marketValue", "realizedPnl", "unrealizedPnl", "grossExposure", "netExposure"}


@pytest.mark.slow(seconds=15)
def test_eod_check_reports_what_is_left_and_writes_the_snapshot_once_a_day(
    bus: Bus, gateway, project: str, tmp_path: Path
):
    write_config(
        project,
        exposure={"overall": 1.0, "strategies": {"dummy": 0.5}},
        strategies={"dummy": {"flatAtClose": True}},
    )
    ok(bus, allocation({"SPY": weight_for(bus, 10)}))
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": 10}}, what="the buy booked")
    wait_for(lambda: all(f["commission"] for f in mode_collection(project, "fills")), what="commissions booked")
    gateway.hold_fills(True)  # a DAY order that is still working late in the session
    working = ok(bus, allocation({"SPY": weight_for(bus, 10), "QQQ": 0.01}))
    (qqq,) = [i for i in working["instruments"] if i["instrument"] == "QQQ"]
    assert qqq["outcome"] == "working"
    # Just before the close (June: EDT), and the re-run below too: IB cancels a DAY order without outsideRth at the
    # close ("Day orders submitted with 'RTH ONLY' will be canceled between 4:00-4:05 pm", TWS Users' Guide), and
    # so does ibsim, so after 16:00 there is no such order left to report.
    gateway.set_time(on_day(gateway, "T15:58:00-04:00"))
    clock_seen(bus, gateway)

    report = ok(bus, {"intent": "eod-check", "params": {}})
    assert report["date"] == "2026-06-17"
    assert (report["clean"], report["alert"]) == (False, True)
    assert [o["orderRef"] for o in report["openOrders"]] == [qqq["orderRef"]]
    assert report["openOrders"][0]["tif"] == "DAY"
    assert report["notFlat"] == {"dummy": {"SPY": 10.0}}
    assert report["differences"] == []
    assert report["fills"] == 1
    assert report["unbooked"] == []
    assert report["withoutCommission"] == []
    (execution,) = gateway.executions()
    assert report["commissions"] == {execution["commissionCurrency"]: pytest.approx(execution["commission"])}
    assert set(report["pnl"]["dummy"]) >= {"today", "monthToDate", "sinceInception"}

    (first,) = mode_collection(project, "snapshots")
    assert first["_id"] == "2026-06-17"
    assert set(first) - {"_id"} >= SNAPSHOT_FIELDS
    assert first["baseCurrency"] == "USD"
    assert first["netLiquidation"] == pytest.approx(broker_nlv(gateway), abs=0.005)
    assert first["highWaterMark"] == first["netLiquidation"]  # the first snapshot
    dummy = first["strategies"]["dummy"]
    assert set(dummy) >= STRATEGY_FIELDS
    spy = gateway.call(lambda: gateway.server.instruments["SPY"]).price
    assert dummy["marketValue"] == pytest.approx(10 * spy, abs=0.005)
    assert dummy["grossExposure"] == dummy["netExposure"] == dummy["marketValue"]
    cost = (execution["price"] * 10 + execution["commission"]) / 10
    assert dummy["unrealizedPnl"] == pytest.approx((spy - cost) * 10, abs=0.005)
    assert dummy["realizedPnl"] == 0

    gateway.advance_time(60)
    again = ok(bus, {"intent": "eod-check", "params": {}})
    assert again["snapshot"] == report["snapshot"]
    (second,) = mode_collection(project, "snapshots")
    assert {k: v for k, v in second.items() if k != "writtenAt"} == {k: v for k, v in first.items() if k != "writtenAt"}
    assert second["writtenAt"] > first["writtenAt"]
    gateway.hold_fills(False)

    page = tmp_path / "pnl.html"
    done = cli(project, "report", "--days", "5", "--html", str(page))
    assert done.returncode == 0, done.stderr
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("2026-06-17")]
    assert f"{first['netLiquidation']:,.2f}" in row
    assert "<svg" in page.read_text()


def test_the_eod_sequence_leaves_a_flat_at_close_strategy_flat_and_the_others_alone(bus: Bus, gateway, project: str):
    """The eod-close-all job (close-all with flatAtClose) closes only the strategies marked `flatAtClose: close`;
    eod-check then finds them flat and reports a merely marked (`true`) one that still holds."""
    write_config(
        project,
        exposure={"overall": 1.0, "strategies": {"dummy": 0.5, "testsignalgenerator": 0.5}},
        strategies={"dummy": {"flatAtClose": "close"}, "testsignalgenerator": {"flatAtClose": True}},
    )
    ok(bus, allocation({"SPY": weight_for(bus, 10)}))
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": 10}}, what="dummy's buy booked")
    long_signal(bus, gateway)
    signal = {"strategies": ["testsignalgenerator"], "strategyParams": {"testsignalgenerator": SIGNAL_PARAMS}}
    ok(bus, {"intent": "allocation", "params": signal})
    wait_for(lambda: "testsignalgenerator" in holdings(project), what="testsignalgenerator's buy booked")
    kept = holdings(project)["testsignalgenerator"]
    bought = {e["orderRef"] for e in gateway.executions()}

    gateway.set_time(on_day(gateway, "T15:55:00-04:00"))
    clock_seen(bus, gateway)
    job = {"intent": "close-all", "params": {"flatAtClose": True}}
    closing = bus.reply_to(bus.publish(job, intent="close-all", schedule="eod-close-all"))
    assert closing["status"] == "ok", closing
    assert closing["result"]["strategies"] == ["dummy"]
    (sale,) = [i for i in closing["result"]["instruments"] if i.get("orderRef")]
    assert (sale["instrument"], sale["order"]) == ("SPY", -10)
    new = [e for e in gateway.executions() if e["orderRef"] not in bought]
    assert {(e["orderRef"], e["side"], e["shares"]) for e in new} == {(sale["orderRef"], "SLD", 10)}
    wait_for(lambda: {e["execId"] for e in new} <= {f["execId"] for f in mode_collection(project, "fills")},
             what="the sale booked by execId")  # fmt: skip
    wait_for(lambda: "dummy" not in holdings(project), what="dummy flat in the books")
    assert holdings(project)["testsignalgenerator"] == kept

    gateway.set_time(on_day(gateway, AFTER_CLOSE))
    clock_seen(bus, gateway)
    report = ok(bus, {"intent": "eod-check", "params": {}})
    assert "dummy" not in report["notFlat"]
    assert report["notFlat"] == {"testsignalgenerator": {k: float(v) for k, v in kept.items()}}
    assert report["differences"] == []


def test_with_no_strategy_marked_close_the_eod_close_all_job_closes_nothing(bus: Bus, gateway, project: str):
    """`flatAtClose` on close-all never means "every strategy": with none marked `close`, nothing is sold."""
    write_config(project, exposure={"overall": 1.0, "strategies": {"dummy": 0.5}},
                 strategies={"dummy": {"flatAtClose": True}})  # fmt: skip
    ok(bus, allocation({"SPY": weight_for(bus, 10)}))
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": 10}}, what="the buy booked")
    orders = len(gateway.orders())
    result = ok(bus, {"intent": "close-all", "params": {"flatAtClose": True}})
    assert result["strategies"] == []
    assert result["note"] == "no strategy is marked flatAtClose: close"
    assert len(gateway.orders()) == orders
    assert holdings(project) == {"dummy": {"SPY": 10}}


def test_a_position_booked_before_costs_were_kept_realizes_nothing_made_up(bus: Bus, gateway, project: str):
    ok(bus, allocation({"SPY": weight_for(bus, 10)}))
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": 10}}, what="the buy booked")
    wait_for(lambda: all(f["commission"] for f in mode_collection(project, "fills")), what="commissions booked")
    # The holdings document as the books wrote it before this change: a quantity, no cost, no realized map.
    ref = mode_document(project).collection("holdings").document("dummy")
    legacy = ref.get().to_dict() or {}
    (key,) = legacy["positions"]
    legacy["positions"][key].pop("avgCost")
    legacy.pop("realized", None)
    ref.set(legacy)

    ok(bus, allocation({"SPY": weight_for(bus, 4)}))
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": 4}}, what="the sell booked")
    wait_for(lambda: all(f["commission"] for f in mode_collection(project, "fills")), what="commissions booked")
    book = ref.get().to_dict() or {}
    assert "avgCost" not in book["positions"][key]
    entry = book["realized"][key]
    assert entry["costUnknown"] is True
    (sell,) = [e for e in gateway.executions() if e["side"] == "SLD"]
    assert entry["realizedPnl"] == pytest.approx(-sell["commission"])  # its commission only, no gain against 0
    assert pnl(bus)["strategies"]["dummy"]["costUnknown"] == ["SPY"]


def test_a_foreign_instruments_pnl_is_kept_in_its_currency_and_in_base_at_the_fills_rate(
    bus: Bus, gateway, project: str
):
    def sap(weight: float) -> dict[str, Any]:
        body = allocation({"SAP": weight})
        body["params"]["strategyParams"]["dummy"]["instruments"] = {"SAP": {"exchange": "IBIS", "currency": "EUR"}}
        return body

    bought = ok(bus, sap(0.1))
    rate = bought["fxRates"]["EUR"]
    assert rate != 1.0
    held = wait_for(lambda: holdings(project).get("dummy", {}).get("SAP"), what="the buy booked")
    price = gateway.call(lambda: gateway.server.instruments["SAP"]).price
    gateway.set_price("SAP", price * 1.03)
    ok(bus, sap(0.05))
    wait_for(lambda: holdings(project).get("dummy", {}).get("SAP", held) < held, what="the partial sell booked")
    wait_for(lambda: all(f["commission"] for f in mode_collection(project, "fills")), what="commissions booked")

    fills = mode_collection(project, "fills")
    assert [f["fxRate"] for f in fills] == [pytest.approx(rate)] * 2  # EUR's rate as the account values gave it
    (book,) = [h for h in mode_collection(project, "holdings") if h["_id"] == "dummy"]
    (entry,) = book["realized"].values()
    assert entry["currency"] == "EUR"
    assert entry["realizedPnl"] > 0  # sold above its cost, commissions included
    assert entry["realizedPnlBase"] == pytest.approx(entry["realizedPnl"] * rate)
    (position,) = book["positions"].values()
    (buy,) = [e for e in gateway.executions() if e["side"] == "BOT"]
    commission_eur = buy["commission"] * (1.0 if buy["commissionCurrency"] == "EUR" else 1 / rate)
    assert position["avgCost"] == pytest.approx(buy["price"] + commission_eur / held)


TWO_ACCOUNTS = {
    "accounts": [
        {"id": "DU111111", "baseCurrency": "USD", "cash": {"USD": 1_000_000}, "positions": []},
        {"id": "DU222222", "baseCurrency": "USD", "cash": {"USD": 500_000}, "positions": []},
    ]
}


@pytest.mark.parametrize("gateway_scenario", [TWO_ACCOUNTS])
def test_summary_still_answers_when_the_pnl_block_cannot_read_the_account(bus: Bus, gateway):
    """The consumer serves DU123456; this login manages two others: the P&L block says so, the summary answers."""
    result = ok(bus, {"intent": "summary"})
    assert sorted(result["accounts"]) == ["DU111111", "DU222222"]
    assert result["pnl"]["error"] == "unknown_account"


def test_a_short_round_trip_agrees_with_the_broker_to_the_cent(bus: Bus, gateway, project: str):
    """A short's average cost is its proceeds less the commission, in the books as at the broker; the cover
    realizes (sell - buy) x qty - both commissions."""
    spy = gateway.call(lambda: gateway.server.instruments["SPY"]).price
    ok(bus, allocation({"SPY": -weight_for(bus, 100)}))
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": -100}}, what="the short booked")
    wait_for(lambda: all(f["commission"] for f in mode_collection(project, "fills")), what="commissions booked")
    (sale,) = gateway.executions()
    assert (sale["side"], sale["shares"]) == ("SLD", 100)

    def broker_avg_cost() -> float:
        broker = gateway.server.broker
        return broker.accounts[broker.default_account].positions["SPY"].avgCost

    (book,) = [h for h in mode_collection(project, "holdings") if h["_id"] == "dummy"]
    (position,) = book["positions"].values()
    assert position["avgCost"] == pytest.approx((sale["price"] * 100 - sale["commission"]) / 100, abs=1e-9)
    assert position["avgCost"] == pytest.approx(gateway.call(broker_avg_cost), abs=1e-9)

    gateway.set_price("SPY", spy * 0.98)
    ok(bus, allocation({"SPY": 0.0}))
    wait_for(lambda: holdings(project) == {}, what="the cover booked")
    wait_for(lambda: all(f["commission"] for f in mode_collection(project, "fills")), what="commissions booked")
    executions = gateway.executions()
    assert [(e["side"], e["orderRef"]) for e in executions[1:]] == [("BOT", executions[1]["orderRef"])]
    booked = {f["execId"] for f in mode_collection(project, "fills")}
    assert booked == {e["execId"] for e in executions}

    broker_realized = round_trip_realized(executions)
    assert broker_realized > 0  # covered below the sale
    dummy = settled_pnl(bus, gateway)["pnl"]["dummy"]
    assert dummy["unrealized"] == 0
    assert dummy["realizedToDate"] == pytest.approx(broker_realized, abs=0.005)
