"""Order lifecycle through ib_insync: fills, partial fills, limits, stops, cancels, rejections, reconnects."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from ib_insync import IB, ExecutionFilter, Forex, LimitOrder, MarketOrder, Order, Stock, StopOrder, TagValue, Trade

from ibsim import ThreadedGateway
from tests.support import ensure_loop, sim_scenario, wait_for

from .conftest import cancel_left_pending, wait_until

NEW_YORK = ZoneInfo("America/New_York")  # the login's zone in the default scenario

SPY = Stock("SPY", "SMART", "USD")


def done(ib: IB, trade: Trade, timeout: float = 5.0) -> Trade:
    wait_until(ib, trade.isDone, timeout, what=f"order {trade.order.orderId} to finish ({trade.orderStatus.status})")
    return trade


def test_market_order_full_status_sequence(gw: ThreadedGateway, ib: IB) -> None:
    events: list[str] = []
    ib.orderStatusEvent += lambda t: events.append(f"status:{t.orderStatus.status}")
    ib.execDetailsEvent += lambda t, f: events.append("exec")
    ib.commissionReportEvent += lambda t, f, r: events.append("commission")
    trade = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 100, orderRef="ref-1")))

    assert trade.orderStatus.status == "Filled"
    assert trade.orderStatus.filled == 100
    assert trade.orderStatus.remaining == 0
    assert trade.orderStatus.avgFillPrice == 520.01  # the ask
    assert trade.order.permId > 0
    assert events == ["status:PreSubmitted", "status:Submitted", "exec", "commission", "status:Filled"]
    assert [e.status for e in trade.log][:3] == ["PendingSubmit", "PreSubmitted", "Submitted"]

    fills = ib.fills()
    assert len(fills) == 1
    fill = fills[0]
    assert fill.execution.side == "BOT"
    assert fill.execution.orderRef == "ref-1"
    assert fill.commissionReport.execId == fill.execution.execId
    assert fill.commissionReport.commission == pytest.approx(1.0)  # 100 x $0.005, minimum $1
    assert fill.commissionReport.currency == "USD"
    parts = fill.execution.execId.split(".")
    assert len(parts) == 4
    assert (len(parts[0]), len(parts[1]), parts[2:]) == (8, 8, ["01", "01"])

    server = gw.orders()[0]
    assert server["status"] == "Filled"
    assert server["permId"] == trade.order.permId
    assert server["orderRef"] == "ref-1"
    assert gw.executions()[0]["execId"] == fill.execution.execId
    # IB's positions and account window follow the fill a moment later (accountUpdates.afterFillMs): not yet here
    assert ib.positions() == []
    assert ib.portfolio() == []
    wait_until(ib, lambda: {p.contract.symbol: p.position for p in ib.portfolio()} == {"SPY": 100}, what="portfolio")
    assert {p.contract.symbol: p.position for p in ib.positions()} == {"SPY": 100}


def test_sell_fills_at_bid_and_commission_has_minimum(ib: IB) -> None:
    trade = done(ib, ib.placeOrder(SPY, MarketOrder("SELL", 10)))
    assert trade.orderStatus.avgFillPrice == 519.99
    assert trade.fills[0].execution.side == "SLD"
    assert trade.fills[0].commissionReport.commission == pytest.approx(1.0)


def test_large_order_fills_in_parts(gw: ThreadedGateway, ib: IB) -> None:
    partials: list[float] = []
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 1200))
    trade.statusEvent += lambda t: partials.append(t.orderStatus.filled)
    done(ib, trade)
    assert [f.execution.shares for f in trade.fills] == [500, 500, 200]
    assert [f.execution.cumQty for f in trade.fills] == [500, 1000, 1200]
    assert 500 in partials
    assert 1000 in partials
    assert sum(f.commissionReport.commission for f in trade.fills) == pytest.approx(6.0)
    assert len(gw.executions()) == 3
    assert gw.positions() == {"SPY": 1200}


def test_limit_order_rests_until_the_price_crosses(gw: ThreadedGateway, ib: IB) -> None:
    trade = ib.placeOrder(SPY, LimitOrder("BUY", 50, 510.0, tif="GTC"))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="Submitted")
    ib.sleep(0.05)
    assert trade.orderStatus.status == "Submitted"
    assert [t.order.orderId for t in ib.openTrades()] == [trade.order.orderId]
    gw.set_price("SPY", 509.5)
    done(ib, trade)
    assert trade.orderStatus.status == "Filled"
    assert trade.orderStatus.avgFillPrice <= 510.0
    assert gw.positions() == {"SPY": 50}


def test_marketable_limit_fills_at_once(ib: IB) -> None:
    trade = done(ib, ib.placeOrder(SPY, LimitOrder("BUY", 10, 530.0)))
    assert trade.orderStatus.avgFillPrice == 520.01


def test_stop_order_triggers(gw: ThreadedGateway, ib: IB) -> None:
    trade = ib.placeOrder(SPY, StopOrder("SELL", 20, 515.0))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="Submitted")
    gw.set_price("SPY", 516.0)
    ib.sleep(0.05)
    assert trade.orderStatus.status == "Submitted"
    gw.set_price("SPY", 514.0)
    done(ib, trade)
    assert trade.orderStatus.avgFillPrice == 513.99


def test_cancel_gives_cancelled_and_202(gw: ThreadedGateway, ib: IB) -> None:
    codes: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: codes.append(code)
    trade = ib.placeOrder(SPY, LimitOrder("BUY", 5, 400.0))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="Submitted")
    ib.cancelOrder(trade.order)
    done(ib, trade)
    assert trade.orderStatus.status == "Cancelled"
    wait_until(ib, lambda: 202 in codes, what="error 202")
    assert gw.orders()[0]["status"] == "Cancelled"
    assert not ib.openTrades()


def test_a_cancel_is_pending_until_the_exchange_confirms_and_the_order_can_fill_meanwhile(
    gw: ThreadedGateway, ib: IB
) -> None:
    """PendingCancel until the exchange confirms, and the order "may still execute" meanwhile (docs/ibsim.md,
    Fidelity). A second cancel meanwhile gets 161, on which ib_insync marks the order Cancelled although it is
    not."""
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code, msg))
    trade = cancel_left_pending(gw, ib, "slow-cancel", SPY)

    ib.cancelOrder(trade.order)
    wait_until(ib, lambda: errors, what="the second cancel refused")
    perm_id = gw.orders()[0]["permId"]
    refusal = f"Cancel attempted when order is not in a cancellable state. Order permId ={perm_id}"
    assert errors == [(trade.order.orderId, 161, refusal)]
    assert trade.orderStatus.status == "Cancelled"  # ib_insync's reading of the refusal
    assert gw.orders()[0]["status"] == "PendingCancel"  # the gateway's: still at the exchange

    gw.hold_fills(False)  # it executes before the exchange takes the cancel
    wait_until(ib, lambda: gw.orders()[0]["status"] == "Filled", what="Filled")
    assert [(e["orderRef"], e["shares"]) for e in gw.executions()] == [("slow-cancel", 5)]
    assert gw.positions() == {"SPY": 5}


def test_a_cancel_of_an_order_the_gateway_does_not_know_gets_10147(ib: IB) -> None:
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code, msg))
    ib.client.cancelOrder(9999)
    wait_until(ib, lambda: errors, what="the refusal")
    assert errors == [(9999, 10147, "OrderId 9999 that needs to be cancelled is not found.")]


def test_a_held_order_is_cancelled_at_once_with_202_and_keeps_its_partial_fill(gw: ThreadedGateway, ib: IB) -> None:
    """hold_fills holds executions, not cancels: IB answers a cancel of a working order whatever its fills do."""
    codes: list[tuple[int, int]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: codes.append((req_id, code))
    gw.hold_fills(True)
    untouched = ib.placeOrder(SPY, MarketOrder("BUY", 7, orderRef="held"))
    partial = ib.placeOrder(SPY, MarketOrder("BUY", 30, orderRef="partial"))
    wait_until(ib, lambda: untouched.orderStatus.status == partial.orderStatus.status == "Submitted", what="Submitted")
    gw.call(setattr, gw.server.scenario, "fillDelayMs", 60_000)  # one execution, then a long pause
    gw.set_max_fill_size(10)
    gw.hold_fills(False)
    wait_until(ib, lambda: partial.orderStatus.filled == 10 and untouched.orderStatus.status == "Filled", what="fills")
    gw.hold_fills(True)
    ib.cancelOrder(partial.order)
    done(ib, partial)
    assert partial.orderStatus.status == "Cancelled"
    assert partial.orderStatus.filled == 10
    wait_until(ib, lambda: (partial.order.orderId, 202) in codes, what="error 202")
    by_ref = {o["orderRef"]: o for o in gw.orders()}
    assert by_ref["partial"]["status"] == "Cancelled"
    assert by_ref["partial"]["filled"] == 10
    assert gw.positions()["SPY"] == 17

    gw.set_max_fill_size(500)
    held = ib.placeOrder(SPY, MarketOrder("SELL", 5, orderRef="held-then-cancelled"))
    wait_until(ib, lambda: held.orderStatus.status == "Submitted", what="Submitted")
    ib.cancelOrder(held.order)
    done(ib, held)
    assert held.orderStatus.status == "Cancelled"
    assert held.orderStatus.filled == 0
    wait_until(ib, lambda: (held.order.orderId, 202) in codes, what="error 202")
    gw.hold_fills(False)
    assert "held-then-cancelled" not in {e["orderRef"] for e in gw.executions()}
    assert gw.positions()["SPY"] == 17


def test_reject_next_order(gw: ThreadedGateway, ib: IB) -> None:
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code, msg))
    gw.reject_next_order(201, "Order rejected - reason:Simulated margin shortfall")
    trade = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1)))
    assert trade.orderStatus.status == "Cancelled"
    assert (trade.order.orderId, 201, "Order rejected - reason:Simulated margin shortfall") in errors
    assert gw.positions() == {}
    # only the next one
    assert done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1))).orderStatus.status == "Filled"


def test_delay_executions_sends_the_status_first_and_lists_the_execution_at_once(gw: ThreadedGateway, ib: IB) -> None:
    events: list[str] = []
    ib.orderStatusEvent += lambda t: events.append(f"status:{t.orderStatus.status}")
    ib.execDetailsEvent += lambda t, f: events.append("exec")
    gw.delay_executions(0.5)
    trade = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 2, orderRef="late-report")))
    assert events[-1] == "status:Filled"
    assert "exec" not in events
    assert [e["orderRef"] for e in gw.executions()] == ["late-report"]  # IB has it, and lists it when asked
    wait_until(ib, lambda: "exec" in events, 5.0, what="the execution's report")
    assert [f.execution.shares for f in trade.fills] == [2]
    gw.delay_executions(0)
    events.clear()
    done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1)))
    assert events.index("exec") < events.index("status:Filled")


def test_drop_next_orders_loses_them_without_a_word(gw: ThreadedGateway, ib: IB) -> None:
    """IB's paper server loses some orders of a batch: no status, no error, in no list, ever."""
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code, msg))
    gw.drop_next_orders(2)
    lost = [ib.placeOrder(SPY, MarketOrder("BUY", 1, orderRef=f"lost-{i}")) for i in range(2)]
    kept = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 3, orderRef="kept")))  # answered after the lost ones
    assert kept.orderStatus.status == "Filled"
    assert [t.orderStatus.status for t in lost] == ["PendingSubmit", "PendingSubmit"]
    assert [t.order.permId for t in lost] == [0, 0]
    assert [e for e in errors if e[0] in {t.order.orderId for t in lost}] == []
    listed = {t.order.orderRef for t in [*ib.reqAllOpenOrders(), *ib.reqCompletedOrders(apiOnly=False)]}
    executed = {f.execution.orderRef for f in ib.reqExecutions(ExecutionFilter())}
    assert (listed, executed) == ({"kept"}, {"kept"})
    assert [o["orderRef"] for o in gw.orders()] == ["kept"]
    assert gw.positions() == {"SPY": 3}


