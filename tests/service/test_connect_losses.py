"""Connections lost while the consumer connects or sleeps between heartbeats: a socket closed right after the
connect's clock answer, IB's 1100 or 1101 heard during the start-up download, a drop handled in the same turn as
the heartbeat's wake-up. Each once ended the gateway's reconnect loop or was forgotten by it (decision 68); and a
drop after placing on the last delivery attempt, once answered "gave up" (decision 69). Found by an independent
review of gateway drops; each test failed before, for the reason its docstring gives."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.support import (
    STREAM_RESTART_WAIT,
    Bus,
    allocation,
    holdings,
    mode_collection,
    stock_positions,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("paper_config")]


def connecting_slowly(consumer_factory, gateway, seconds: float = 2.0) -> Any:
    """A consumer whose connect is in its start-up download, which takes a while, as on a real account."""
    gateway.stall_request("reqCompletedOrders", seconds)
    consumer = consumer_factory(wait_ready=False)
    wait_for(
        lambda: "reqCompletedOrders" in [name for _, name in gateway.requests_received()],
        timeout=30,
        what="the connect's start-up download under way",
    )
    return consumer


def fills_while_cut_off(gateway, what: str) -> None:
    """The gateway drops the consumer, and the orders it held working fill before the consumer is back."""
    gateway.restart(down_seconds=1.0)
    wait_for(lambda: not gateway.connected_client_ids(), what="the consumer cut off")
    gateway.hold_fills(False)
    wait_for(lambda: all(o["status"] == "Filled" for o in gateway.orders()), what=f"the {what} filled meanwhile")


@pytest.mark.timeout(300)
def test_a_connection_that_closes_right_after_the_connects_clock_answer_is_connected_to_again(
    consumer_factory, bus: Bus, gateway
):
    """IB Gateway answers the connect's reqCurrentTime and closes the socket at once (it is going down for its
    nightly restart, or the network resets), and both reach the consumer together (its loop busy for a moment: a
    CPU-starved container). ib_insync has reset the client by the time `Gateway.run` sends reqMarketDataType right
    after `_connect` returned, so `client.send` raises ConnectionError("Not connected") out of `Gateway.run`: the task
    started with a discarded `loop.submit` dies, nothing reconnects, ever, and every request that needs the gateway
    is held for good while /livez stays 200 (the broker loop still runs).

    Root cause: consumer/broker/gateway.py `run`: `self.ib.reqMarketDataType(...)` after `_connect()` was outside
    any handling of a lost connection (and consumer/process.py submitted `gateway.run()` and never looked at it).
    The gateway's side is ibsim's fault `close_after_connect_clock`."""
    consumer = consumer_factory()
    gateway_of = consumer.service.services.gateway
    assert gateway_of.connections == 1
    gateway.close_after_connect_clock(delay=0.5)
    assert gateway.drop_connections() == 1
    asked = [name for _, name in gateway.requests_received()].count("reqCurrentTime")
    wait_for(lambda: [name for _, name in gateway.requests_received()].count("reqCurrentTime") > asked,
             timeout=30, what="the reconnect's clock request")  # fmt: skip
    # The consumer's loop busy (a CPU-starved container) while the answer and the close arrive: it reads both.
    consumer.service.loop.call(time.sleep, 1.5)
    # Nothing is wrong with the gateway from here on: the consumer must connect again and answer.
    wait_for(lambda: gateway_of.connections >= 2, timeout=60, what="the consumer to connect again")
    consumer.wait_ready(timeout=60)
    reply = bus.reply_to(bus.publish({"intent": "summary"}), timeout=60)
    assert reply["status"] == "ok", reply


@pytest.mark.timeout(300)
def test_connectivity_lost_while_the_consumer_connects_holds_intake_until_ib_restores_it(
    consumer_factory, bus: Bus, gateway
):
    """IB's 1100 (connectivity between the gateway and IB lost) arrives while ib_insync's connect downloads the
    account's orders (seconds on a real account, decision 14), as it does when the consumer reconnects into IB
    Gateway's nightly restart. `_on_error` marks the state DEGRADED, then `run` sets CONNECTED when the connect
    completes and the 1100 is forgotten: intake opens and trading intents run against a gateway IB has cut off,
    until a 1102 that then changes nothing. README (Under failure): while the gateway lost IB, requests are held.

    Root cause: consumer/broker/gateway.py `run` sets State.CONNECTED unconditionally after `_connect()`, dropping a
    LOST (and likewise a RESTORED_DATA_LOST: `_lost.clear()`) received during the connect."""
    from consumer.broker.gateway import State

    consumer = connecting_slowly(consumer_factory, gateway)
    gateway.send_error(1100)  # IB lost: no 1102 follows until IB is back
    gw = consumer.service.services.gateway
    wait_for(lambda: gw.connections == 1 and gw.state is not State.CONNECTING, timeout=30, what="the connect done")
    assert gw.state is State.DEGRADED, f"IB said 1100 during the connect, yet the gateway is {gw.state.value}"
    assert not gw.ready
    gateway.send_error(1102)  # IB back, data kept: open for work
    wait_for(lambda: gw.state is State.CONNECTED, timeout=30, what="the gateway connected once IB is back")
    assert bus.reply_to(bus.publish({"intent": "summary"}), timeout=60)["status"] == "ok"


@pytest.mark.timeout(300)
def test_data_lost_while_the_consumer_connects_is_resynchronised(consumer_factory, bus: Bus, gateway):
    """IB's 1101 (connectivity restored, market and account subscriptions lost: they must be requested again)
    arrives while ib_insync's connect downloads the account, after it subscribed the account updates. Received when
    connected, a 1101 makes the consumer hang up and connect again (decision 52). Received during the connect it
    sets `_lost`, which `run` clears when the connect completes: the subscriptions IB dropped are never requested
    again and the account values the consumer sizes from stay as they were (decision 52's failure, by another door).

    Root cause: consumer/broker/gateway.py `run`: `self._lost.clear()` after `_connect()` forgets a loss signalled
    during the connect."""
    consumer = connecting_slowly(consumer_factory, gateway)
    asked = [name for _, name in gateway.requests_received()].count("reqAccountUpdates")
    assert asked == 1  # subscribed before IB said the data was lost
    gateway.send_error(1101)
    gw = consumer.service.services.gateway
    wait_for(lambda: gw.connections >= 1, timeout=30, what="the connect done")
    wait_for(
        lambda: [name for _, name in gateway.requests_received()].count("reqAccountUpdates") > asked,
        timeout=30,
        what="the account updates requested again after IB's 1101",
    )


@pytest.mark.timeout(300)
def test_a_drop_read_as_the_heartbeat_wakes_is_reconnected(consumer_factory, bus: Bus, gateway):
    """The socket drop and the heartbeat's wake-up are handled in the same turn of the broker loop (here: the loop
    stalled for a moment, a CPU-starved container, while the gateway went away). ib_insync resets the client on the
    drop; the heartbeat then reads `connectionStats()`, which raises ConnectionError("Not connected") outside its
    try, so the heartbeat task ends with that error; `Gateway.run`, woken by the disconnect, cancels it and awaits
    it, suppressing CancelledError only: the ConnectionError leaves `run` before it marks the state CONNECTING, and
    the gateway is never connected to again (the task was submitted and forgotten). The state stays "connected"
    (/readyz 200), intake stays open, and every request fails gateway_unavailable ("the gateway is connected")
    until it is dead-lettered.

    Root cause: consumer/broker/gateway.py `_heartbeat` (`self.ib.client.connectionStats()` unguarded, top of the
    loop and in the except) and `run`'s `with contextlib.suppress(asyncio.CancelledError): await heartbeat`."""
    consumer = consumer_factory()
    gw = consumer.service.services.gateway
    assert gw.connections == 1
    stalled = threading.Event()

    def stall() -> None:
        stalled.set()
        time.sleep(1.5)  # longer than the heartbeat's 1 s sleep: it is due when the loop runs again

    consumer.service.loop.call(stall)
    assert stalled.wait(10)
    assert gateway.drop_connections() == 1
    # Held while the gateway is away, answered once it is back. Before: the state stayed "connected" (readiness 200),
    # intake open, and the summary failed gateway_unavailable ("the gateway is connected") until dead-lettered.
    reply = bus.reply_to(bus.publish({"intent": "summary"}), timeout=STREAM_RESTART_WAIT)
    assert reply["status"] == "ok", reply
    assert gw.connections >= 2


