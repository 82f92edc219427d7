"""Fault injection: dropped, refused and frozen connections, errors, latency, restarts and pacing."""

from __future__ import annotations

import socket
import time

import pytest
from ib_insync import IB, Forex, LimitOrder, MarketOrder, Stock

from ibsim import ThreadedGateway
from tests.support import sim_scenario, wait_for

from .conftest import ensure_loop, wait_until

SPY = Stock("SPY", "SMART", "USD")


def can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_drop_connections(gw: ThreadedGateway, ib: IB, connect) -> None:
    dropped: list[bool] = []
    ib.disconnectedEvent += lambda: dropped.append(True)
    trade = ib.placeOrder(SPY, LimitOrder("BUY", 1, 500.0, tif="GTC"))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="Submitted")
    assert gw.drop_connections() == 1
    wait_until(ib, lambda: dropped, what="disconnectedEvent")
    assert not ib.isConnected()
    assert gw.connected_client_ids() == []
    again = connect(1)
    assert [t.order.orderId for t in again.openTrades()] == [trade.order.orderId]


def test_refuse_connections_for_a_while(gw: ThreadedGateway, ib: IB, connect) -> None:
    gw.refuse_connections(0.4)
    assert not can_connect(gw.port)
    assert ib.isConnected()  # existing sessions stay
    assert ib.reqCurrentTime()
    t0 = time.monotonic()
    wait_for(lambda: can_connect(gw.port), timeout=5, what="the listener to come back")
    assert time.monotonic() - t0 >= 0.2
    assert connect(2).isConnected()


def test_restart_keeps_state(gw: ThreadedGateway, ib: IB, connect) -> None:
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 10))
    wait_until(ib, trade.isDone, what="fill")
    gw.restart(down_seconds=0.3)
    wait_until(ib, lambda: not ib.isConnected(), what="drop")
    assert not can_connect(gw.port)
    wait_for(lambda: can_connect(gw.port), timeout=5, what="restart")
    again = connect(1)
    assert [(p.contract.symbol, p.position) for p in again.positions()] == [("SPY", 10)]
    assert len(again.fills()) == 1
    assert gw.positions() == {"SPY": 10}


def test_freeze_is_a_half_open_connection(gw: ThreadedGateway, ib: IB) -> None:
    ib.RequestTimeout = 0.3
    gw.freeze(True)
    with pytest.raises(TimeoutError):
        ib.reqCurrentTime()
    assert ib.isConnected()  # the socket is still there
    gw.freeze(False)
    assert ib.reqCurrentTime()
    assert gw.connected_client_ids() == [1]


def test_send_error_reaches_error_event(gw: ThreadedGateway, ib: IB) -> None:
    seen: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: seen.append((req_id, code, msg))
    gw.send_error(1100)
    gw.send_error(1102, "Connectivity between IB and TWS has been restored- data maintained.")
    gw.send_error(2103, "Market data farm connection is broken:usfarm", req_id=-1)
    wait_until(ib, lambda: len(seen) >= 3, what="errors")
    assert [c for _, c, _ in seen] == [1100, 1102, 2103]
    assert "lost" in seen[0][2]


def test_latency_delays_every_message_in_order(gw: ThreadedGateway, ib: IB) -> None:
    t0 = time.perf_counter()
    ib.reqPositions()  # not reqCurrentTime: a second one within 1 s goes unanswered
    fast = time.perf_counter() - t0
    gw.set_latency(fixed=0.15, jitter=0.05)
    t0 = time.perf_counter()
    ib.reqPositions()
    slow = time.perf_counter() - t0
    assert slow >= 0.15 > fast
    events: list[str] = []
    ib.orderStatusEvent += lambda t: events.append(t.orderStatus.status)
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 1100))
    wait_until(ib, trade.isDone, what="fill")
    assert events[:2] == ["PreSubmitted", "Submitted"]
    assert events[-1] == "Filled"
    assert [f.execution.cumQty for f in trade.fills] == [500, 1000, 1100]
    gw.set_latency(0, 0)