@pytest.mark.parametrize(
    "order",
    [
        MarketOrder("BUY", 0),
        MarketOrder("BUY", -5),
        Order(action="BUY", totalQuantity=1, orderType="LMT"),
        Order(action="BUY", totalQuantity=1, orderType="STP"),
        MarketOrder("BUY", 1.5),
        MarketOrder("HOLD", 1),
        Order(action="BUY", totalQuantity=1, orderType="TRAIL", auxPrice=1.0),
    ],
    ids=["zero", "negative", "lmt-no-price", "stp-no-stop", "fractional", "bad-action", "unsupported-type"],
)
def test_invalid_orders_get_201(gw: ThreadedGateway, ib: IB, order: Order) -> None:
    codes: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: codes.append(code)
    trade = done(ib, ib.placeOrder(SPY, order))
    assert trade.orderStatus.status == "Cancelled"
    assert 201 in codes
    assert gw.orders() == []


def test_unknown_contract_order_gets_200(gw: ThreadedGateway, ib: IB) -> None:
    codes: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: codes.append(code)
    trade = done(ib, ib.placeOrder(Stock("NOPE", "SMART", "USD"), MarketOrder("BUY", 1)))
    assert trade.orderStatus.status == "Cancelled"
    assert 200 in codes


def test_adaptive_algo_with_order_ref(gw: ThreadedGateway, ib: IB) -> None:
    order = MarketOrder("BUY", 30, orderRef="rebalance:abc:SPY", tif="DAY")
    order.algoStrategy = "Adaptive"
    order.algoParams = [TagValue("adaptivePriority", "Normal")]
    trade = done(ib, ib.placeOrder(SPY, order))
    assert trade.orderStatus.status == "Filled"
    server = gw.orders()[0]
    assert server["algoStrategy"] == "Adaptive"
    assert server["orderRef"] == "rebalance:abc:SPY"
    assert server["tif"] == "DAY"
    # the same client sees the algo in reqOpenOrders-style data after a reconnect too
    assert gw.executions()[0]["orderRef"] == "rebalance:abc:SPY"