@pytest.mark.timeout(300)
def test_a_drop_after_placing_on_the_last_attempt_is_answered_with_what_its_order_did(
    consumer_factory, bus: Bus, gateway, project
):
    """The gateway drops while the last delivery attempt of an allocation waits on the order it has just placed.
    The run failed with gateway_disconnected and, being the last attempt, was dead-lettered: its one reply said the
    request failed ("gave up after 1 attempts ...") and named none of its orders, while the order was at IB, filled
    and was booked. A last attempt that wrote orders is now left, like one stopped by a shutdown (decision 48), to
    the stranded-request sweep, which resolves them by orderRef and says what became of each."""
    consumer_factory(max_delivery_attempts=1, stranded_after=2.0)  # every delivery is the last
    gateway.hold_fills(True)  # the market order works: the run waits on its status
    message_id = bus.publish(allocation({"SPY": 0.05}))
    wait_for(lambda: len(gateway.orders()) == 1, timeout=60, what="the order at the broker")
    assert gateway.drop_connections() >= 1
    gateway.hold_fills(False)
    (placed,) = gateway.orders()
    bus.reply_to(message_id, timeout=STREAM_RESTART_WAIT)
    replies = bus.replies_to(message_id)
    wait_for(lambda: holdings(project).get("dummy", {}).get("SPY"), timeout=60, what="the fill booked")
    assert [o["orderRef"] for o in gateway.orders()] == [placed["orderRef"]]  # placed once
    assert {f["execId"] for f in mode_collection(project, "fills")} == {e["execId"] for e in gateway.executions()}
    (reply,) = replies
    orders = ((reply.get("error") or {}).get("details") or {}).get("orders") or []
    reported = {o.get("orderRef") for o in orders} | {
        line.get("orderRef") for line in ((reply.get("result") or {}).get("instruments") or [])
    }
    assert placed["orderRef"] in reported, f"the one reply does not report the order at IB: {reply}"


