"""The one table of IB order statuses and the one contract serializer (consumer.broker.model, views)."""

from __future__ import annotations

import pytest
from ib_insync import Contract

from consumer.broker import views
from consumer.broker.model import STATUSES, Fate, is_accepted, is_done, meaning
from consumer.broker.orders import ACCEPTED, CONFIRMED, DONE, held_note

# IB's statuses (TWS API orderStatus) and what each has always meant here.
EXPECTED = {
    "ApiPending": (Fate.UNCONFIRMED, False),
    "PendingSubmit": (Fate.UNCONFIRMED, False),
    "PendingCancel": (Fate.UNCONFIRMED, False),
    "PreSubmitted": (Fate.WORKING, False),
    "Submitted": (Fate.WORKING, False),
    "ApiCancelled": (Fate.CANCELLED, True),
    "Cancelled": (Fate.CANCELLED, True),
    "Filled": (Fate.FILLED, True),
    "Inactive": (Fate.REJECTED, True),
}


@pytest.mark.parametrize(("status", "expected"), EXPECTED.items())
def test_each_ib_status_has_one_meaning(status: str, expected: tuple[Fate, bool]):
    assert (meaning(status).fate, is_done(status)) == expected


def test_the_sets_the_order_engine_waits_on_come_from_the_table():
    assert {"Filled", "Cancelled", "ApiCancelled", "Inactive"} == DONE
    assert {"PreSubmitted", "Submitted"} <= ACCEPTED
    assert not ACCEPTED & DONE
    assert CONFIRMED == ACCEPTED | DONE
    assert set(EXPECTED) <= set(STATUSES)


def test_a_status_ib_adds_later_is_unconfirmed_never_done():
    """Unknown is not finished: an order in a status we do not know may still fill, so it is looked up again."""
    assert (meaning("SomethingNew").fate, is_done("SomethingNew"), is_accepted("SomethingNew")) == (
        Fate.UNCONFIRMED,
        False,
        False,
    )


def test_an_instrument_is_described_by_the_symbol_it_trades_under():
    """Holdings booked from a fill and orders written from contract details describe EUR.USD the same way."""
    pair = Contract(conId=12087792, symbol="EUR", localSymbol="EUR.USD", secType="CASH", exchange="IDEALPRO",
                    currency="USD")  # fmt: skip
    stock = Contract(conId=756733, symbol="SPY", secType="STK", primaryExchange="ARCA", currency="USD", multiplier="")
    assert views.contract(pair) == {
        "conId": 12087792,
        "symbol": "EUR.USD",
        "localSymbol": "EUR.USD",
        "secType": "CASH",
        "exchange": "IDEALPRO",
        "currency": "USD",
        "multiplier": 1.0,
    }
    assert (views.contract(stock)["symbol"], views.contract(stock)["exchange"]) == ("SPY", "ARCA")


@pytest.mark.parametrize(
    ("zone", "until"),
    [("US/Eastern", "2026-12-07T09:30:00-05:00"), ("US/Central", "2026-12-07T09:30:00-06:00"), ("Mars/Olympus", None)],
)
def test_a_held_order_is_reported_with_ibs_text_and_when_ib_will_place_it(zone: str, until: str | None):
    text = (
        "Order Message:\nBUY 10 SPY ARCA\n"
        f"Warning: your order will not be placed at the exchange until 2026-12-07 09:30:00 {zone}"
    )
    assert held_note(399, text) == {"code": 399, "message": text, "until": until}  # an unknown zone: the text alone
