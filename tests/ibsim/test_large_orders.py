"""A huge order must not hold the server's loop (issue 15: 10,000,000 shares filled as 20,000 executions over
116 s while another client's order waited 82 s)."""

from __future__ import annotations

from ib_insync import MarketOrder, Stock

from ibsim import ThreadedGateway

from .conftest import wait_until

SPY = Stock("SPY", "SMART", "USD")
AAPL = Stock("AAPL", "SMART", "USD")


def test_a_huge_order_fills_in_a_bounded_number_of_executions_while_another_client_trades(
    gw: ThreadedGateway, connect
) -> None:
    gw.set_cash("USD", 1e10)
    whale, other = connect(1), connect(2)
    big = whale.placeOrder(SPY, MarketOrder("BUY", 10_000_000, orderRef="whale"))
    wait_until(whale, lambda: big.fills, what="the huge order's first execution")
    small = other.placeOrder(AAPL, MarketOrder("BUY", 10, orderRef="minnow"))
    wait_until(other, small.isDone, timeout=10, what="the other client's order filled")
    wait_until(whale, big.isDone, timeout=30, what="the huge order filled")

    executions = gw.executions()
    whale_execs = [e for e in executions if e["orderRef"] == "whale"]
    assert sum(e["shares"] for e in whale_execs) == 10_000_000
    assert len(whale_execs) <= 100  # scenario maxExecutionsPerOrder
    assert all(e["shares"] >= 500 for e in whale_execs)
    # The other client's order was served between the huge order's executions, not after all of them.
    refs = [e["orderRef"] for e in executions]
    assert refs.index("minnow") < len(refs) - 1
    assert small.orderStatus.status == "Filled"
    assert gw.positions() == {"SPY": 10_000_000, "AAPL": 10}
