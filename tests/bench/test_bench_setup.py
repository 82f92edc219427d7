"""`make bench` is not run by the suite (it takes minutes): these check what it stands on, so that a change to the
simulated gateway that would stop it shows here, as regular hours did when its gateway ran on the wall clock."""

from __future__ import annotations

import pytest

from bench import bench_gateway
from bench.stack import bench_scenario
from ibsim import ThreadedGateway
from ibsim.market import session_state


def test_the_bench_gateways_clock_is_in_every_instruments_session() -> None:
    with ThreadedGateway(port=0, scenario=bench_scenario()) as gw:
        now = gw.now()
        closed = [
            key
            for key, inst in gw.server.instruments.items()
            if session_state(inst, gw.server.scenario.hours, now, extended=False) is not None
        ]
    assert closed == []


def test_the_gateway_bench_connects_places_and_fills() -> None:
    result = bench_gateway.run(connects=2, orders=4)
    assert (result["connects"], result["orders"], result["pacing_violations"]) == (2, 4, 0)
    assert result["order_round_trip_median_ms"] > 0
    assert result["cli_start_to_listening_ms"] > 0


def test_the_held_book_rebalance_trades_every_instrument_at_the_same_gross_exposure() -> None:
    from bench.__main__ import shifted_weights

    symbols = [f"SYM{n:03d}" for n in range(200)]
    equal = round(0.8 / len(symbols), 6)
    shifted = shifted_weights(symbols)
    assert set(shifted) == set(symbols)
    assert all(w != equal for w in shifted.values())
    assert sum(w > equal for w in shifted.values()) == sum(w < equal for w in shifted.values()) == 100
    assert sum(shifted.values()) == pytest.approx(len(symbols) * equal)
