"""The live guard and the leverage cap come from the deployment; config/{mode} can only tighten them (issue 13, 12).

The consumer's own identity can write config/{mode}, so a document saying allowLive=true or a higher leverageCap
must change nothing. Real emulators and the simulated gateway; the broker is checked for orders after every refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import (
    DEFAULT_CLOCK,
    SIGNAL_PARAMS,
    STANDBY,
    Bus,
    ConsumerUnderTest,
    allocation,
    another_intents_subscription,
    holdings,
    long_signal,
    mode_collection,
    mode_document,
    wait_for,
    write_config,
)

LIVE_ACCOUNT = "U7654321"  # an IB live account id: paper ones start with D (DU..., DF...)


def assert_nothing_traded(gateway, project: str, mode: str) -> None:
    assert gateway.orders() == []
    assert gateway.executions() == []
    assert not gateway.positions()
    assert holdings(project, mode) == {}


def test_allow_live_written_to_firestore_does_not_enable_live_trading(consumer_factory, bus: Bus, gateway, project):
    write_config(project, mode="live", allowLive=True)  # what a compromised consumer identity can do
    consumer_factory(trading_mode="live")  # the deployment does not set ALLOW_LIVE
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert reply["status"] == "rejected", reply
    assert reply["error"]["code"] == "live_not_allowed"
    assert "ALLOW_LIVE" in reply["error"]["message"]
    assert_nothing_traded(gateway, project, "live")


def test_config_live_can_still_refuse_what_the_deployment_allows(consumer_factory, bus: Bus, gateway, project):
    write_config(project, mode="live", allowLive=False)
    consumer_factory(trading_mode="live", allow_live=True)
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert reply["status"] == "rejected", reply
    assert reply["error"]["code"] == "live_not_allowed"
    assert "allowLive" in reply["error"]["message"]
    assert_nothing_traded(gateway, project, "live")


def test_live_trades_when_the_deployment_and_config_live_both_allow_it(consumer_factory, bus: Bus, gateway, project):
    write_config(project, mode="live", allowLive=True)
    consumer_factory(trading_mode="live", allow_live=True, order_timeout=3.0)
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert reply["status"] == "ok", reply
    (spy,) = [i for i in reply["result"]["instruments"] if i["instrument"] == "SPY"]
    assert spy["outcome"] == "filled"
    assert spy["order"] > 0
    (sent,) = gateway.orders()
    assert sent["orderRef"] == spy["orderRef"]
    assert gateway.positions().get("SPY") == spy["order"]
    exec_ids = {e["execId"] for e in gateway.executions() if e["orderRef"] == spy["orderRef"]}
    assert exec_ids
    wait_for(lambda: holdings(project, "live") == {"dummy": {"SPY": spy["order"]}}, what="the live fill booked")
    fills = wait_for(lambda: mode_collection(project, "fills", "live"), what="the live fills recorded")
    assert {f["execId"] for f in fills} == exec_ids
    assert holdings(project, "paper") == {}  # booked under the live mode only


def test_a_higher_leverage_cap_in_firestore_does_not_raise_the_deployments(
    consumer_factory, bus: Bus, gateway, project
):
    write_config(project, leverageCap=3.0, exposure={"overall": 1.0, "strategies": {"dummy": 1.0}})
    consumer_factory()  # LEVERAGE_CAP_MAX unset: 1x
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.8, "TLT": 0.7})))  # 1.5x
    assert reply["status"] == "error", reply
    assert reply["error"]["code"] == "leverage_exceeded"
    assert "LEVERAGE_CAP_MAX" in reply["error"]["message"]
    assert_nothing_traded(gateway, project, "paper")


def test_the_lower_of_the_two_caps_applies(consumer_factory, bus: Bus, gateway, project):
    consumer_factory(leverage_cap_max=2.0)
    write_config(project, leverageCap=3.0, exposure={"overall": 1.0, "strategies": {"dummy": 1.0}})
    within = bus.reply_to(bus.publish(allocation({"SPY": 0.8, "TLT": 0.7}, dry_run=True)))  # 1.5x <= 2x
    assert within["status"] == "ok", within
    write_config(project, leverageCap=1.2, exposure={"overall": 1.0, "strategies": {"dummy": 1.0}})
    tightened = bus.reply_to(bus.publish(allocation({"SPY": 0.8, "TLT": 0.7}, dry_run=True)))  # 1.5x > 1.2x
    assert tightened["status"] == "error", tightened
    assert tightened["error"]["code"] == "leverage_exceeded"
    assert_nothing_traded(gateway, project, "paper")


def test_an_allocation_counts_what_the_other_strategies_hold_against_the_cap(
    consumer_factory, bus: Bus, gateway, project
):
    """The cap is the account's, but an allocation checked its own strategies' weights alone: testsignalgenerator
    holding its half, dummy's weights adding to 2 (1x of its half) passed, and the account went to 1.17x under a
    cap of 1."""
    consumer_factory(order_timeout=3.0)
    write_config(project, exposure={"overall": 1.0, "strategies": {"dummy": 0.5, "testsignalgenerator": 0.5}})
    symbol, _ = long_signal(bus, gateway)
    held = bus.reply_to(bus.publish({"intent": "allocation", "params": {"strategies": ["testsignalgenerator"],
                                     "strategyParams": {"testsignalgenerator": SIGNAL_PARAMS}}}))  # fmt: skip
    assert held["status"] == "ok", held
    (line,) = held["result"]["instruments"]
    wait_for(lambda: holdings(project) == {"testsignalgenerator": {symbol: line["target"]}}, what="its buy booked")
    orders = gateway.orders()

    refused = bus.reply_to(bus.publish(allocation({"QQQ": 1.0, "IWM": 1.0})))
    assert (refused["status"], refused["error"]["code"]) == ("error", "leverage_exceeded"), refused
    assert "the strategies it does not run hold" in refused["error"]["message"]
    assert gateway.orders() == orders  # nothing placed, by orderRef or otherwise
    within = bus.reply_to(bus.publish(allocation({"QQQ": 0.5, "IWM": 0.4})))  # 0.45x beside about 0.5x
    assert within["status"] == "ok", within


@pytest.fixture
def live_login() -> Iterator[Any]:
    """A gateway whose login's one account is a live account id, as IB's live port reports it."""
    from ibsim import Scenario, ThreadedGateway

    accounts = [{"id": LIVE_ACCOUNT, "baseCurrency": "USD", "cash": {"USD": 1_000_000}, "positions": []}]
    scenario = Scenario.from_dict({"accounts": accounts, "clock": {"start": DEFAULT_CLOCK}})
    with ThreadedGateway(port=0, scenario=scenario) as gw:
        yield gw


def test_a_paper_deployment_pointed_at_a_live_login_trades_nothing(bus: Bus, project: str, live_login):
    """The live guard keyed on TRADING_MODE alone: a paper deployment (ALLOW_LIVE unset) pointed at a live login
    (TWS on its live port, a port mixed up) bought in the live account, its reply saying `tradingMode: paper`."""
    write_config(project, account=LIVE_ACCOUNT)  # config/paper of that account, trading on
    consumer = ConsumerUnderTest.start(project, live_login.port, ib_account=LIVE_ACCOUNT, order_timeout=5.0)
    try:
        reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05}), account=LIVE_ACCOUNT))
        assert (reply["status"], reply["error"]["code"]) == ("rejected", "live_account"), reply
        assert LIVE_ACCOUNT in reply["error"]["message"]
        assert_nothing_traded(live_login, project, "paper")
        summary = bus.reply_to(bus.publish({"intent": "summary"}, account=LIVE_ACCOUNT))
        assert summary["status"] == "ok", summary  # reading it is no trade
    finally:
        consumer.stop()


def test_a_strategy_can_still_sell_down_when_other_books_hold_more_than_the_cap(
    consumer_factory, bus: Bus, gateway, project
):
    """Counted against the cap, the other books could hold more than it (a lowered leverageCap, a rally): every
    allocation was refused then, even one that only sells, which can never take the account further past it."""
    consumer_factory(order_timeout=3.0)
    write_config(project, exposure={"overall": 1.0, "strategies": {"dummy": 0.5, "testsignalgenerator": 0.5}})
    long_signal(bus, gateway)
    tsg = bus.reply_to(
        bus.publish(
            {
                "intent": "allocation",
                "params": {
                    "strategies": ["testsignalgenerator"],
                    "strategyParams": {"testsignalgenerator": SIGNAL_PARAMS},
                },
            }
        )
    )
    assert tsg["status"] == "ok", tsg
    first = bus.reply_to(bus.publish(allocation({"TLT": 0.5})))
    assert first["status"] == "ok", first
    wait_for(lambda: set(holdings(project)) == {"dummy", "testsignalgenerator"}, what="both books booked")

    # The operator lowers the cap to take risk off: testsignalgenerator's ~0.17x is already above it.
    write_config(
        project, leverageCap=0.1, exposure={"overall": 1.0, "strategies": {"dummy": 0.05, "testsignalgenerator": 0.05}}
    )
    out = bus.reply_to(bus.publish(allocation({"TLT": 0.0})))
    assert out["status"] == "ok", out
    wait_for(lambda: "dummy" not in holdings(project), what="dummy's TLT sold")
    more = bus.reply_to(bus.publish(allocation({"TLT": 0.5})))  # an increase is still refused
    assert (more["status"], more["error"]["code"]) == ("error", "leverage_exceeded"), more


@pytest.mark.slow(seconds=50)
@pytest.mark.timeout(240)
def test_a_paper_deployment_pointed_at_a_live_login_does_not_reduce_in_it(bus: Bus, project: str, live_login):
    """The live-account refusal was the trading intents' only: risk-check is exclusive, and its reduce sold in the
    live account from the paper deployment (an independent review). It reports, and skips the reduce."""
    exposure = {"overall": 1.0, "strategies": {"dummy": 0.9}}
    # A live deployment's books in the live account (how the strategy came to hold something there).
    write_config(project, mode="live", account=LIVE_ACCOUNT, allowLive=True, exposure=exposure)
    live = ConsumerUnderTest.start(
        project, live_login.port, ib_account=LIVE_ACCOUNT, trading_mode="live", allow_live=True, order_timeout=5.0
    )
    try:
        bought = bus.reply_to(bus.publish(allocation({"SPY": 0.5, "QQQ": 0.4}), account=LIVE_ACCOUNT))
        assert bought["status"] == "ok", bought
        wait_for(lambda: set(holdings(project, "live", LIVE_ACCOUNT).get("dummy", {})) == {"SPY", "QQQ"},
                 what="the live buys booked")  # fmt: skip
    finally:
        live.stop()
    # The same books under paper (the paper deployment pointed at the live login by a port mixed up).
    for collection in mode_document(project, "live", LIVE_ACCOUNT).collections():
        target = mode_document(project, "paper", LIVE_ACCOUNT).collection(collection.id)
        for doc in collection.stream():
            target.document(doc.id).set(doc.to_dict() or {})
    write_config(project, account=LIVE_ACCOUNT, exposure=exposure, risk={"leverage": {"max": 0.5, "action": "reduce"}})
    orders_before = len(live_login.orders())

    # A subscription of its own: the emulator can hand messages to the stopped consumer's stream for minutes.
    standby = another_intents_subscription(project, STANDBY)
    paper = ConsumerUnderTest.start(
        project, live_login.port, ib_account=LIVE_ACCOUNT, order_timeout=5.0, intents_subscription=standby
    )
    try:
        allocation_reply = bus.reply_to(bus.publish(allocation({"SPY": 0.1}), account=LIVE_ACCOUNT))
        assert allocation_reply["error"]["code"] == "live_account", allocation_reply  # the allocation is refused
        reply = bus.reply_to(bus.publish({"intent": "risk-check", "params": {}}, account=LIVE_ACCOUNT), timeout=90)
        assert reply["status"] == "ok", reply
        assert reply["result"]["breaches"], reply
        (reduced,) = reply["result"]["reduced"]
        assert "refuses to trade U7654321" in reduced["skipped"], reduced
        assert live_login.orders()[orders_before:] == []
    finally:
        paper.stop()