def test_a_retry_after_the_gateway_dropped_reports_the_leg_it_placed_and_that_filled(
    consumer_factory, bus: Bus, gateway, project
):
    """The gateway drops while an allocation waits on its buy; the buy fills while the consumer is cut off. The run
    fails transiently and its retry finds the buy filled and booked, so its legs net to zero: the request's one
    reply carried no leg at all (no orderRef, no outcome, `orders: {"sent": 0}`), as if it had bought nothing,
    though its buy was at the broker, filled. The retry now reports the legs an earlier attempt of the request
    placed, as IB has them."""
    consumer_factory(order_timeout=30.0)
    gateway.hold_fills(True)
    message_id = bus.publish(allocation({"SPY": 0.05}))
    wait_for(lambda: gateway.orders(), what="the buy at the broker")
    (placed,) = gateway.orders()
    fills_while_cut_off(gateway, "buy")

    replies = [r for r in bus.replies_to(message_id) if not r.get("duplicate")]
    assert [r["status"] for r in replies] == ["ok"], replies
    assert [o["orderRef"] for o in gateway.orders()] == [placed["orderRef"]]  # placed once: the money is right
    executions = {e["execId"] for e in gateway.executions()}
    wait_for(lambda: {f["execId"] for f in mode_collection(project, "fills")} == executions, what="booked by execId")
    assert holdings(project) == {"dummy": {"SPY": placed["totalQuantity"]}}
    result = replies[0]["result"]
    (line,) = result["instruments"]
    assert (line.get("orderRef"), line.get("outcome"), line.get("filled")) == (
        placed["orderRef"],
        "filled",
        placed["totalQuantity"],
    ), line
    assert result["orders"].get("filled") == 1, result["orders"]


@pytest.mark.timeout(300)
def test_ib_lost_and_restored_during_the_connect_does_not_open_the_gateway_before_its_download(
    consumer_factory, bus: Bus, gateway
):
    """IB's 1100 then 1102 (IB lost, then back with data kept) both arrive while ib_insync's connect is still in its
    start-up download (IB Gateway's nightly reconnect, seconds on a real account). `_on_error` marks DEGRADED on the
    1100 although nothing is connected yet, and on the 1102 sees DEGRADED and sets CONNECTED: the gateway reports
    itself connected and `ready` (ib.isConnected() is true mid-download) before `_connect` returned, so intake opens
    and `synchronised()` names a generation (the previous connection's, after a reconnect) whose orders and fills
    ib_insync has not finished downloading. Expected: CONNECTED only from `_started`, after the download."""
    from consumer.broker.gateway import State

    consumer = connecting_slowly(consumer_factory, gateway, 6.0)
    gw = consumer.service.services.gateway
    seen: list[tuple[str, int, bool]] = []
    gw.add_listener(lambda state: seen.append((state.value, gw.connections, gw.ready)))
    gateway.send_error(1100)
    wait_for(lambda: gw.state is State.DEGRADED or gw.connections, timeout=10, what="the 1100 heard")
    gateway.send_error(1102)
    wait_for(lambda: gw.connections == 1, timeout=60, what="the connect done")
    early = [s for s in seen if s[0] == State.CONNECTED.value and s[1] == 0]
    assert not early, f"the gateway said CONNECTED before its connect finished its download: {seen}"
    assert gw.state is State.CONNECTED


