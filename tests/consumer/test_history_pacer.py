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
        await pacer._slot(1)
        t.now += 0.1
    await pacer._slot(2)  # another contract is not held up
    assert t.waits == []
    await pacer._slot(1)
    assert t.waits == [pytest.approx(1.5)]  # the first of the five was 1.5 s before the window closed


async def test_the_61st_request_in_ten_minutes_is_retried_later_rather_than_held() -> None:
    t = FakeTime()
    pacer = HistoryPacer(60.0, t.clock, t.sleep)
    for con_id in range(60):
        await pacer._slot(con_id)
        t.now += 1.0
    with pytest.raises(Transient) as refused:
        await pacer._slot(99)
    assert refused.value.code == "history_paced"
    t.now = 1000.0 + 600.0  # the first request has left the window
    await pacer._slot(99)
    assert t.waits == []
