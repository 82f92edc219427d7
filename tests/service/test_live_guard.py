"""The live guard and the leverage cap come from the deployment; config/{mode} can only tighten them (issue 13, 12).

The consumer's own identity can write config/{mode}, so a document saying allowLive=true or a higher leverageCap
must change nothing. Real emulators and the simulated gateway; the broker is checked for orders after every refusal.
"""

from __future__ import annotations

from tests.support import Bus, allocation, holdings, mode_collection, wait_for, write_config


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