def test_ioc_not_marketable_is_cancelled(ib: IB) -> None:
    trade = done(ib, ib.placeOrder(SPY, LimitOrder("BUY", 10, 500.0, tif="IOC")))
    assert trade.orderStatus.status == "Cancelled"
    assert trade.orderStatus.filled == 0


def test_modify_resting_order(gw: ThreadedGateway, ib: IB) -> None:
    trade = ib.placeOrder(SPY, LimitOrder("BUY", 10, 500.0, tif="GTC"))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="Submitted")
    trade.order.lmtPrice = 525.0
    ib.placeOrder(SPY, trade.order)
    done(ib, trade)
    assert trade.orderStatus.avgFillPrice == 520.01
    assert gw.orders()[0]["lmtPrice"] == 525.0


def test_what_if_order(ib: IB) -> None:
    state = ib.whatIfOrder(SPY, MarketOrder("BUY", 100))
    assert float(state.initMarginChange) > 0
    assert state.commissionCurrency == "USD"


def test_orders_and_executions_survive_reconnect(gw: ThreadedGateway, connect) -> None:
    ib = connect(5)
    filled = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 10, orderRef="keep")))
    resting = ib.placeOrder(SPY, LimitOrder("SELL", 5, 600.0, tif="GTC", orderRef="rest"))
    wait_until(ib, lambda: resting.orderStatus.status == "Submitted", what="Submitted")
    ib.disconnect()
    wait_for(lambda: 5 not in gw.connected_client_ids(), what="disconnect")

    ib = connect(5)
    open_trades = ib.openTrades()
    assert [(t.order.orderId, t.order.orderRef, t.orderStatus.status) for t in open_trades] == [
        (resting.order.orderId, "rest", "Submitted")
    ]
    assert [f.execution.execId for f in ib.fills()] == [filled.fills[0].execution.execId]
    assert ib.fills()[0].commissionReport.commission == pytest.approx(1.0)
    completed = ib.reqCompletedOrders(apiOnly=True)
    assert [(t.order.permId, t.orderStatus.status, t.order.orderRef) for t in completed] == [
        (filled.order.permId, "Filled", "keep")
    ]
    executions = ib.reqExecutions()
    assert [f.execution.permId for f in executions] == [filled.order.permId]
    # new orders from this client get fresh ids
    newer = ib.placeOrder(SPY, MarketOrder("BUY", 1))
    assert newer.order.orderId > resting.order.orderId
    done(ib, newer)
    # and a different client does not see client 5's open orders, but reqAllOpenOrders does
    other = connect(6)
    assert other.openTrades() == []
    assert [t.order.orderRef for t in other.reqAllOpenOrders()] == ["rest"]


