"""Market-data lines: IB gives a login 100 streaming lines by default, shared by all its clients; one more stream
is refused with 101, and a line comes back when a stream is cancelled or its client disconnects."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from ib_insync import IB, Stock

from ibsim import ThreadedGateway
from tests.ibsim.conftest import symbol_errors, wait_until

MAX_TICKERS = (101, "Max number of tickers has been reached.")
SYMBOLS = [f"SYM{n:03d}" for n in range(102)]


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    # A snapshot's end far off (IB: 11 s), so no slow host ends the one the test expects open.
    return {"generated": {"count": len(SYMBOLS), "prefix": "SYM"}, "marketData": {"snapshotEndSeconds": 600}}


def test_the_101st_stream_of_a_login_is_refused_until_a_line_is_free(
    gw: ThreadedGateway, connect: Callable[..., IB]
) -> None:
    first, second = connect(1), connect(2)
    first_errors, second_errors = symbol_errors(first), symbol_errors(second)
    streams = [first.reqMktData(Stock(s, "SMART", "USD")) for s in SYMBOLS[:100]]
    wait_until(first, lambda: all(t.last == t.last for t in streams), what="100 streams ticking")  # not NaN
    assert first_errors == []

    # The 101st, from another client of the same login: refused with IB's code and text, and nothing streams.
    refused = second.reqMktData(Stock(SYMBOLS[100], "SMART", "USD"))
    wait_until(second, lambda: second_errors, what="error 101")
    assert second_errors == [(SYMBOLS[100], *MAX_TICKERS)]
    assert refused.last != refused.last  # NaN: no tick came

    # A snapshot is answered with every line taken, and holds none while it stays open (IB ends it 11 s later):
    # the stream below gets the line a cancel frees.
    snapshot = second.reqMktData(Stock(SYMBOLS[101], "SMART", "USD"), snapshot=True)
    wait_until(second, lambda: snapshot.last == snapshot.last, what="the snapshot's ticks")
    assert second_errors == [(SYMBOLS[100], *MAX_TICKERS)]
    assert gw.open_snapshots() == 1

    # A cancelled stream gives its line back. The cancel and the next request travel on two sockets: a round trip
    # on the first makes sure the gateway has read the cancel before the second asks.
    first.cancelMktData(streams[0].contract)
    first.reqAllOpenOrders()
    second_errors.clear()
    served = second.reqMktData(Stock(SYMBOLS[101], "SMART", "USD"))
    wait_until(second, lambda: served.last == served.last, what="the stream on the freed line")
    assert second_errors == []
    assert gw.open_snapshots() == 1

    # So does a client that goes: its lines are the login's again, once the gateway has seen it go.
    first.disconnect()
    wait_until(second, lambda: 1 not in gw.connected_client_ids(), what="the gateway to see client 1 go")
    again = second.reqMktData(Stock(SYMBOLS[100], "SMART", "USD"))
    wait_until(second, lambda: again.last == again.last, what="a stream on a disconnected client's line")
    assert second_errors == []


@pytest.mark.parametrize("gateway_scenario", [{"marketData": {"lines": 2}}])
def test_a_scenario_sets_the_logins_lines(connect: Callable[..., IB]) -> None:
    ib = connect(1)
    seen = symbol_errors(ib)
    tickers = [ib.reqMktData(Stock(s, "SMART", "USD")) for s in ("SPY", "TLT", "AAPL")]
    wait_until(ib, lambda: seen and all(t.last == t.last for t in tickers[:2]), what="two streams and a refusal")
    assert seen == [("AAPL", *MAX_TICKERS)]
