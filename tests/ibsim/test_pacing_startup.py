"""Issue 15, gaps 8 and 9: IB's message-rate disconnect, one reqCurrentTime a second, and a start-up that costs time
or never finishes (connectCost, stall_request), seen through the real ib_insync client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import pytest
from ib_insync import IB, MarketOrder, Stock

from ibsim import ThreadedGateway
from tests.support import wait_for

from .conftest import wait_until

SPY = Stock("SPY", "SMART", "USD")


def test_a_second_current_time_within_a_second_goes_unanswered(gw: ThreadedGateway, connect: Callable[..., IB]) -> None:
    ib = connect(1)
    ib.RequestTimeout = 0.5
    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append(code)
    assert ib.reqCurrentTime()
    with pytest.raises(TimeoutError):
        ib.reqCurrentTime()
    assert errors == []  # IB sends no error: the request is simply never answered
    assert ib.isConnected()
    other = connect(2)  # the limit is per connection
    assert other.reqCurrentTime()


@pytest.mark.parametrize("gateway_scenario", [{"pacing": {"maxPerSecond": 50, "disconnectAfter": 5}}])
def test_past_the_configured_overrun_the_gateway_closes_the_socket(gw: ThreadedGateway, ib: IB, raw) -> None:
    r = raw()
    r.start(40)
    errors = []
    # The gateway closes while the burst is still arriving, so the socket may be reset under the client: what it
    # read by then is all error 100, and the gateway's own count says how many it sent.
    with contextlib.suppress(ConnectionError):
        for _ in range(80):
            r.send(8, 1, 1)  # reqIds
    with contextlib.suppress(ConnectionError):
        while (msg := r.recv()) is not None:
            if msg[0] == "4" and not msg[3].startswith("21"):  # farm notices aside
                errors.append((msg[3], msg[4]))
    assert set(errors) <= {("100", "Max rate of messages per second has been exceeded:max=50 rec=1")}
    assert len(errors) <= 5
    wait_until(ib, lambda: 40 not in gw.connected_client_ids(), what="client 40 gone")
    assert gw.pacing_violations() == 5
    assert gw.connected_client_ids() == [1]  # the polite client stays
    assert ib.reqPositions() == []


def test_without_disconnect_after_a_burst_is_only_refused(gw: ThreadedGateway, raw) -> None:
    r = raw()
    r.start(40)
    for _ in range(80):
        r.send(8, 1, 1)
    answered = 0
    while answered < 80:
        msg = r.recv()
        assert msg is not None, "the default scenario never disconnects for pacing"
        answered += msg[0] == "9"
    assert 40 in gw.connected_client_ids()


def _complete_two_orders(gw: ThreadedGateway, connect: Callable[..., IB]) -> None:
    ib = connect(7)
    for quantity in (1, 2):
        trade = ib.placeOrder(SPY, MarketOrder("BUY", quantity))
        wait_until(ib, trade.isDone, what="fill")
    ib.disconnect()
    assert [o["status"] for o in gw.orders()] == ["Filled", "Filled"]


@pytest.mark.parametrize("gateway_scenario", [{"connectCost": {"perCompletedOrderMs": 1500}}])
def test_completed_orders_cost_time_per_order(gw: ThreadedGateway, connect: Callable[..., IB], caplog) -> None:
    _complete_two_orders(gw, connect)
    caplog.set_level(logging.INFO, logger="ib_insync")
    slow = connect(8, timeout=1)  # ib_insync's timeout is per start-up request: 3 s of completed orders miss it
    assert slow.isConnected()
    timed_out = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert timed_out == ["completed orders request timed out"]
    caplog.clear()
    patient = connect(9, timeout=5)
    assert patient.isConnected()
    assert not [r for r in caplog.records if "timed out" in r.getMessage()]
    assert sorted(t.order.totalQuantity for t in patient.trades() if t.orderStatus.status == "Filled") == [1, 2]


def test_stalled_executions_time_the_connect_out_once(gw: ThreadedGateway, connect: Callable[..., IB]) -> None:
    gw.stall_request("reqExecutions", 0)  # never answered
    with pytest.raises(TimeoutError):
        connect(1, timeout=1)
    wait_for(lambda: gw.connected_client_ids() == [], what="ib_insync hung up; the id is free again")
    again = connect(1, timeout=2)  # the stall was for one request
    assert again.isConnected()


def test_a_stalled_request_is_answered_late(gw: ThreadedGateway, ib: IB) -> None:
    gw.stall_request("reqPositions", 1.5)
    ib.RequestTimeout = 1
    with pytest.raises(TimeoutError):
        ib.reqPositions()
    ib.RequestTimeout = 5
    assert ib.reqPositions() == []


def test_stall_request_names_a_tws_request(gw: ThreadedGateway) -> None:
    with pytest.raises(ValueError, match="not a TWS request"):
        gw.stall_request("reqEverything", 1)


def test_a_scenario_stall_names_a_tws_request() -> None:
    from ibsim import Scenario
    from ibsim.scenario import ScenarioError

    fault = {"at": 0, "action": "stall_request", "args": {"request": "reqCompletedOrders", "seconds": 8}}
    assert Scenario.from_dict({"faults": [fault]}).faults[0].args == {"request": "reqCompletedOrders", "seconds": 8}
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.args\.request: 'reqEverything' is not a TWS request"):
        Scenario.from_dict({"faults": [{**fault, "args": {"request": "reqEverything"}}]})
