"""Snapshot reads: prices and quotes read as their ticks arrive, not at the end IB sends 11 s later; never from an
earlier snapshot's ticker; IB's refusal kept as the reason; a lost connection an error; and nothing left in
ib_insync's bookkeeping once IB ends them (issue 17: RSS after a 1,000-instrument run).

The gateway ends a snapshot 600 s after its ticks (IB: 11 s; far off here, so no slow host ends one a test expects
open). Each read below is bounded at 5 s, so a wait for the end fails the test instead of passing slowly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from ib_insync import IB

from consumer.broker.instruments import Instruments
from consumer.broker.market import snapshot_prices, snapshot_quotes
from consumer.broker.model import Quote
from consumer.broker.orders import LegOrder, OrderEngine
from consumer.broker.shared import SharedRequests
from consumer.errors import IntentError
from consumer.store.trading_config import OrderDefaults
from consumer.strategies.base import InstrumentSpec
from tests.support import ensure_loop, wait_for

SYMBOLS = ("SPY", "TLT", "GLD")


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    return {"marketData": {"snapshotEndSeconds": 600}}


@pytest.fixture
def ib(gateway) -> Iterator[IB]:
    ensure_loop()
    client = IB()
    client.connect("127.0.0.1", gateway.port, clientId=9, timeout=5)
    yield client
    client.disconnect()


def gateway_price(gateway, symbol: str) -> float:
    return gateway.call(lambda: gateway.server.instruments[symbol]).price


def test_snapshots_are_read_before_ib_ends_them_and_dropped_when_it_does(ib: IB, gateway) -> None:
    assert gateway.server.scenario.snapshotEndSeconds == 600
    specs = {s: InstrumentSpec(s, currency="USD") for s in SYMBOLS}
    instruments = ib.run(Instruments(ib).resolve(specs))

    first = ib.run(snapshot_prices(ib, instruments.values(), within=5))
    assert gateway.open_snapshots() == len(SYMBOLS)  # answered, read, and still open at the gateway
    for symbol, instrument in instruments.items():
        assert first[instrument.con_id] == pytest.approx(gateway_price(gateway, symbol))

    # The first snapshots are still open when the prices move: the next read is of the new prices, not of a ticker
    # the open snapshots still fill.
    moved = {symbol: round(gateway_price(gateway, symbol) * 1.05, 2) for symbol in SYMBOLS}
    for symbol, price in moved.items():
        gateway.set_price(symbol, price)
    quotes = ib.run(snapshot_quotes(ib, instruments.values(), within=5))
    again = ib.run(snapshot_prices(ib, instruments.values(), within=5))
    for symbol, instrument in instruments.items():
        assert quotes[instrument.con_id].last == pytest.approx(moved[symbol])
        assert again[instrument.con_id] == pytest.approx(moved[symbol])
    assert gateway.open_snapshots() == 3 * len(SYMBOLS)

    # IB ends them: nothing of them is kept (a day of them used to keep every Ticker of the session).
    assert gateway.end_snapshots() == 3 * len(SYMBOLS)
    wait_for(lambda: not ib.wrapper.tickers and not ib.wrapper.reqId2Ticker, 5, "tickers dropped", ib=ib)
    assert all(not ids for ids in ib.wrapper.ticker2ReqId.values())
    assert not ib.wrapper._futures


def test_a_snapshot_refused_is_read_at_once_and_leaves_nothing(ib: IB, gateway) -> None:
    """IB's 354 ends a snapshot without ticks: its instrument is left out, without waiting for the 5 s bound."""
    specs = {s: InstrumentSpec(s, currency="USD") for s in ("SPY",)}
    instruments = ib.run(Instruments(ib).resolve(specs))
    ib.reqMarketDataType(1)
    gateway.call(lambda: setattr(gateway.server.scenario, "permissions", "none"))
    prices = ib.run(snapshot_prices(ib, instruments.values(), within=5))
    assert prices == {}
    assert gateway.open_snapshots() == 0
    wait_for(lambda: not ib.wrapper.tickers and not ib.wrapper.reqId2Ticker, 5, "tickers dropped", ib=ib)


def test_a_connection_lost_while_a_snapshot_is_awaited_fails_the_read(ib: IB, gateway) -> None:
    """Not instruments without a price: the intent must fail and be retried, as it did when reqTickers raised."""
    instruments = ib.run(Instruments(ib).resolve({"SPY": InstrumentSpec("SPY", currency="USD")}))
    gateway.stall_request("reqMktData", 30)
    reading = asyncio.ensure_future(snapshot_prices(ib, instruments.values(), within=10))
    wait_for(lambda: any(r == "reqMktData" for _, r in gateway.requests_received()), 5, "the request", ib=ib)
    assert not reading.done()
    gateway.drop_connections()
    with pytest.raises(ConnectionError):
        ib.run(reading)


def test_a_refused_quote_names_ibs_reason_and_no_limit_order_is_priced_from_it(ib: IB, gateway) -> None:
    """The login's user logged in elsewhere (10197): a LMT leg gets no price, and the error says why."""
    instruments = ib.run(Instruments(ib).resolve({"SPY": InstrumentSpec("SPY", currency="USD")}))
    spy = instruments["SPY"]
    gateway.competing_session(True)
    quotes = ib.run(snapshot_quotes(ib, [spy], within=5))
    refusal = "IB 10197: No market data during competing live session"
    assert quotes == {spy.con_id: Quote(None, None, None, refusal)}

    engine = OrderEngine(ib, SharedRequests(ib, 60.0), OrderDefaults(order_type="LMT"), {}, 5.0, "DU123456")
    with pytest.raises(IntentError) as refused:
        engine.priced([LegOrder("alloc-test-SPY", spy, 10)], quotes)
    assert refused.value.code == "no_quote"
    assert f"the gateway gave none ({refusal}); nothing was placed" in str(refused.value)
    assert gateway.orders() == []