def test_execution_filter(gw: ThreadedGateway, connect) -> None:
    a = connect(11)
    b = connect(12)
    done(a, a.placeOrder(SPY, MarketOrder("BUY", 3)))
    done(b, b.placeOrder(Stock("AAPL", "SMART", "USD"), MarketOrder("SELL", 4)))
    done(a, a.placeOrder(Forex("EURUSD"), MarketOrder("BUY", 20000)))

    def symbols(flt: ExecutionFilter) -> list[str]:
        return sorted(f.contract.symbol for f in a.reqExecutions(flt))

    assert symbols(ExecutionFilter()) == ["AAPL", "EUR", "SPY"]
    assert symbols(ExecutionFilter(clientId=12)) == ["AAPL"]
    assert symbols(ExecutionFilter(symbol="SPY")) == ["SPY"]
    assert symbols(ExecutionFilter(secType="CASH")) == ["EUR"]
    assert symbols(ExecutionFilter(side="SELL")) == ["AAPL"]
    assert symbols(ExecutionFilter(exchange="IDEALPRO")) == ["EUR"]
    assert symbols(ExecutionFilter(acctCode="DU123456")) == ["AAPL", "EUR", "SPY"]
    assert symbols(ExecutionFilter(acctCode="DU999")) == []
    assert symbols(ExecutionFilter(time="20000101 00:00:00")) == ["AAPL", "EUR", "SPY"]
    assert symbols(ExecutionFilter(time="20990101-00:00:00")) == []