def test_a_close_all_retry_names_the_sell_its_first_attempt_placed(consumer_factory, bus: Bus, gateway, project):
    """A close-all's sell fills while the gateway is away; the retry finds the book flat, so the instrument has no
    leg at all (no target, no delta) and Rebalance.carry_out listed no line for it: `_earlier_legs` found the sell
    (it was counted in the tally) but its line was only drawn for instruments that still had a leg. The one reply
    listed no instrument and named no order, as if the close-all sold nothing, while it sold the whole book."""
    consumer_factory(order_timeout=30.0)
    bought = bus.reply_to(bus.publish(allocation({"SPY": 0.05})), timeout=60)
    assert bought["status"] == "ok", bought
    wait_for(lambda: holdings(project).get("dummy") == stock_positions(gateway), what="the buy booked")
    gateway.hold_fills(True)
    message_id = bus.publish({"intent": "close-all", "params": {"strategies": ["dummy"]}})
    wait_for(lambda: any(o["action"] == "SELL" for o in gateway.orders()), timeout=60, what="the sell placed")
    (sell,) = [o for o in gateway.orders() if o["action"] == "SELL"]
    fills_while_cut_off(gateway, "sell")

    bus.reply_to(message_id, timeout=90)
    replies = [r for r in bus.replies_to(message_id, quiet=3.0) if not r.get("duplicate")]
    assert len(replies) == 1, replies
    assert [o["orderRef"] for o in gateway.orders() if o["action"] == "SELL"] == [sell["orderRef"]]  # sold once
    executions = {e["execId"] for e in gateway.executions()}
    wait_for(lambda: {f["execId"] for f in mode_collection(project, "fills")} == executions, what="booked by execId")
    assert "SPY" not in stock_positions(gateway)
    (reply,) = replies
    assert reply["status"] == "ok", reply
    named = {line.get("orderRef") for line in reply["result"]["instruments"]}
    assert sell["orderRef"] in named, f"the one reply does not name the sell that filled: {reply}"


def test_a_retry_refused_by_the_kill_switch_names_the_buy_its_first_attempt_placed(
    consumer_factory, bus: Bus, gateway, project
):
    """The first attempt's buy is at IB when the gateway drops; trading is switched off meanwhile, and the buy fills
    while the consumer is cut off. The retry is refused by the kill switch before it reaches the books, and its one
    reply said only that (`rejected`, kill_switch), as if the request had bought nothing, while its buy had filled.
    The refusal now lists what the earlier attempt placed, as IB has it, in `details.orders`."""
    consumer_factory(order_timeout=30.0)
    gateway.hold_fills(True)
    message_id = bus.publish(allocation({"SPY": 0.05}))
    wait_for(lambda: gateway.orders(), what="the buy at the broker")
    (placed,) = gateway.orders()
    write_config(project, tradingEnabled=False)
    fills_while_cut_off(gateway, "buy")

    bus.reply_to(message_id, timeout=STREAM_RESTART_WAIT)
    (reply,) = [r for r in bus.replies_to(message_id) if not r.get("duplicate")]
    assert (reply["status"], reply["error"]["code"]) == ("rejected", "kill_switch"), reply
    assert [o["orderRef"] for o in gateway.orders()] == [placed["orderRef"]]  # placed once
    executions = {e["execId"] for e in gateway.executions()}
    wait_for(lambda: {f["execId"] for f in mode_collection(project, "fills")} == executions, what="booked by execId")
    orders = reply["error"]["details"]["orders"]
    assert [(o["orderRef"], o["outcome"], o["filled"]) for o in orders] == [
        (placed["orderRef"], "filled", placed["totalQuantity"])
    ], reply["error"]
    assert placed["orderRef"] in reply["error"]["message"]


def test_a_cash_balancer_retry_names_the_conversion_its_first_attempt_placed(
    consumer_factory, bus: Bus, gateway, project
):
    """A cash-balancer's SELL EUR.USD fills while the gateway is away; the retry finds no free euros left, so its
    EUR line said `left`, "below the threshold", and named no order: the one reply read as if nothing had been
    converted, while the first attempt had sold the whole balance (decision 70 left the cash-balancer out: it
    places through its own path). The line now names the earlier attempt's conversion, as IB has it."""
    consumer_factory(order_timeout=30.0)
    eur = gateway.cash()["EUR"]
    gateway.hold_fills(True)
    message_id = bus.publish({"intent": "cash-balancer", "params": {"threshold": 1000}})
    wait_for(lambda: gateway.orders(), what="the conversion at the broker")
    (placed,) = gateway.orders()
    fills_while_cut_off(gateway, "conversion")

    bus.reply_to(message_id, timeout=90)
    replies = [r for r in bus.replies_to(message_id, quiet=3.0) if not r.get("duplicate")]
    assert [r["status"] for r in replies] == ["ok"], replies
    assert [o["orderRef"] for o in gateway.orders()] == [placed["orderRef"]]  # converted once
    assert abs(gateway.cash()["EUR"]) < 1.0 < eur
    executions = {e["execId"] for e in gateway.executions()}
    wait_for(lambda: {f["execId"] for f in mode_collection(project, "fills")} == executions, what="booked by execId")
    (line,) = [b for b in replies[0]["result"]["balances"] if b["currency"] == "EUR"]
    assert (line.get("orderRef"), line.get("outcome"), line.get("filled")) == (
        placed["orderRef"],
        "filled",
        placed["totalQuantity"],
    ), line
    assert line["action"] == "converted", line
