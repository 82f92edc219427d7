"""A competing live session: while the login's user is logged in elsewhere, IB refuses the API's market data with
10197 "No market data during competing live session" and stops the streams it was sending."""

from __future__ import annotations

from collections.abc import Callable

from ib_insync import IB, Stock

from ibsim import ThreadedGateway
from tests.ibsim.conftest import symbol_errors, wait_until

SPY, TLT = Stock("SPY", "SMART", "USD"), Stock("TLT", "SMART", "USD")
COMPETING = (10197, "No market data during competing live session")


def test_market_data_is_refused_and_streams_stop_until_the_other_session_ends(
    gw: ThreadedGateway, connect: Callable[..., IB]
) -> None:
    ib = connect(1)
    errors = symbol_errors(ib)
    stream = ib.reqMktData(SPY)
    wait_until(ib, lambda: stream.last == 520.0, what="the stream's first ticks")

    assert gw.competing_session(True) == 1
    wait_until(ib, lambda: errors, what="10197 on the stream")
    assert errors == [("SPY", *COMPETING)]
    gw.set_price("SPY", 530.0)
    snapshot = ib.reqMktData(TLT, snapshot=True)  # a round trip too: anything the price move sent has been read
    wait_until(ib, lambda: len(errors) == 2, what="10197 on the snapshot")
    assert errors[1] == ("TLT", *COMPETING)
    assert stream.last == 520.0  # stopped
    assert snapshot.last != snapshot.last  # NaN: nothing came
    assert gw.open_snapshots() == 0

    assert gw.competing_session(False) == 0
    again = ib.reqMktData(Stock("SPY", "SMART", "USD"), snapshot=True)  # a ticker of its own
    wait_until(ib, lambda: again.last == 530.0, what="data once the other session is gone")
    assert len(errors) == 2