def test_hold_fills_then_release(gw: ThreadedGateway, ib: IB) -> None:
    gw.hold_fills(True)
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 7))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="Submitted")
    ib.sleep(0.1)
    assert trade.orderStatus.status == "Submitted"
    assert gw.executions() == []
    gw.hold_fills(False)
    done(ib, trade)
    assert trade.orderStatus.filled == 7


def test_roll_day_expires_day_orders(gw: ThreadedGateway, ib: IB) -> None:
    gw.hold_fills(True)
    partial = ib.placeOrder(SPY, MarketOrder("BUY", 800))
    day = ib.placeOrder(SPY, LimitOrder("BUY", 5, 500.0))
    gtc = ib.placeOrder(SPY, LimitOrder("BUY", 5, 500.0, tif="GTC"))
    wait_until(ib, lambda: all(t.orderStatus.status == "Submitted" for t in (partial, day, gtc)), what="Submitted")
    # one execution of 500, then hold the rest
    gw.hold_fills(False)
    wait_until(ib, lambda: partial.orderStatus.filled >= 500, what="first fill")
    gw.hold_fills(True)
    ib.sleep(0.05)
    gw.roll_day()
    wait_until(ib, lambda: day.isDone() and partial.isDone(), what="day orders to expire")
    assert day.orderStatus.status == "Cancelled"
    assert partial.orderStatus.status in ("Cancelled", "Filled")
    if partial.orderStatus.status == "Cancelled":
        assert partial.orderStatus.filled == 500
    assert gtc.orderStatus.status == "Submitted"
    assert gw.executions() == []
    assert gw.positions()["SPY"] == partial.orderStatus.filled
    # IB lists the current day's completed orders only: yesterday's, the expired ones among them, are gone.
    assert ib.reqCompletedOrders(False) == []
    assert [t.order.permId for t in ib.reqAllOpenOrders()] == [gtc.order.permId]
    filled_today = ib.placeOrder(SPY, LimitOrder("SELL", 5, 500.0))
    gw.hold_fills(False)
    wait_until(ib, lambda: filled_today.orderStatus.status == "Filled", what="today's order to fill")
    assert [t.order.permId for t in ib.reqCompletedOrders(False)] == [filled_today.order.permId]


