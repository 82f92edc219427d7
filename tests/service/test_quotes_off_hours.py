"""Prices outside the trading hours: IB answers a snapshot with -1 for the bid and the ask (no quote), and the last
trade and close as they stand. The consumer reads that answer, it does not wait for a quote that will not come."""

from __future__ import annotations

import pytest

from tests.support import CLOCKS, Bus

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")


@pytest.fixture
def consumer(consumer_factory):
    # Shorter than IB's end of a snapshot (11 s after its ticks): a read that waited for it would time out.
    return consumer_factory(snapshot_timeout=5.0)


@pytest.mark.parametrize("market_clock", [CLOCKS["saturday"]], ids=["saturday"], indirect=True)
def test_a_snapshot_without_a_bid_or_ask_is_priced_at_the_close(bus: Bus, gateway):
    body = {"intent": "collect-market-data", "params": {"instruments": ["SPY", "EUR.USD"], "barSize": "1 day",
            "duration": "3 D", "snapshot": True}}  # fmt: skip
    replies = bus.replies_to(bus.publish(body), quiet=3.0)
    assert [r["status"] for r in replies] == ["ok"], replies
    result = replies[0]["result"]["instruments"]
    assert {symbol: i["snapshot"] for symbol, i in result.items()} == {"SPY": 520.0, "EUR.USD": 1.085}
    assert gateway.orders() == []
