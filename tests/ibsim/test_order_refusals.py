"""What IB Gateway refuses when an order arrives (issue 15): margin, the tick grid, contracts, order ids.

Each test asserts IB's code and text through the unmodified ib_insync client, and the broker's state after it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ib_insync import IB, Contract, Forex, LimitOrder, MarketOrder, Stock, StopLimitOrder, Trade

from ibsim import ThreadedGateway
from ibsim.order_rules import good_after
from tests.support import IB_MARGIN_REJECTION

from .conftest import kept_state, wait_until

SPY = Stock("SPY", "SMART", "USD")
AAPL = Stock("AAPL", "SMART", "USD")


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    # snapshots end when answered: these tests read their ticks, not IB's end 11 s later (test_snapshot_end.py)
    return {"margin": {"enforce": True}, "marketData": {"snapshotEndSeconds": 0}}


def done(ib: IB, trade: Trade) -> Trade:
    wait_until(ib, trade.isDone, what=f"order {trade.order.orderId} to finish ({trade.orderStatus.status})")
    return trade


def errors_of(ib: IB) -> list[tuple[int, int, str]]:
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code, msg))
    return errors


def test_an_order_beyond_the_initial_margin_is_inactive_with_error_201_and_a_smaller_one_fills(
    gw: ThreadedGateway, ib: IB
) -> None:
    errors = errors_of(ib)
    gw.set_cash("USD", 10_000)  # with EUR 50,000: equity with loan about 64,000 USD
    big = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1000, orderRef="too-big")))  # 130,000 USD initial margin

    assert "Inactive" in [entry.status for entry in big.log]
    ((order_id, code, text),) = [e for e in errors if e[1] == 201]
    assert (order_id, code) == (big.order.orderId, 201)
    assert text.startswith(IB_MARGIN_REJECTION)
    assert text.endswith("MUST EXCEED THE INITIAL MARGIN [130000.00 USD]")
    assert "too-big" not in {o["orderRef"] for o in gw.orders()}
    assert gw.executions() == []
    assert gw.positions() == {}

    small = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 50, orderRef="fits")))
    assert small.orderStatus.status == "Filled"
    assert gw.positions() == {"SPY": 50}
    assert [e["orderRef"] for e in gw.executions()] == ["fits"]


def test_a_closing_order_is_accepted_in_a_margin_deficit_and_an_opening_one_is_not(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    gw.set_position("AAPL", 2000)  # 380,000 USD: 95,000 initial margin
    gw.set_cash("USD", -400_000)  # equity with loan about 34,000 USD: below the margin already
    closing = done(ib, ib.placeOrder(AAPL, MarketOrder("SELL", 500, orderRef="reduce")))
    assert closing.orderStatus.status == "Filled"
    assert gw.positions()["AAPL"] == 1500

    opening = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1, orderRef="open")))
    assert opening.orderStatus.status != "Filled"
    assert [(e[0], e[1]) for e in errors if e[1] == 201] == [(opening.order.orderId, 201)]
    assert "SPY" not in gw.positions()
    assert [e["orderRef"] for e in gw.executions()] == ["reduce"]


def test_working_orders_count_against_the_margin(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    gw.set_cash("USD", 100_000)  # equity with loan about 154,000 USD: 1,184 SPY of initial margin
    gw.hold_fills(True)
    first = ib.placeOrder(SPY, MarketOrder("BUY", 1000, orderRef="working"))
    wait_until(ib, lambda: first.orderStatus.status == "Submitted", what="the first order working")
    second = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1000, orderRef="on-top")))
    assert [e[1] for e in errors if e[0] == second.order.orderId] == [201]
    assert [o["orderRef"] for o in gw.orders()] == ["working"]
    gw.hold_fills(False)
    done(ib, first)
    assert gw.positions() == {"SPY": 1000}


def test_what_if_reports_the_margin_impact_and_the_commission_the_fill_is_charged(gw: ThreadedGateway, ib: IB) -> None:
    state = ib.whatIfOrder(SPY, MarketOrder("BUY", 1000))
    assert float(state.initMarginChange) == pytest.approx(1000 * 520.00 * 0.25)
    assert float(state.maintMarginChange) == pytest.approx(1000 * 520.00 * 0.20)
    assert state.commission == pytest.approx(5.0)  # 0.005 per share
    assert gw.orders() == []

    trade = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1000, orderRef="priced")))
    charged = [e["commission"] for e in gw.executions() if e["orderRef"] == "priced"]
    assert len(charged) == 2  # two executions of 500
    assert sum(charged) == pytest.approx(state.commission)
    assert sum(f.commissionReport.commission for f in trade.fills) == pytest.approx(state.commission)


OFF_TICK = "The price does not conform to the minimum price variation for this contract."


def test_a_limit_off_the_tick_grid_gets_110_and_never_reaches_the_book(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    off = ib.placeOrder(SPY, LimitOrder("BUY", 10, 400.003, orderRef="off-tick"))
    # ib_insync files 110 among its warnings, so the trade is not marked done: the error and Inactive are the answer
    wait_until(ib, lambda: (off.order.orderId, 110, OFF_TICK) in errors, what="error 110")
    assert "Inactive" in [entry.status for entry in off.log]
    assert gw.orders() == []

    on = ib.placeOrder(SPY, LimitOrder("BUY", 10, 400.01, orderRef="on-tick"))
    wait_until(ib, lambda: on.orderStatus.status == "Submitted", what="the limit on the grid working")
    assert [(o["orderRef"], o["lmtPrice"]) for o in gw.orders()] == [("on-tick", 400.01)]
    assert [e[1] for e in errors if e[0] == on.order.orderId] == []


def test_a_modification_off_the_grid_gets_110_and_the_order_keeps_its_price(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    trade = ib.placeOrder(SPY, LimitOrder("BUY", 10, 400.00, orderRef="modify"))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="the limit working")
    trade.order.lmtPrice = 400.005
    ib.placeOrder(SPY, trade.order)
    wait_until(ib, lambda: (trade.order.orderId, 110, OFF_TICK) in errors, what="error 110")
    ((kept,),) = [[o for o in gw.orders() if o["orderRef"] == "modify"]]
    assert (kept["lmtPrice"], kept["status"]) == (400.00, "Submitted")


def test_a_what_if_off_the_grid_gets_110(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    state = ib.whatIfOrder(SPY, LimitOrder("BUY", 10, 400.003))
    assert [(code, text) for _, code, text in errors] == [(110, OFF_TICK)]
    assert not state  # ib_insync ends the request without an order state
    assert gw.orders() == []


@pytest.mark.parametrize(("contract", "tick"), [(SPY, 0.01), (Forex("EURUSD"), 0.00005)])
def test_every_market_data_request_gets_tick_req_params_so_the_ticker_knows_its_min_tick(
    ib: IB, contract: Contract, tick: float
) -> None:
    ticker = ib.reqMktData(contract)
    wait_until(ib, lambda: ticker.minTick == ticker.minTick and ticker.bid > 0, what="minTick and a quote")
    assert ticker.minTick == tick
    (snapshot,) = ib.reqTickers(contract)
    assert snapshot.minTick == tick


def test_a_lower_never_used_order_id_after_a_higher_one_gets_103(gw: ThreadedGateway, ib: IB, connect) -> None:
    errors = errors_of(ib)
    base = ib.client.getReqId()
    high = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1, orderId=base + 10, orderRef="high")))
    assert high.orderStatus.status == "Filled"
    low = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1, orderId=base + 5, orderRef="low")))
    assert (base + 5, 103, "Duplicate order ID.") in errors
    assert low.orderStatus.status == "Cancelled"
    assert [o["orderRef"] for o in gw.orders()] == ["high"]
    assert [e["orderRef"] for e in gw.executions()] == ["high"]

    # A refused id is used too: a reconnecting client is told to start above it.
    refused = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 10**6, orderId=base + 20, orderRef="refused")))
    assert refused.orderStatus.status == "Cancelled"  # 201: beyond the margin
    ib.disconnect()
    again = connect(1)
    assert again.client.getReqId() > base + 20  # (its start-up requests take some ids first)


MISSING_EXCHANGE = "Error validating request.-'bN' : cause - Missing order exchange."


def test_an_order_without_an_exchange_gets_321_before_the_contract_is_looked_up(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    bare = done(ib, ib.placeOrder(Stock("SPY"), MarketOrder("BUY", 1, orderRef="bare")))
    assert (bare.order.orderId, 321, MISSING_EXCHANGE) in errors
    assert bare.orderStatus.status == "Cancelled"
    assert gw.orders() == []
    assert gw.executions() == []

    errors.clear()
    assert not ib.whatIfOrder(Stock("XXX"), MarketOrder("BUY", 1))
    assert [(code, text) for _, code, text in errors] == [(321, MISSING_EXCHANGE)]
    errors.clear()
    assert not ib.whatIfOrder(Stock("XXX", "SMART", "USD"), MarketOrder("BUY", 1))
    assert [code for _, code, _ in errors] == [200]


def test_a_modification_beyond_the_margin_gets_201_and_the_order_keeps_its_size(gw: ThreadedGateway, ib: IB) -> None:
    errors = errors_of(ib)
    gw.set_cash("USD", 10_000)  # equity with loan about 64,000 USD: 490 SPY at 520 of initial margin
    trade = ib.placeOrder(SPY, LimitOrder("BUY", 100, 400.00, orderRef="grow"))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="the limit working")
    trade.order.totalQuantity = 1000
    ib.placeOrder(SPY, trade.order)
    wait_until(ib, lambda: any(e[:2] == (trade.order.orderId, 201) for e in errors), what="error 201")
    ((_, _, text),) = [e for e in errors if e[1] == 201]
    assert text.startswith(IB_MARGIN_REJECTION)
    ((kept,),) = [[o for o in gw.orders() if o["orderRef"] == "grow"]]
    assert (kept["totalQuantity"], kept["status"]) == (100, "Submitted")

    # (ib_insync marks its trade Cancelled on the error though IB keeps the order: modify another one)
    errors.clear()
    other = ib.placeOrder(SPY, LimitOrder("BUY", 50, 400.00, orderRef="fits"))
    wait_until(ib, lambda: other.orderStatus.status == "Submitted", what="the second limit working")
    other.order.totalQuantity = 150  # with the first order's 100: still within the margin
    ib.placeOrder(SPY, other.order)
    wait_until(
        ib, lambda: {o["orderRef"]: o["totalQuantity"] for o in gw.orders()}["fits"] == 150, what="the modification"
    )
    assert errors == []
    assert gw.executions() == []


def test_the_highest_order_id_survives_a_restart_with_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with kept_state(state) as (gw, ib):
        high = ib.client.getReqId() + 50
        gw.reject_next_order(201, "Order rejected - reason:refused")
        done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1, orderId=high)))
    assert json.loads(state.read_text())["highestOrderIds"] == {"3": high}

    with kept_state(state) as (gw, ib):
        assert ib.client.getReqId() > high
        errors = errors_of(ib)
        done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 1, orderId=high)))
        assert (high, 103, "Duplicate order ID.") in errors
        assert gw.orders() == []


def test_a_fresh_gateway_refuses_api_orders_beyond_its_size_and_value_limits_with_383_and_451(
    gw: ThreadedGateway, ib: IB
) -> None:
    """IB Gateway's order precautions, not bypassed: over the Size Limit 383, over the Total Value Limit (USD) 451,
    the value estimated at the stop price when there is one (IbcAlpha/IBC#227), else the limit price, else the quote.
    ib_insync marks such an order Cancelled; nothing reaches the broker."""
    errors = errors_of(ib)
    gw.order_precautions()  # a fresh gateway: Size Limit 500, Total Value Limit 100,000 USD
    big = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 501, orderRef="over-size")))
    dear = done(ib, ib.placeOrder(SPY, LimitOrder("BUY", 200, 520.25, orderRef="over-value")))
    stop = StopLimitOrder("BUY", 150, 710.0, 700.0, orderRef="stop-valued")
    stopped = done(ib, ib.placeOrder(SPY, stop))

    assert [(e[0], e[1], e[2]) for e in errors if e[1] in (383, 451)] == [
        (
            big.order.orderId,
            383,
            f'The following order "ID:{big.order.orderId}" size exceeds the Size Limit of 500. Restriction is '
            "specified in Precautionary Settings of Global Configuration/Presets.",
        ),
        (
            dear.order.orderId,
            451,
            f'The following order "ID:{dear.order.orderId}" value estimate of 104,050 USD exceeds  the Total Value '
            "Limit of 100,000 USD. Restriction is specified in Precautionary Settings of Global Configuration/Presets.",
        ),
        (
            stopped.order.orderId,
            451,
            f'The following order "ID:{stopped.order.orderId}" value estimate of 105,000 USD exceeds  the Total Value '
            "Limit of 100,000 USD. Restriction is specified in Precautionary Settings of Global Configuration/Presets.",
        ),
    ]
    assert {t.orderStatus.status for t in (big, dear, stopped)} == {"Cancelled"}
    assert gw.orders() == []
    assert gw.executions() == []

    within = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 150, orderRef="within")))  # 78,000 USD
    fx = done(ib, ib.placeOrder(Forex("EURUSD"), MarketOrder("BUY", 200_000, orderRef="fx")))  # forex: other presets
    assert (within.orderStatus.status, fx.orderStatus.status) == ("Filled", "Filled")

    gw.order_precautions(bypass=True)  # as gateway-image configures the gateway (IBC BypassOrderPrecautions=yes)
    bypassed = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 501, orderRef="bypassed")))
    assert bypassed.orderStatus.status == "Filled"
    assert {e["orderRef"] for e in gw.executions()} == {"within", "fx", "bypassed"}
    assert gw.positions()["SPY"] == 651


def test_the_built_in_gateway_bypasses_the_precautions_as_gateway_image_configures_it(
    gw: ThreadedGateway, ib: IB
) -> None:
    big = done(ib, ib.placeOrder(SPY, MarketOrder("BUY", 600, orderRef="large")))  # 312,000 USD, 600 shares
    assert big.orderStatus.status == "Filled"
    assert gw.positions() == {"SPY": 600}


def test_a_forex_order_below_the_idealpro_minimum_gets_399_and_still_fills(gw: ThreadedGateway, ib: IB) -> None:
    """IB accepts it and routes it as an odd lot: the 399 is a note, not a hold (the order fills), unlike the 399
    of an order held for its session; at or above USD 25,000 there is no note."""
    errors = errors_of(ib)
    small = done(ib, ib.placeOrder(Forex("EURUSD"), MarketOrder("SELL", 7000, orderRef="odd-lot")))
    large = done(ib, ib.placeOrder(Forex("EURUSD"), MarketOrder("BUY", 25_000, orderRef="round-lot")))
    assert (small.orderStatus.status, large.orderStatus.status) == ("Filled", "Filled")
    assert [(e[0], e[1], e[2]) for e in errors if e[1] == 399] == [
        (
            small.order.orderId,
            399,
            "Order Message:\nSELL 7K EUR.USD Forex\nWarning: Your order size is below the USD 25000 IdealPro minimum "
            "and will be routed as an odd lot order.",
        )
    ]
    assert {e["orderRef"] for e in gw.executions()} == {"odd-lot", "round-lot"}


@pytest.mark.parametrize("text", ["20261207 09:30:00 America", "20261207 09:30:00 Nowhere/Zone", "2026 09:30", "x y"])
def test_a_good_after_time_ibsim_cannot_read_is_no_time_not_a_crash(text: str) -> None:
    assert good_after(text, "America/New_York") is None


def test_a_good_after_time_is_read_in_its_zone_else_the_one_given() -> None:
    assert str(good_after("20261207 09:30:00 US/Eastern", "Europe/Berlin")) == "2026-12-07 09:30:00-05:00"
    assert str(good_after("20261207 09:30:00", "Europe/Berlin")) == "2026-12-07 09:30:00+01:00"
