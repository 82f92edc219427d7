"""cash-balancer's arithmetic: every conversion rounds towards zero, so no balance is ever over-sold or over-bought."""

from __future__ import annotations

import pytest

from consumer.intents.cash_balancer import conversion


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