def test_pacing_violation_on_a_raw_burst(gw: ThreadedGateway, ib: IB, raw) -> None:
    r = raw()
    r.start(40)
    for _ in range(80):
        r.send(8, 1, 1)  # reqIds (reqCurrentTime answers once a second)
    times = errors = 0
    while times < 80:
        msg = r.recv()
        assert msg is not None
        if msg[0] == "9":
            times += 1
        elif msg[0] == "4" and msg[3] == "100":
            errors += 1
    assert errors >= 25  # everything past the 50th message of the second
    assert gw.pacing_violations() == errors
    assert 40 in gw.connected_client_ids()  # not disconnected, and every request was answered
    assert ib.reqCurrentTime()


@pytest.mark.slow
@pytest.mark.alone
def test_ib_insync_throttling_stays_under_the_limit(gw: ThreadedGateway, ib: IB) -> None:
    """200 quick placeOrders: ib_insync queues them at 45/s, so the gateway never sees more than 50/s.

    Alone (make test runs it after the parallel phase): the gateway counts messages as it reads them, and a gateway
    thread starved of CPU by other tests reads a backlog at once, which counts as a burst nobody sent."""
    contracts = [Stock(f"SYM{i:03d}", "SMART", "USD") for i in range(50)]
    t0 = time.perf_counter()
    trades = [ib.placeOrder(contracts[i % 50], MarketOrder("BUY", 1 + i)) for i in range(200)]
    wait_until(ib, lambda: all(t.isDone() for t in trades), timeout=20, what="200 orders")
    elapsed = time.perf_counter() - t0
    assert all(t.orderStatus.status == "Filled" for t in trades)
    assert gw.pacing_violations() == 0
    assert elapsed > 3.0  # throttled by the client (200 at 45/s), not refused by the server
    print(f"200 orders through ib_insync's throttle: {elapsed:.2f}s, pacing violations: 0")


def test_scheduled_faults_from_the_scenario() -> None:
    scenario = sim_scenario(
        {
            "faults": [
                {"at": 0.3, "action": "send_error", "args": {"code": 1100}},
                {"at": 0.4, "action": "set_price", "args": {"symbol": "SPY", "price": 600}},
                {"at": 0.5, "action": "drop_connections"},
            ]
        }
    )
    with ThreadedGateway(port=0, scenario=scenario) as gw:
        ensure_loop()
        ib = IB()
        codes: list[int] = []
        ib.errorEvent += lambda req_id, code, msg, contract: codes.append(code)
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            ticker = ib.reqMktData(SPY)
            wait_until(ib, lambda: 1100 in codes, what="scheduled 1100")
            wait_until(ib, lambda: ticker.last == 600, what="scheduled price")
            wait_until(ib, lambda: not ib.isConnected(), what="scheduled drop")
        finally:
            ib.disconnect()


def test_held_commission_reports_arrive_when_released(gw: ThreadedGateway, ib: IB) -> None:
    gw.hold_commissions(True)
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 10))
    wait_until(ib, trade.isDone, what="fill")
    assert len(trade.fills) == 1
    assert trade.fills[0].commissionReport.execId == ""  # executed, commission not reported yet
    gw.hold_commissions(False)
    wait_until(ib, lambda: trade.fills[0].commissionReport.execId, what="the late commission report")
    assert trade.fills[0].commissionReport.commission == gw.executions()[0]["commission"]


def test_max_fill_size_splits_an_order_into_executions(gw: ThreadedGateway, ib: IB) -> None:
    gw.set_max_fill_size(40)
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 100))
    wait_until(ib, trade.isDone, what="fill")
    assert [e["shares"] for e in gw.executions()] == [40, 40, 20]
    with pytest.raises(ValueError, match="positive"):
        gw.set_max_fill_size(0)


def test_a_forex_order_fills_at_once_unless_its_own_max_fill_size_is_set(gw: ThreadedGateway, ib: IB) -> None:
    gw.set_max_fill_size(40)  # stocks' largest execution: IDEALPRO fills the whole order in one
    whole = ib.placeOrder(Forex("EURUSD"), MarketOrder("SELL", 30_000))
    wait_until(ib, whole.isDone, what="fill")
    assert [e["shares"] for e in gw.executions()] == [30_000]
    gw.set_max_fill_size(12_000, forex=True)
    parts = ib.placeOrder(Forex("EURUSD"), MarketOrder("BUY", 30_000))
    wait_until(ib, parts.isDone, what="fill")
    assert [e["shares"] for e in gw.executions()] == [30_000, 12_000, 12_000, 6_000]
