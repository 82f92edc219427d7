"""Snapshot prices leave nothing behind in ib_insync's bookkeeping (issue 17: RSS after a 1,000-instrument run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ib_insync import IB

from consumer.broker.instruments import Instruments
from consumer.broker.market import snapshot_prices, snapshot_quotes
from consumer.strategies.base import InstrumentSpec
from tests.support import ensure_loop


@pytest.fixture
def ib(gateway) -> Iterator[IB]:
    ensure_loop()
    client = IB()
    client.connect("127.0.0.1", gateway.port, clientId=9, timeout=5)
    yield client
    client.disconnect()


def test_snapshot_prices_are_read_and_their_tickers_dropped_after(ib: IB, gateway):
    specs = {s: InstrumentSpec(s, currency="USD") for s in ("SPY", "TLT", "GLD")}
    instruments = ib.run(Instruments(ib).resolve(specs))

    for _ in range(2):
        prices = ib.run(snapshot_prices(ib, instruments.values(), within=30))
        quotes = ib.run(snapshot_quotes(ib, instruments.values(), within=30))
        for symbol, instrument in instruments.items():
            expected = gateway.call(lambda s=symbol: gateway.server.instruments[s]).price
            assert prices[instrument.con_id] == pytest.approx(expected)
            assert quotes[instrument.con_id].last == pytest.approx(expected)
        # Nothing of the finished snapshots is kept: a day of them used to keep every Ticker of the session.
        assert ib.wrapper.tickers == {}
        assert ib.wrapper.reqId2Ticker == {}
        assert all(not ids for ids in ib.wrapper.ticker2ReqId.values())
