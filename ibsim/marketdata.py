"""Market data requests: contract details, quotes (snapshots and streams, live or delayed), price moves; historical
bars are history.py's.

Prices move only when told to (set_price, a scheduled fault) or, with a scenario volatility above zero, by the
seeded walk; every move streams ticks, lets resting orders fill and revalues the accounts that hold it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import messages as M
from .connection import Connection
from .controls import fault, query
from .history import NO_SECURITY, HistoryDesk
from .instrument_spec import daily_bars
from .market import Instrument, session_state
from .protocol import Reader

DELAYED = {1: 66, 2: 67, 4: 68, 6: 72, 7: 73, 8: 74, 9: 75, 14: 76}
NOT_SUBSCRIBED = (
    "Requested market data is not subscribed. Check API status by selecting the Account menu then under "
    "Management choose Market Data Subscription Manager and/or Delayed market data is not available."
)
DISPLAYING_DELAYED = "Requested market data is not subscribed. Displaying delayed market data."
MAX_TICKERS = "Max number of tickers has been reached."
# IB's answers to market-data requests it cannot take as asked (docs/ibsim.md lists the sources).
DUPLICATE_TICKER = "Error processing request.-'bO' : cause - Duplicate ticker id"
GENERIC_SNAPSHOT = (
    "Error validating request.-'bO' : cause - Snapshot market data subscription is not applicable to generic ticks"
)
# While the login's live user is logged in elsewhere (TWS, the mobile app), IB refuses the API's market data with
# 10197, and revokes the streams it was sending (history: 162, history.py).
COMPETING_SESSION = "No market data during competing live session"

log = logging.getLogger("ibsim")


class MarketDesk(HistoryDesk):
    """reqContractDetails, reqMarketDataType, reqMktData/cancelMktData, and price moves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.market_data_type_requests: list[tuple[int, int]] = []

    def _req_market_data_type(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        kind = r.int()
        conn.mkt_type = kind if kind in (1, 2, 3, 4) else 1
        self.market_data_type_requests.append((conn.client_id or 0, kind))

    def _req_contract_details(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        c = r.contract()
        include_expired = r.str() == "1"
        matches = [i for i in self.resolve(c, include_expired) if i.symbol not in self.undefined]
        if not matches:
            conn.send_error(req_id, 200, NO_SECURITY)
            return
        now = self.clock.now()
        for inst in matches:
            exchange = c.exchange.upper() if c.exchange and c.exchange.upper() in inst.valid_exchanges() else None
            view = inst.view(exchange)
            conn.send(M.contract_details_msg(conn.version, req_id, view, inst.details(self.scenario.hours, now)))
        conn.send([52, 1, req_id])

    def _delayed(self, conn: Connection, inst: Instrument) -> bool:
        """Delayed ticks: asked for (3, 4) and no live subscription to take precedence (IB sends live if it can)."""
        return conn.mkt_type in (3, 4) and self._permission(inst) == "delayed"

    def _ticks(self, conn: Connection, req_id: int, inst: Instrument, first: bool) -> None:
        delayed = self._delayed(conn, inst)

        def tick(kind: int, price: float, size: float) -> None:
            conn.send([1, 6, req_id, DELAYED[kind] if delayed else kind, price, size, 0])

        if self._unquoted(conn, inst):
            # Outside the instrument's trading hours IB's live bid and ask are -1, size 0 (ib_insync #109, #471:
            # "at exactly 8pm Eastern [...] every equity bid/ask [...] goes to NaN/-1" until 04:00); the last trade
            # and the close stay. Frozen data (type 2/4) keeps the values of the close instead.
            tick(1, -1.0, 0.0)
            tick(2, -1.0, 0.0)
        else:
            tick(1, inst.bid, inst.quote_size)
            tick(2, inst.ask, inst.quote_size)
        if inst.secType != "CASH":
            tick(4, inst.price, 100.0)
            conn.send([2, 6, req_id, DELAYED[8] if delayed else 8, inst.volume])
        if first:
            tick(9, round(inst.spec.price, 10), 0.0)

    def _req_mkt_data(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        c = r.contract()
        _skip_combo_legs(r, c.secType)
        generic = r.str()
        snapshot = r.bool() | r.bool()  # a snapshot or a regulatory snapshot: both end after their first ticks
        if _not_as_asked(conn, req_id, generic, snapshot):
            return
        inst = self._one(conn, req_id, c)
        if inst is None or self._refused(conn, req_id, inst, streaming=not snapshot):
            return
        permission = self._permission(inst)
        # IB answers every market-data request with tickReqParams (minTick, bboExchange, snapshotPermissions)
        # before its ticks; ib_insync sets Ticker.minTick from it.
        conn.send([81, req_id, inst.tick, inst.exchange, 3])
        if permission != "realtime":
            conn.send_error(req_id, 10167, DISPLAYING_DELAYED)
        if conn.mkt_type != 1:
            # The type this request actually gets: live whenever the subscription allows it, delayed otherwise;
            # frozen (2) or delayed frozen (4) when asked for and the instrument's regular session is closed.
            actual = 3 if self._delayed(conn, inst) else 1
            if conn.mkt_type in (2, 4) and self._closed(inst):
                actual += 1
            conn.send([58, 1, req_id, actual])
        self._ticks(conn, req_id, inst, first=True)
        if not snapshot:
            conn.streams[req_id] = inst.key
        elif self.scenario.snapshotEndSeconds > 0:
            # IB sends what it has at once and ends the snapshot seconds later; the end is what reqTickers awaits.
            end = asyncio.get_running_loop().call_later(
                self.scenario.snapshotEndSeconds, self._end_snapshot, conn, req_id
            )
            conn.snapshots[req_id] = end
        else:
            self._end_snapshot(conn, req_id)

    def _end_snapshot(self, conn: Connection, req_id: int) -> None:
        conn.snapshots.pop(req_id, None)
        if conn.ready:
            conn.send([57, 1, req_id])

    def _refused(self, conn: Connection, req_id: int, inst: Instrument, streaming: bool) -> bool:
        """Answers IB's refusal of a market-data request (10197: a competing session; 101: no line left; 354: not
        subscribed), if it is one."""
        if self.competing_session_on:
            conn.send_error(req_id, 10197, COMPETING_SESSION)
            return True
        if streaming and self._lines_in_use() >= self.scenario.marketDataLines:
            # Lines are the login's, shared by every client. Only streams hold one here: at IB's 50 messages a
            # second, with each snapshot open 11 s, several hundred are open at once, and no 101 for them is known.
            conn.send_error(req_id, 101, MAX_TICKERS)
            return True
        permission = self._permission(inst)
        # live and frozen both need the live subscription; with none at all, delayed data is refused too
        if permission != "realtime" and (conn.mkt_type in (1, 2) or permission == "none"):
            conn.send_error(req_id, 354, NOT_SUBSCRIBED)
            return True
        return False

    def _lines_in_use(self) -> int:
        return sum(len(c.streams) for c in self.connections)

    def _closed(self, inst: Instrument) -> bool:
        if self.scenario.hours != "regular":
            return False
        return session_state(inst, "regular", self.clock.now(), inst.secType in ("CASH", "FUT")) is not None

    def _unquoted(self, conn: Connection, inst: Instrument) -> bool:
        """No bid or ask: the instrument is outside its trading hours (extended ones included) and the client did
        not ask for frozen data."""
        if self.scenario.hours != "regular" or conn.mkt_type in (2, 4):
            return False
        return session_state(inst, "regular", self.clock.now(), extended=True) is not None

    def _cancel_mkt_data(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        stream = conn.streams.pop(req_id, None)
        end = conn.snapshots.pop(req_id, None)
        if end is not None:
            end.cancel()
        elif stream is None:  # never asked, or a snapshot already ended (rust-ibapi#236)
            conn.send_error(req_id, 300, f"Can't find EId with tickerId:{req_id}")

    # -- price moves -------------------------------------------------------------------------------------------
    def price_moved(self, inst: Instrument) -> None:
        for conn in list(self.clients.values()):
            for req_id, key in list(conn.streams.items()):
                if key == inst.key:
                    self._ticks(conn, req_id, inst, first=False)
        self.broker.work_all(inst.key)
        for acct in self.broker.accounts.values():
            if inst.key in acct.positions or inst.secType == "CASH":
                self.account_repriced(acct.id)

    async def _ticker(self) -> None:
        interval = self.scenario.tickIntervalMs / 1000
        while True:
            await asyncio.sleep(interval)
            for inst in self.instruments.values():
                if self.walk.step(inst, interval):
                    self.price_moved(inst)

    # -- controls and queries ----------------------------------------------------------------------------------
    @fault()
    def set_bars(self, symbol: str, bars: list[dict[str, Any]]) -> None:
        """Daily history of an instrument from now on ({date, open, high, low, close, volume?} each), as a
        scenario's `bars`: a test gives the market the history its signal needs instead of hoping for one."""
        inst = self._instrument(symbol)
        inst.spec.bars = daily_bars(bars, f"set_bars({symbol})")

    @fault(scheduled=True)
    def no_security_definition(self, symbol: str, on: bool = True) -> None:
        """IB answers 200 "No security definition has been found for the request" to contract details for an
        instrument it lists (on), as it does while its data connections are down; off: it answers again."""
        (self.undefined.add if on else self.undefined.discard)(symbol)
        log.info("fault: contract details for %s answered 200 %s", symbol, "on" if on else "off")

    @fault(scheduled=True)
    def competing_session(self, on: bool = True) -> int:
        """The login's live user logs in elsewhere (on) or out (off): while on, every market-data request is refused
        with 10197 and every history request with 162 "...Trading TWS session is connected from a different IP
        address"; turned on, each open stream gets 10197 and stops. Returns the streams stopped."""
        self.competing_session_on = bool(on)
        stopped = 0
        if on:
            for conn in self.connections:
                for req_id in list(conn.streams):
                    conn.send_error(req_id, 10197, COMPETING_SESSION)
                    del conn.streams[req_id]
                    stopped += 1
        log.info("fault: competing live session %s (%d stream(s) stopped)", "on" if on else "off", stopped)
        return stopped

    @fault()
    def end_snapshots(self) -> int:
        """Sends every open snapshot's tickSnapshotEnd now, as IB would once its seconds are up; returns how many:
        a test sees what a client does at the end without waiting for it."""
        ended = [(conn, req_id) for conn in self.connections for req_id in list(conn.snapshots)]
        for conn, req_id in ended:
            conn.snapshots[req_id].cancel()
            self._end_snapshot(conn, req_id)
        return len(ended)

    @query
    def open_snapshots(self) -> int:
        """Snapshots answered but not yet ended (tickSnapshotEnd not sent), across every client."""
        return sum(len(conn.snapshots) for conn in self.connections)

    @query
    def market_data_types(self) -> list[tuple[int, int]]:
        """(clientId, type) of every reqMarketDataType received, oldest first."""
        return list(self.market_data_type_requests)


def _not_as_asked(conn: Connection, req_id: int, generic: str, snapshot: bool) -> bool:
    """Answers a market-data request IB refuses for its shape: an id still in use (322, stoqey/ib#240), generic
    ticks on a snapshot (321, IB's message 414); True when it was one."""
    if req_id in conn.streams or req_id in conn.snapshots:
        conn.send_error(req_id, 322, DUPLICATE_TICKER)
        return True
    if generic and snapshot:
        conn.send_error(req_id, 321, GENERIC_SNAPSHOT)
        return True
    return False


def _skip_combo_legs(r: Reader, sec_type: str) -> None:
    """A BAG's legs and a delta-neutral contract, which market data here does not use."""
    if sec_type == "BAG":
        for _ in range(r.int()):
            r.skip(4)
    if r.bool():
        r.skip(3)
