"""The consumer's side of IB's historical-data pacing: the per-contract and ten-minute budgets are waited out, and
a wait too long for one intent is a Transient retry, not a request IB would refuse."""

from __future__ import annotations

import pytest

from consumer.broker.market import HistoryPacer
from consumer.errors import Transient


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(round(seconds, 6))
        self.now += seconds


async def test_a_sixth_request_for_one_contract_within_two_seconds_waits_for_the_window() -> None:
    t = FakeTime()
    pacer = HistoryPacer(60.0, t.clock, t.sleep)
    for _ in range(5):
        await pacer._slot(1, small=False)
        t.now += 0.1
    await pacer._slot(2, small=False)  # another contract is not held up
    assert t.waits == []
    await pacer._slot(1, small=False)
    assert t.waits == [pytest.approx(1.5)]  # the first of the five was 1.5 s before the window closed


async def test_the_61st_request_for_bars_under_a_minute_in_ten_minutes_is_retried_later_rather_than_held() -> None:
    t = FakeTime()
    pacer = HistoryPacer(60.0, t.clock, t.sleep)
    for con_id in range(60):
        await pacer._slot(con_id, small=True)
        t.now += 1.0
    await pacer._slot(98, small=False)  # IB lifted the budget for bars of a minute and more
    with pytest.raises(Transient) as refused:
        await pacer._slot(99, small=True)
    assert refused.value.code == "history_paced"
    t.now = 1000.0 + 600.0  # the first request has left the window
    await pacer._slot(99, small=True)
    assert t.waits == []


async def test_daily_bars_for_many_instruments_are_not_held_to_the_ten_minute_budget() -> None:
    """Counted for every size, a 61-instrument daily collect failed on every attempt (history_paced), and every
    allocation in the 10 minutes after a 60-instrument one was dead-lettered. Found by a review of calendars."""
    t = FakeTime()
    pacer = HistoryPacer(60.0, t.clock, t.sleep)
    for con_id in range(200):
        await pacer._slot(con_id, small=False)
        t.now += 0.1
    assert t.waits == []
