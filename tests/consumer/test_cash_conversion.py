"""cash-balancer's arithmetic: every conversion rounds towards zero, so no balance is ever over-sold or over-bought."""

from __future__ import annotations

import pytest

from consumer.broker.model import BrokerOrder
from consumer.broker.orders import order_ref
from consumer.intents.cash_balancer import Pending, conversion, pending_strategy_orders, working_conversions


@pytest.mark.parametrize(
    ("balance", "price", "currency_is_base", "expected"),
    [
        (50_000.0, 1.085, True, -50_000),  # EUR.USD: sell the euros we hold
        (50_000.9, 1.085, True, -50_000),  # never more than we have
        (-500.7, 1.085, True, 500),  # a euro debit: buy back at most what is owed
        (1_000_000.0, 151.5, False, 6600),  # USD.JPY: buy dollars with at most the yen we hold
        (-1_000_000.0, 151.5, False, -6600),  # a yen debit: sell dollars for at most the yen owed
        (100.0, 151.5, False, 0),  # less than one dollar's worth of yen: nothing to trade
    ],
)
def test_conversion_rounds_towards_zero(balance, price, currency_is_base, expected):
    quantity = conversion(balance, price, currency_is_base)
    assert quantity == expected
    if not currency_is_base:
        assert abs(quantity * price) <= abs(balance)  # the yen spent or received never exceeds the balance


def broker_order(ref: str, symbol: str, currency: str, action: str, quantity: float, filled: float = 0.0, **kw):
    return BrokerOrder(
        order_ref=ref,
        order_id=1,
        perm_id=1,
        client_id=1,
        contract={"conId": 1, "symbol": symbol, "secType": kw.pop("sec_type", "CASH"), "currency": currency},
        action=action,
        total_quantity=quantity,
        order_type="MKT",
        limit_price=None,
        tif="DAY",
        status="Submitted",
        filled=filled,
        remaining=quantity - filled,
        avg_fill_price=None,
        account=kw.pop("account", "DU1"),
    )


def test_working_conversions_count_what_other_cash_balancers_will_still_convert():
    earlier = order_ref("cash", "earlier", "EUR.USD")
    orders = [
        broker_order(earlier, "EUR.USD", "USD", "SELL", 50_000, filled=20_000),  # counts its remaining 30,000
        broker_order(order_ref("cash", "yen", "USD.JPY"), "USD.JPY", "JPY", "SELL", 6_000),  # brings in JPY
        broker_order(order_ref("cash", "this", "EUR.USD"), "EUR.USD", "USD", "SELL", 50_000),  # this request's own
        broker_order(order_ref("alloc", "a", "EUR.USD"), "EUR.USD", "USD", "BUY", 10_000),  # a strategy's forex leg
        broker_order("by-hand", "EUR.USD", "USD", "SELL", 10_000),  # not a cash-balancer's
        broker_order(order_ref("cash", "other", "EUR.USD"), "EUR.USD", "USD", "SELL", 9, account="DU2"),
    ]
    rates = {"EUR": 1.085, "JPY": 1 / 150.0}
    found = working_conversions(orders, "DU1", "USD", rates, "this")
    assert [(w.order.order_ref, w.moves) for w in found] == [
        (earlier, {"EUR": -30_000}),
        (order_ref("cash", "yen", "USD.JPY"), {"JPY": pytest.approx(6_000 * 150.0)}),
    ]
    assert found[0].view("EUR") == {
        "orderRef": earlier,
        "pair": "EUR.USD",
        "quantity": -50_000,
        "status": "Submitted",
        "filled": 20_000,
        "remaining": 30_000,
        "converts": -30_000,
    }


def test_strategy_forex_orders_open_in_the_books_bound_the_free_balance_both_ways() -> None:
    """A purchase may still add its remaining BASE and take its QUOTE cost, a sale the other way round; conversions
    and the account's base currency do not count."""
    orders = [
        {"orderRef": "alloc-aaaaaaaaaaaa-EUR.USD-1", "secType": "CASH", "symbol": "EUR.USD", "currency": "USD",
         "quantity": 30_000.0, "filled": 10_000.0},  # 20,000 EUR still to come
        {"orderRef": "alloc-aaaaaaaaaaaa-EUR.GBP-2", "secType": "CASH", "symbol": "EUR.GBP", "currency": "GBP",
         "quantity": -1_000.0, "filled": 0.0},  # a sale: 1,000 EUR leaving, GBP to come
        {"orderRef": "cash-bbbbbbbbbbbb-EUR.USD", "secType": "CASH", "symbol": "EUR.USD", "currency": "USD",
         "quantity": -50_000.0, "filled": 0.0},  # a conversion: counted as working at IB instead
        {"orderRef": "alloc-aaaaaaaaaaaa-SPY-3", "secType": "STK", "symbol": "SPY", "currency": "USD",
         "quantity": 10.0, "filled": 0.0},
    ]  # fmt: skip
    rates = {"USD": 1.0, "EUR": 1.08, "GBP": 1.25}
    pending = pending_strategy_orders(orders, "USD", rates)
    assert pending == {"EUR": Pending(adds=20_000.0, takes=1_000.0), "GBP": Pending(adds=pytest.approx(864.0))}


@pytest.mark.parametrize(
    ("free", "adds", "takes", "convertible"),
    [
        (74_291.0, 24_291.0, 0.0, 50_000.0),  # a purchase that filled before its execution was booked: not sold back
        (-4_858.0, 0.0, 4_858.0, 0.0),  # a sale that filled before its execution was booked: not bought back
        (0.0, 4_858.0, 0.0, 0.0),  # a short's cover still working: nothing to buy
        (-1_000.0, 0.0, 0.0, -1_000.0),  # a debit with nothing pending: covered
        (500.0, 1_000.0, 2_000.0, 0.0),  # the range holds zero: nothing
    ],
)
def test_only_what_is_free_whatever_the_pending_orders_did_is_converted(
    free: float, adds: float, takes: float, convertible: float
) -> None:
    assert Pending(adds, takes).bounded(free) == convertible