def test_executions_are_reported_from_midnight_in_the_logins_zone(gw: ThreadedGateway, ib: IB) -> None:
    """IB: "The IB Gateway is limited to only executions from the current trading day since midnight" (TWS API,
    Executions and Commissions). ibsim reported yesterday's until a day roll, whatever its clock said."""
    trade = ib.placeOrder(SPY, MarketOrder("BUY", 1))
    wait_until(ib, lambda: trade.orderStatus.status == "Filled", what="the buy to fill")
    assert [f.execution.execId for f in ib.reqExecutions()] == [trade.fills[0].execution.execId]
    filled_at = trade.fills[0].execution.time.astimezone(NEW_YORK)
    gw.set_time(dt.datetime.combine(filled_at.date() + dt.timedelta(days=1), dt.time(0, 0, 30), NEW_YORK))
    assert ib.reqExecutions() == []
    assert gw.positions()["SPY"] == 1  # the position stays, as IB's does


def test_fx_order_moves_cash_not_positions(gw: ThreadedGateway, ib: IB) -> None:
    before = gw.cash()
    trade = done(ib, ib.placeOrder(Forex("EURUSD"), MarketOrder("BUY", 10000)))
    price = trade.orderStatus.avgFillPrice
    assert price == pytest.approx(1.08505)
    after = gw.cash()
    commission = trade.fills[0].commissionReport.commission
    assert commission == pytest.approx(2.0)  # 0.2 bp of ~10,850 USD is below the $2 minimum
    assert after["EUR"] == pytest.approx(before["EUR"] + 10000)
    assert after["USD"] == pytest.approx(before["USD"] - price * 10000 - commission)
    assert gw.positions() == {}
    wait_until(
        ib,
        lambda: any(
            v.tag == "CashBalance" and v.currency == "EUR" and float(v.value) == pytest.approx(60000)
            for v in ib.accountValues()
        ),
        what="EUR cash balance",
    )


def test_a_forex_pair_shows_as_a_virtual_fx_position_valued_as_cash_only(gw: ThreadedGateway, ib: IB) -> None:
    """IB Gateway's "Include FX positions when sending portfolio" (on by default) sends a pair traded on IDEALPRO
    as a position: the sum of its trades ("FX Portfolio - Virtual FX Position"). The money is the cash balances,
    so net liquidation and the gross position value do not count it."""

    def usd(tag: str) -> float:
        return next(float(v.value) for v in ib.accountValues() if v.tag == tag and v.currency == "USD")

    values = {tag: usd(tag) for tag in ("NetLiquidation", "GrossPositionValue")}
    done(ib, ib.placeOrder(Forex("EURUSD"), MarketOrder("BUY", 30000)))
    sold = done(ib, ib.placeOrder(Forex("EURUSD"), MarketOrder("SELL", 10000)))
    assert gw.fx_positions() == {"EUR.USD": 20000}
    assert gw.positions() == {}

    [position] = ib.reqPositions()
    assert (position.contract.secType, position.contract.symbol, position.contract.currency) == ("CASH", "EUR", "USD")
    assert position.position == 20000
    assert position.avgCost == pytest.approx(1.08505)  # the trade price: the sale realized against it
    wait_until(ib, lambda: [p.position for p in ib.portfolio()] == [20000], what="the portfolio's FX row")
    [row] = ib.portfolio()
    assert row.marketValue == pytest.approx(20000 * 1.085)
    assert row.realizedPNL == pytest.approx((sold.orderStatus.avgFillPrice - 1.08505) * 10000, abs=0.01)
    after = {tag: usd(tag) for tag in values}
    assert after["GrossPositionValue"] == values["GrossPositionValue"] == 0
    commissions = 4.0  # the $2 minimum twice
    spread = 10000 * (1.08505 - 1.08495) + 20000 * (1.08505 - 1.085)  # paid, and marked at the mid
    assert after["NetLiquidation"] == pytest.approx(values["NetLiquidation"] - commissions - spread, abs=0.01)


def test_a_gateway_told_not_to_include_fx_positions_sends_none() -> None:
    with ThreadedGateway(port=0, scenario=sim_scenario({"includeFxPositions": False})) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1)
        try:
            done(ib, ib.placeOrder(Forex("EURUSD"), MarketOrder("BUY", 30000)))
            assert gw.fx_positions() == {"EUR.USD": 30000}  # kept, not sent
            assert ib.reqPositions() == []
            assert ib.portfolio() == []
        finally:
            ib.disconnect()


