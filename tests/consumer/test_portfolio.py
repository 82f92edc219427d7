"""Sizing, netting and fill attribution: the arithmetic every trading intent relies on."""

from __future__ import annotations

import itertools

import pytest

from consumer.portfolio import attribute, gross_exposure, net_legs, scale_parts, target_quantity


def test_sizing_rounds_towards_zero_both_ways() -> None:
    assert target_quantity(100_000, 0.2, 450.0, 1, 1.0) == 44  # 44.4 -> 44
    assert target_quantity(100_000, -0.2, 450.0, 1, 1.0) == -44  # never oversized short either


def test_sizing_uses_multiplier_and_fx() -> None:
    # A future: 50 x 5000 = 250k per contract; 1M x 0.5 = 500k -> 2 contracts.
    assert target_quantity(1_000_000, 0.5, 5000.0, 50, 1.0) == 2
    # A EUR stock at 100 EUR with EURUSD 1.10: 110 USD a share; 11,000 USD buys 100 shares, not 110.
    assert target_quantity(110_000, 0.1, 100.0, 1, 1.10) == 100


def test_sizing_exact_boundary_is_not_lost_to_float_error() -> None:
    assert target_quantity(1000, 0.3, 10.0, 1, 1.0) == 30  # 0.3 * 1000 / 10 is 29.999999999999996 in floats


@pytest.mark.parametrize("price", [0.0, -1.0, float("nan"), float("inf")])
def test_sizing_refuses_a_meaningless_price(price: float) -> None:
    with pytest.raises(ValueError, match="cannot size"):
        target_quantity(1000, 0.5, price, 1, 1.0)


def test_opposite_wants_net_into_one_order() -> None:
    legs = net_legs(targets={"a": {1: 100}, "b": {1: -60}}, current={}, working={})
    leg = legs[1]
    assert leg.quantity == 40
    assert leg.deltas == {"a": 100, "b": -60}
    assert leg.internal_transfer == {}


def test_offsetting_wants_are_a_transfer_not_an_order() -> None:
    leg = net_legs(targets={"a": {1: 50}, "b": {1: 0}}, current={"b": {1: 50}}, working={})[1]
    assert leg.quantity == 0
    assert leg.internal_transfer == {"a": 50, "b": -50}


def test_held_and_working_quantities_are_subtracted() -> None:
    leg = net_legs(targets={"a": {1: 100}}, current={"a": {1: 30}}, working={"a": {1: 50}})[1]
    assert leg.quantity == 20


def test_same_targets_again_trade_nothing() -> None:
    legs = net_legs(targets={"a": {1: 100, 2: -5}}, current={"a": {1: 100, 2: -5}}, working={})
    assert all(leg.quantity == 0 and not leg.deltas for leg in legs.values())


def test_a_holding_no_longer_targeted_is_closed() -> None:
    leg = net_legs(targets={"a": {}}, current={"a": {7: 12}}, working={})[7]
    assert leg.quantity == -12


def test_full_fill_gives_every_strategy_exactly_its_delta() -> None:
    assert attribute({"a": 100, "b": -60}, 40, 40) == {"a": 100, "b": -60}


def test_partial_fills_attribute_whole_shares_that_add_up() -> None:
    shares = {"a": 7, "b": 5, "c": 1}
    booked = {s: 0 for s in shares}
    for cumulative in range(1, 14):
        parts = attribute(shares, 13, cumulative, booked)
        assert sum(parts.values()) == cumulative
        assert all(isinstance(v, int) for v in parts.values())
        assert all(parts[s] >= booked[s] for s in shares), "cumulative attribution never takes back"
        booked = parts
    assert booked == shares


@pytest.mark.parametrize(("a", "b"), list(itertools.product([1, 2, 3, 10], [1, 2, 5])))
def test_attribution_of_sells_mirrors_buys(a: int, b: int) -> None:
    total = a + b
    buy_booked: dict[str, int] = {}
    sell_booked: dict[str, int] = {}
    for filled in range(total + 1):
        buy = attribute({"x": a, "y": b}, total, filled, buy_booked)
        sell = attribute({"x": -a, "y": -b}, -total, -filled, sell_booked)
        assert sum(sell.values()) == -filled
        assert {k: -v for k, v in buy.items()} == sell
        buy_booked, sell_booked = buy, sell


def test_netted_order_partial_fills_move_each_strategy_towards_its_share() -> None:
    shares = {"a": 100, "b": -60}
    booked: dict[str, int] = {}
    for cumulative in (10, 25, 39, 40):
        parts = attribute(shares, 40, cumulative, booked)
        assert sum(parts.values()) == cumulative
        assert 0 <= parts["a"] <= 100
        assert -60 <= parts["b"] <= 0
        assert parts["a"] >= booked.get("a", 0)
        assert parts["b"] <= booked.get("b", 0)
        booked = parts
    assert booked == shares


@pytest.mark.parametrize(
    "parts", [{"a": 11, "b": 42}, {"a": 1, "b": 1, "c": 1}, {"a": -25, "b": 75}, {"a": -3, "b": 8}, {"a": -40}]
)
def test_a_corrected_executions_parts_stay_whole_and_add_up(parts: dict[str, int]) -> None:
    before = sum(parts.values())
    for total in range(1, 2 * abs(before) + 2):
        signed = total if before > 0 else -total
        scaled = scale_parts(parts, signed)
        assert sum(scaled.values()) == signed
        assert all(float(q).is_integer() for q in scaled.values())
        assert all(abs(scaled[s] - q * signed / before) < 1 for s, q in parts.items())


def test_fractional_parts_scale_in_proportion() -> None:
    assert scale_parts({"a": 1.5, "b": 0.5}, 1.0) == {"a": 0.75, "b": 0.25}


def test_gross_exposure() -> None:
    assert gross_exposure({"a": {"X": 0.5, "Y": -0.5}, "b": {"Z": 2.0}}, {"a": 0.5, "b": 0.25}) == 1.0
