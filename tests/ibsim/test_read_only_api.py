"""IB Gateway with "Read-Only API" on (IBC ReadOnlyApi=yes, what gateway-image sets for live unless told otherwise).

IB refuses what needs write access with 321 "... The API interface is currently in Read-Only mode.": orders,
cancels and the order lists, which then never end (ib_insync #1 and #224, bankroll-py/bankroll#65, IbcAlpha/IBC#10).
Reading the account, executions and market data still works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock

from ibsim import ThreadedGateway

from .conftest import wait_until

SPY = Stock("SPY", "SMART", "USD")
READ_ONLY = "The API interface is currently in Read-Only mode."


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    return {"readOnlyApi": True, "marketData": {"snapshotEndSeconds": 0}}


def refusals(ib: IB) -> list[tuple[int, int, str]]:
    seen: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: seen.append((req_id, code, msg)) if code == 321 else None
    return seen


def test_connect_without_readonly_waits_out_the_refused_order_lists(gw: ThreadedGateway) -> None:
    """ib_insync's plain connect asks for open and completed orders: both refused, neither ends, so each start-up
    request times out (ib_insync logs it and connects anyway); its readonly=True skips them."""
    ib = IB()
    seen = refusals(ib)
    timed_out: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: timed_out.append(record.getMessage())  # type: ignore[method-assign]
    ib_log = logging.getLogger("ib_insync.ib")
    ib_log.addHandler(handler)
    try:
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=0.5)
        assert {"open orders request timed out", "completed orders request timed out"} <= set(timed_out)
        assert [(req_id, code) for req_id, code, _ in seen] == [(-1, 321), (-1, 321)]
        assert all(msg.endswith(READ_ONLY) and msg.startswith("Error validating request:-'") for *_, msg in seen)
    finally:
        ib_log.removeHandler(handler)
        ib.disconnect()


def test_orders_cancels_and_order_lists_are_refused_and_reading_works(
    gw: ThreadedGateway, connect: Callable[..., IB]
) -> None:
    ib = connect(1, readonly=True)
    seen = refusals(ib)
    assert seen == []  # a read-only connect asks for nothing the gateway refuses

    trade = ib.placeOrder(SPY, MarketOrder("BUY", 10, orderRef="ro-1"))
    wait_until(ib, trade.isDone, what="the refused order to be done")
    assert trade.orderStatus.status == "Cancelled"
    assert (trade.order.orderId, 321) in [(r, c) for r, c, _ in seen]
    assert gw.orders() == []
    assert gw.executions() == []
    assert gw.positions() == {}

    with pytest.raises(asyncio.TimeoutError):
        ib.run(asyncio.wait_for(ib.reqAllOpenOrdersAsync(), 0.3))
    with pytest.raises(asyncio.TimeoutError):
        ib.run(asyncio.wait_for(ib.reqCompletedOrdersAsync(False), 0.3))
    ib.reqGlobalCancel()
    wait_until(ib, lambda: len(seen) == 4, what="three more refusals")
    assert [r for r, _, _ in seen[1:]] == [-1, -1, -1]
    assert all(msg.endswith(READ_ONLY) for *_, msg in seen)

    # reading still works: positions, the account, executions, market data
    assert ib.reqPositions() == []
    assert any(v.tag == "NetLiquidation" for v in ib.accountValues())
    assert ib.reqExecutions() == []
    [ticker] = ib.reqTickers(SPY)
    assert ticker.ask > 0


def test_a_working_order_cannot_be_cancelled_once_the_api_is_read_only(
    gw: ThreadedGateway, connect: Callable[..., IB]
) -> None:
    gw.read_only_api(False)
    ib = connect(1)
    seen = refusals(ib)
    working = ib.placeOrder(SPY, LimitOrder("BUY", 10, 500.0, orderRef="resting"))
    wait_until(ib, lambda: working.orderStatus.status == "Submitted", what="the order to work")

    gw.read_only_api(True)
    ib.cancelOrder(working.order)
    wait_until(ib, lambda: seen, what="the refused cancel")
    assert seen[0][:2] == (working.order.orderId, 321)
    assert [(o["orderRef"], o["status"]) for o in gw.orders()] == [("resting", "Submitted")]

    gw.read_only_api(False)
    assert working.orderStatus.status == "Cancelled"  # ib_insync's reading of the 321, not the gateway's state
    ib.cancelOrder(working.order)
    wait_until(ib, lambda: gw.orders()[0]["status"] == "Cancelled", what="the cancel")
    assert [(o["orderRef"], o["status"]) for o in gw.orders()] == [("resting", "Cancelled")]
