"""Average-cost P&L: the arithmetic behind each strategy's avgCost and realizedPnl (consumer.pnl)."""

from __future__ import annotations

import pytest

from consumer.pnl import Lot, late_commission, trade, transfer, unrealized


def test_buys_blend_cost_and_the_commission_raises_it() -> None:
    b = trade(Lot(), 100, 10.0, commission=1.0)
    assert b.realized == 0.0
    assert b.lot == Lot(100, pytest.approx(10.01))
    b = trade(b.lot, 100, 12.0, commission=1.0)
    assert b.lot.quantity == 200
    assert b.lot.avg_cost == pytest.approx((1001 + 1201) / 200)


def test_partial_close_realizes_the_closed_part_net_of_its_commission() -> None:
    lot = Lot(100, 10.0)
    b = trade(lot, -40, 12.5, commission=1.0)
    assert b.realized == pytest.approx(2.5 * 40 - 1.0)
    assert b.lot == Lot(60, 10.0)  # the rest keeps its cost
    b = trade(b.lot, -60, 9.0, commission=1.0)
    assert b.realized == pytest.approx(-1.0 * 60 - 1.0)
    assert b.lot == Lot(0.0, 0.0)


def test_a_short_gains_when_the_price_falls() -> None:
    b = trade(Lot(), -50, 20.0, commission=0.5)
    assert b.lot.quantity == -50
    assert b.lot.avg_cost == pytest.approx(20.0 - 0.5 / 50)  # the commission lowers what the sale brought in
    cover = trade(b.lot, 50, 18.0)
    assert cover.realized == pytest.approx((18.0 - b.lot.avg_cost) * 50 * -1)
    assert cover.realized == pytest.approx(2.0 * 50 - 0.5)


def test_crossing_zero_realizes_the_close_and_opens_the_rest_at_the_fill_price() -> None:
    b = trade(Lot(100, 10.0), -150, 11.0, commission=3.0)
    # 100 closed (+100 gross), 50 opened short: the commission splits 2 to the close, 1 to the new short's cost.
    assert b.realized == pytest.approx(100.0 - 2.0)
    assert b.lot.quantity == -50
    assert b.lot.avg_cost == pytest.approx(11.0 - 1.0 / 50)


def test_a_future_applies_its_multiplier_to_pnl_but_not_to_the_per_unit_cost() -> None:
    b = trade(Lot(), 2, 5000.0, multiplier=50, commission=4.0)
    assert b.lot.avg_cost == pytest.approx(5000.0 + 4.0 / (2 * 50))
    assert unrealized(b.lot, 5010.0, 50) == pytest.approx(10 * 2 * 50 - 4.0)
    close = trade(b.lot, -1, 5020.0, multiplier=50, commission=2.0)
    assert close.realized == pytest.approx(20 * 50 - 2.0 - 2.0)  # its share of the opening commission, and its own


def test_a_late_commission_goes_to_cost_when_the_fill_opened_and_to_realized_when_it_closed() -> None:
    opened = late_commission(Lot(100, 10.0), 100, 1.0, 1.0)
    assert opened.lot.avg_cost == pytest.approx(10.01)
    assert opened.realized == 0.0
    closed = late_commission(Lot(60, 10.0), -40, 1.0, 1.0)
    assert closed.lot == Lot(60, 10.0)
    assert closed.realized == -1.0
    flat = late_commission(Lot(), -100, 1.0, 1.0)
    assert flat.realized == -1.0
    short = late_commission(Lot(-50, 20.0), -50, 1.0, 0.5)
    assert short.lot.avg_cost == pytest.approx(19.99)
    assert short.realized == 0.0


def test_late_commission_totals_equal_commission_at_booking() -> None:
    """Booked in one go or with the commission later, the strategy ends with the same realized P&L."""
    at_once = trade(Lot(), 100, 10.0, commission=1.0).lot
    at_once_close = trade(at_once, -100, 11.0, commission=1.0)
    later = late_commission(trade(Lot(), 100, 10.0).lot, 100, 1.0, 1.0).lot
    later_close = trade(later, -100, 11.0)
    later_close_realized = later_close.realized + late_commission(later_close.lot, -100, 1.0, 1.0).realized
    assert later_close_realized == pytest.approx(at_once_close.realized) == pytest.approx(98.0)


def test_a_transfer_at_market_books_no_gain_in_total() -> None:
    giver, receiver = Lot(100, 10.0), Lot(-20, 13.0)
    price = 12.0
    before = unrealized(giver, price) + unrealized(receiver, price)
    g, r = transfer(giver, receiver, 30, price)
    assert g.realized == pytest.approx(2.0 * 30)  # the giver realizes what it earned on what it gives
    assert g.lot == Lot(70, 10.0)
    # The receiver was short 20 at 13: 20 covered at 12 (+20), 10 opened long at 12.
    assert r.realized == pytest.approx(20.0)
    assert r.lot == Lot(10, 12.0)
    after = g.realized + r.realized + unrealized(g.lot, price) + unrealized(r.lot, price)
    assert after == pytest.approx(before)


def test_a_corrections_earlier_versions_are_the_execids_differing_only_after_the_final_period() -> None:
    from consumer.store.books import earlier_versions

    assert earlier_versions("0000e0d5.65a1b2c3.01.01") == []
    assert earlier_versions("0000e0d5.65a1b2c3.01.03") == ["0000e0d5.65a1b2c3.01.01", "0000e0d5.65a1b2c3.01.02"]
    assert earlier_versions("synthetic-1000000001-100") == []  # not IB's shape
    assert earlier_versions("0001f4e8.57f3a2b1.01.x1") == []