def test_opening_orders_execute_at_the_next_open(gw: ThreadedGateway, ib: IB) -> None:
    moo = ib.placeOrder(SPY, MarketOrder("BUY", 15, tif="OPG"))
    wait_until(ib, lambda: moo.orderStatus.status == "Submitted", what="Submitted")
    ib.sleep(0.05)
    assert moo.orderStatus.filled == 0
    gw.set_price("SPY", 530.0)
    gw.roll_day()
    done(ib, moo)
    assert moo.orderStatus.status == "Filled"
    assert moo.orderStatus.avgFillPrice == 530.01
    # the opening auction is the new day's: its execution and completed order are listed
    assert [e["orderId"] for e in gw.executions()] == [moo.order.orderId]
    assert [t.order.permId for t in ib.reqCompletedOrders(False)] == [moo.order.permId]


def test_short_position_average_cost_is_net_of_commission(gw: ThreadedGateway, ib: IB) -> None:
    """IB's avgCost includes commissions in the economic direction: a short's is the sale price less the
    commission per share (what the sale brought in), so the cover realizes (sell - buy) x qty - both commissions."""
    sale = done(ib, ib.placeOrder(SPY, MarketOrder("SELL", 200, orderRef="short-open")))
    sell_price = sale.orderStatus.avgFillPrice
    sell_commission = sum(f.commissionReport.commission for f in sale.fills)
    assert (sell_price, sell_commission) == (519.99, pytest.approx(1.0))
    wait_until(ib, lambda: [p for p in ib.positions() if p.contract.symbol == "SPY"], what="the position")
    [position] = [p for p in ib.positions() if p.contract.symbol == "SPY"]  # a moment after the fill (see above)
    assert position.position == -200
    assert position.avgCost == pytest.approx(sell_price - sell_commission / 200, abs=1e-9)  # 519.985, not 519.995

    cover = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 200, orderRef="short-cover")))
    buy_price = cover.orderStatus.avgFillPrice
    buy_commission = sum(f.commissionReport.commission for f in cover.fills)
    assert buy_price == 520.01
    realized = sum(f.commissionReport.realizedPNL for f in cover.fills)
    assert realized == pytest.approx((sell_price - buy_price) * 200 - sell_commission - buy_commission)  # -6.00
    assert realized == pytest.approx(-6.0)
    covered = [e["execId"] for e in gw.executions() if e["orderRef"] == "short-cover"]
    assert covered == [f.commissionReport.execId for f in cover.fills]
    assert gw.positions() == {}


def test_a_corrected_execution_comes_as_a_new_exec_id_differing_after_the_final_period(
    gw: ThreadedGateway, ib: IB
) -> None:
    """IB's Execution.execId: "A correction is indicated by an ExecId which differs from a previous ExecId in only
    the digits after the final period". The correction is sent like any execution; the account moves by the
    difference, so the position and cash are what the corrected execution alone would have made them."""
    trade = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 100, orderRef="to-correct")))
    (first,) = ib.fills()
    cash_after_fill = gw.cash()["USD"]

    corrected = gw.correct_execution(first.execution.execId, price=520.51)
    wait_until(ib, lambda: len(ib.fills()) == 2, what="the correction's execution")
    base, _, version = first.execution.execId.rpartition(".")
    assert (version, corrected) == ("01", f"{base}.02")
    again = next(f for f in ib.fills() if f.execution.execId == corrected)
    assert (again.execution.shares, again.execution.price, again.execution.orderRef) == (100, 520.51, "to-correct")
    assert again.execution.permId == trade.order.permId
    wait_until(ib, lambda: again.commissionReport.execId == corrected, what="the correction's commission report")
    assert again.commissionReport.commission == first.commissionReport.commission
    assert gw.positions() == {"SPY": 100}
    assert gw.cash()["USD"] == pytest.approx(cash_after_fill - 100 * 0.50)

    fewer = gw.correct_execution(corrected, shares=90)  # the chain goes on from the latest version
    assert fewer == f"{base}.03"
    wait_until(ib, lambda: len(ib.fills()) == 3, what="the second correction")
    assert gw.positions() == {"SPY": 90}
    assert [e["execId"] for e in gw.executions()] == [first.execution.execId, corrected, fewer]
