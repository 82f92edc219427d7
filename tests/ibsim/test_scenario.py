"""Scenario files, their validation, the state file, and the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock

from ibsim import Scenario, ScenarioError, ThreadedGateway
from tests.support import DEFAULT_CLOCK, sim_scenario

from .conftest import cancel_left_pending, ensure_loop, ibsim_cli, kept_state, wait_until

SPY = Stock("SPY", "SMART", "USD")
ROOT = Path(__file__).resolve().parents[2]


def test_default_scenario() -> None:
    s = Scenario.default()
    assert s.name == "default"
    assert [a.id for a in s.accounts] == ["DU123456"]
    assert s.accounts[0].cash == {"USD": 1_000_000, "EUR": 50_000}
    keys = {i.key for i in s.instruments}
    assert {"SPY", "QQQ", "VIXY", "IWM", "TLT", "GLD", "AAPL", "MSFT", "SAP", "ES"} <= keys
    assert {"EUR.USD", "GBP.USD", "USD.JPY", "USD.CAD"} <= keys
    assert {f"SYM{i:03d}" for i in range(60)} <= keys
    assert s.instrument("ES").multiplier == 50
    assert s.instrument("SAP").currency == "EUR"
    assert all(i.volatility == 0 for i in s.instruments)
    # the shipped file passes its own schema
    path = resources.files("ibsim").joinpath("scenarios/default.yaml")
    assert Scenario.load(str(path)).instruments == s.instruments


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {
                "instruments": [{"symbol": "A", "secType": "STK", "price": 1}] * 2
                + [{"symbol": "B", "secType": "STK", "price": 1, "currency": "XYZ"}]
            },
            "instruments[1].symbol: 'A' is defined twice",
        ),
        (
            {
                "instruments": [
                    {"symbol": "A", "secType": "STK", "price": 1},
                    {"symbol": "B", "secType": "STK", "price": 1},
                    {"symbol": "C", "secType": "STK", "price": 1, "currency": "XYZ"},
                ]
            },
            "instruments[2].currency: 'XYZ' is not a currency",
        ),
        ({"seed": "abc"}, "seed: 'abc' is not of type 'integer'"),
        ({"hours": "sometimes"}, "hours: 'sometimes' is not one of ['always', 'regular']"),
        ({"colour": "red"}, "(top level): Additional properties are not allowed ('colour' was unexpected)"),
        ({"instruments": [{"symbol": "A", "secType": "STK", "price": -1}]}, "instruments[0].price: -1 is less than"),
        ({"instruments": [{"symbol": "A", "secType": "OPT", "price": 1}]}, "instruments[0].secType: 'OPT' is not one"),
        ({"instruments": [{"symbol": "EURUSD", "secType": "CASH", "price": 1}]}, "instruments[0].symbol: forex is"),
        ({"instruments": [{"symbol": "NQ", "secType": "FUT", "price": 1}]}, "instruments[0].multiplier: a future"),
        (
            {"instruments": [{"symbol": "EUR.USD", "key": "EURO", "secType": "CASH", "price": 1}]},
            "instruments[0].key: a forex pair is named by its symbol (EUR.USD), not 'EURO'",
        ),
        (
            {
                "instruments": [
                    {"symbol": "SAP", "secType": "STK", "price": 1},
                    {"symbol": "SAP", "secType": "STK", "price": 1},
                ]
            },
            "instruments[1].symbol: 'SAP' is defined twice",
        ),
        ({"accounts": [{"id": "DU1", "baseCurrency": "ABC"}]}, "accounts[0].baseCurrency: 'ABC' is not a currency"),
        ({"accounts": [{"id": "DU1", "cash": {"usd": 5}}]}, "accounts[0].cash.usd: 'usd' is not a currency"),
        (
            {"accounts": [{"id": "DU1", "positions": [{"symbol": "NOPE", "quantity": 1}]}]},
            "accounts[0].positions[0].symbol: 'NOPE' is not an instrument",
        ),
        ({"accounts": [{"id": "DU1", "positions": [{"symbol": "SPY"}]}]}, "accounts[0].positions[0]: 'quantity' is"),
        ({"faults": [{"at": 1, "action": "explode"}]}, "faults[0].action: 'explode' is not one of"),
        ({"faults": [{"at": 1, "action": "send_error"}]}, "faults[0].args.code: send_error needs it"),
        ({"faults": [{"at": 1, "action": "send_error", "args": {"code": "x"}}]}, "faults[0].args.code: 'x' has the"),
        ({"maxFillSize": 0}, "maxFillSize: 0 is less than or equal to the minimum of 0"),
    ],
)
def test_scenario_errors_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        Scenario.from_dict(data)
    assert str(e.value).startswith(message), str(e.value)


def test_load_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "small.yaml"
    y.write_text("seed: 7\nmaxFillSize: 100\naccounts:\n  - {id: DU777, cash: {USD: 5000}}\n")
    s = Scenario.load(y)
    assert (s.name, s.seed, s.maxFillSize, s.accounts[0].id) == ("small", 7, 100, "DU777")
    assert len(s.instruments) == len(Scenario.default().instruments)  # left-out keys keep the defaults
    j = tmp_path / "small.json"
    j.write_text(json.dumps({"name": "j", "instruments": [{"symbol": "XYZ", "secType": "ETF", "price": 3}]}))
    s = Scenario.load(j)
    assert [(i.key, i.secType, i.kind) for i in s.instruments] == [("XYZ", "STK", "ETF")] + [
        (f"SYM{n:03d}", "STK", "STK") for n in range(60)
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        Scenario.load(bad)
    with pytest.raises(ScenarioError, match="cannot read"):
        Scenario.load(tmp_path / "missing.yaml")


def test_custom_scenario_drives_the_gateway() -> None:
    scenario = sim_scenario(
        {
            "accounts": [
                {
                    "id": "DU1",
                    "baseCurrency": "EUR",
                    "cash": {"EUR": 100_000},
                    "positions": [{"symbol": "SAP", "quantity": 10, "avgCost": 150}],
                }
            ],
            "maxFillSize": 100,
            "commission": {"stockPerShare": 0.01, "stockMin": 2.0},
        }
    )
    with ThreadedGateway(port=0, scenario=scenario) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            assert ib.managedAccounts() == ["DU1"]
            assert [(p.contract.symbol, p.position, p.avgCost) for p in ib.positions()] == [("SAP", 10, 150)]
            nlv = {v.currency: float(v.value) for v in ib.accountValues() if v.tag == "NetLiquidation"}
            assert nlv == {"EUR": pytest.approx(100_000 + 10 * 175)}
            trade = ib.placeOrder(SPY, MarketOrder("BUY", 250))
            wait_until(ib, trade.isDone, what="fill")
            assert [f.execution.shares for f in trade.fills] == [100, 100, 50]
            assert sum(f.commissionReport.commission for f in trade.fills) == pytest.approx(2.5)
            assert gw.cash("DU1")["USD"] == pytest.approx(-250 * 520.01 - 2.5)
        finally:
            ib.disconnect()


def test_state_file_round_trip(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with kept_state(state) as (gw, ib):
        filled = ib.placeOrder(SPY, MarketOrder("BUY", 20, orderRef="kept"))
        resting = ib.placeOrder(SPY, LimitOrder("BUY", 5, 400.0, tif="GTC", orderRef="resting"))
        wait_until(ib, lambda: filled.isDone() and resting.orderStatus.status == "Submitted", what="orders")
        gw.set_cash("JPY", 1000.0)
        cash = gw.cash()
    saved = json.loads(state.read_text())
    assert saved["accounts"]["DU123456"]["positions"]["SPY"]["quantity"] == 20

    with kept_state(state) as (gw, ib):
        assert gw.positions() == {"SPY": 20}
        assert gw.cash() == cash
        assert [(o["orderRef"], o["status"]) for o in gw.orders()] == [("kept", "Filled"), ("resting", "Submitted")]
        assert len(gw.executions()) == 1
        assert [t.order.orderRef for t in ib.openTrades()] == ["resting"]
        assert [f.execution.orderRef for f in ib.fills()] == ["kept"]
        # the resting order still works after the restart
        gw.set_price("SPY", 399.0)
        wait_until(ib, lambda: ib.openTrades() == [], what="resting order to fill")
        assert gw.positions() == {"SPY": 25}
        newer = ib.placeOrder(SPY, MarketOrder("SELL", 1))
        assert newer.order.orderId > resting.order.orderId
        assert newer.order.permId != filled.order.permId


def test_cli_starts_prints_and_stops_on_sigterm(tmp_path: Path) -> None:
    cli = ("--state", str(tmp_path / "s.json"), "--clock", DEFAULT_CLOCK)
    with ibsim_cli(*cli, cwd=tmp_path, stderr=subprocess.PIPE) as (proc, port, line):
        assert "(scenario: default, account DU123456)" in line
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", port, clientId=1, timeout=4)
        trade = ib.placeOrder(SPY, MarketOrder("BUY", 1))
        wait_until(ib, trade.isDone, what="fill")
        ib.disconnect()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        _, err = proc.communicate()
        assert "client 1 ready" in err
        assert "fill 1/" in err
        assert json.loads((tmp_path / "s.json").read_text())["accounts"]["DU123456"]["positions"]["SPY"]


def test_cli_rejects_a_bad_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("instruments:\n  - {symbol: A, secType: STK, price: 1, currency: XYZ}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "ibsim", "--port", "0", "--scenario", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert done.returncode == 2
    assert "instruments[0].currency: 'XYZ' is not a currency" in done.stderr


def test_margin_is_enforced_unless_a_scenario_says_otherwise() -> None:
    assert Scenario.default().marginEnforce
    assert not Scenario.from_dict({"margin": {"enforce": False}}).marginEnforce


def test_the_paper_scenario_gives_realtime_data_for_us_etfs_and_delayed_for_the_rest() -> None:
    paper = Scenario.load(ROOT / "ibsim" / "scenarios" / "paper.yaml")
    default = Scenario.default()
    assert paper.marginEnforce
    assert paper.permissions == "delayed"
    # the same instruments as the default scenario; only the US ETFs carry a realtime permission of their own
    assert [i.key for i in paper.instruments] == [i.key for i in default.instruments]
    realtime = {i.key for i in paper.instruments if i.permissions == "realtime"}
    assert realtime == {i.key for i in default.instruments if i.kind == "ETF" and i.currency == "USD"}
    assert {"SPY", "QQQ", "TLT"} <= realtime
    assert {i.permissions for i in paper.instruments if i.key not in realtime} == {""}  # marketData: delayed


def test_an_order_pending_cancel_when_the_gateway_stopped_is_cancelled_after_its_restart(tmp_path: Path) -> None:
    """The exchange confirmed the cancel while the gateway was down: no order stays PendingCancel for ever."""
    state = tmp_path / "state.json"
    with kept_state(state) as (gw, ib):
        cancel_left_pending(gw, ib, "cut-off", SPY)
    with ThreadedGateway(port=0, scenario=sim_scenario(), state_file=state) as gw:
        assert [(o["orderRef"], o["status"]) for o in gw.orders()] == [("cut-off", "Cancelled")]
        assert gw.executions() == []


def test_two_listings_of_one_symbol_are_two_instruments_told_apart_by_currency_and_listing() -> None:
    """SAP trades on IBIS in EUR and on NYSE in USD: one symbol, one localSymbol, two conIds. A scenario names the
    second by its `key`; IB finds each by its currency or listing, and a contract naming neither is ambiguous."""
    nyse = {"key": "SAP.NYSE", "symbol": "SAP", "secType": "STK", "primaryExchange": "NYSE", "price": 180.0}
    ibis = {"symbol": "SAP", "secType": "STK", "primaryExchange": "IBIS", "currency": "EUR", "price": 175.0}
    scenario = sim_scenario(
        {
            "instruments": [ibis, nyse],
            "accounts": [
                {"id": "DU1", "positions": [{"symbol": "SAP", "quantity": 3}, {"symbol": "SAP.NYSE", "quantity": 4}]}
            ],
        }
    )
    sap, sap_nyse = scenario.instrument("SAP"), scenario.instrument("SAP.NYSE")
    assert (sap.symbol, sap_nyse.symbol, sap_nyse.longName) == ("SAP", "SAP", "SAP")
    assert sap.conId != sap_nyse.conId
    with ThreadedGateway(port=0, scenario=scenario) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            held = sorted((p.contract.localSymbol, p.contract.currency, p.position) for p in ib.positions())
            assert held == [("SAP", "EUR", 3), ("SAP", "USD", 4)]
            (usd,) = ib.qualifyContracts(Stock("SAP", "SMART", "USD"))
            (eur,) = ib.qualifyContracts(Stock("SAP", "SMART", "EUR"))
            assert (usd.conId, usd.primaryExchange, eur.conId, eur.primaryExchange) == (
                sap_nyse.conId, "NYSE", sap.conId, "IBIS",
            )  # fmt: skip
            assert len(ib.reqContractDetails(Stock("SAP", "SMART"))) == 2  # ambiguous: qualifying it would fail
            trade = ib.placeOrder(usd, MarketOrder("SELL", 4, orderRef="sap-usd"))
            wait_until(ib, trade.isDone, what="the NYSE listing's sale to fill")
            assert gw.positions("DU1") == {"SAP": 3}
            # The inspection API names instruments by key, as the scenario does.
            assert [(e["orderRef"], e["symbol"], e["shares"]) for e in gw.executions()] == [("sap-usd", "SAP.NYSE", 4)]
        finally:
            ib.disconnect()
