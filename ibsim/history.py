"""Historical bars: reqHistoricalData and its cancel, with IB's refusals of a history request (no such contract,
50 open requests, a competing live session, forex TRADES, no permission, a bar size or duration IB does not take,
pacing) and the pacing fault; and the instrument look-up every market-data request shares.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import deque
from typing import Any

from .account import AccountDesk
from .bars import (
    DAYS_OVER_A_YEAR,
    LEGAL_BAR_SIZES,
    Bar,
    BarRequestError,
    days_over_a_year,
    legal_bar_size,
    make_bars,
    parse_bar_size,
    parse_duration,
    under_a_minute,
)
from .connection import Connection
from .controls import fault, query
from .market import Instrument
from .protocol import ContractRequest, Reader

NO_SECURITY = "No security definition has been found for the request"
# IB's venue names in "No market data permissions for ISLAND STK" (162 on a history request without them).
PERMISSION_VENUES = {"NASDAQ": "ISLAND"}
# IB's "Historical Data Limitations": a pacing violation is identical requests within 15 seconds, six or more
# requests for the same contract, exchange and tick type within two seconds, or more than 60 requests within any
# ten minutes; IB answers 162 with this text.
PACING_VIOLATION = "Historical Market Data Service error message:Historical data request pacing violation"
# A window with no bar in it, as IB words it: "...HMDS query returned no data: GOOGL@SMART Trades".
NO_DATA = "Historical Market Data Service error message:HMDS query returned no data"
# "The maximum number of simultaneous open historical data requests from the API is 50" (Historical Data
# Limitations); the refusal as gateways send it (ib_insync #293; the quoted code varies with the request).
MAX_OPEN_HISTORIES = 50
TOO_MANY_HISTORIES = (
    "Error processing request:-'wd' : cause - Only 50 simultaneous API historical data requests allowed."
)
# While the login's live user is logged in elsewhere, IB refuses history with 162 and this text, where quotes get
# 10197 (users' logs of IB Gateway, extrange/ibkr-docker#118; docs/ibsim.md lists the sources).
COMPETING_SESSION_HISTORY = (
    "Historical Market Data Service error message:Trading TWS session is connected from a different IP address"
)


class HistoryDesk(AccountDesk):
    """reqHistoricalData / cancelHistoricalData, IB's history pacing, and the contract look-up of market data."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Accepted historical requests (clock time, identity) for pacing.historical, newest last.
        self.history_requests: deque[tuple[float, tuple[Any, ...]]] = deque()
        self.history_violations = 0
        self.pace_next = False
        # The login's live user logged in elsewhere (the fault `competing_session`, in marketdata.py).
        self.competing_session_on = False
        # Symbols whose contract details IB answers with 200 for now (the fault `no_security_definition`).
        self.undefined: set[str] = set()

    def _one(
        self, conn: Connection, req_id: int, c: ContractRequest, include_expired: bool = False
    ) -> Instrument | None:
        matches = self.resolve(c, include_expired)
        if len(matches) == 1:
            return matches[0]
        if matches:
            conn.send_error(req_id, 200, f"The contract description specified for {c.symbol} is ambiguous.")
        else:
            conn.send_error(req_id, 200, NO_SECURITY)
        return None

    def _permission(self, inst: Instrument) -> str:
        return inst.spec.permissions or self.scenario.permissions

    def _req_historical_data(self, conn: Connection, r: Reader) -> None:
        req_id = r.int()
        c = r.contract()
        include_expired = r.str() == "1"
        end = r.str()
        bar_size = r.str()
        duration = r.str()
        use_rth = r.bool()
        what = r.str()
        format_date = r.int(1)
        inst = self._one(conn, req_id, c, include_expired)
        if inst is None or self._history_refused(conn, req_id, inst, what, bar_size, duration):
            return
        if self._pacing_refusal((inst.key, c.exchange.upper(), what.upper()), (end, bar_size, duration, use_rth)):
            self.history_violations += 1
            conn.send_error(req_id, 162, PACING_VIOLATION)
            return
        now = self.clock.now()
        try:
            bars = make_bars(inst, self.scenario.seed, end, duration, bar_size, use_rth, format_date, now, what)
        except BarRequestError as e:
            conn.send_error(req_id, 162, f"Historical Market Data Service error message:{e}")
            return
        if bars:
            self._send_bars(conn, req_id, bars, now)
        else:  # none in the window: a listing younger than it
            conn.send_error(req_id, 162, f"{NO_DATA}: {inst.localSymbol}@{c.exchange.upper()} {what.title()}")

    def _history_refused(
        self, conn: Connection, req_id: int, inst: Instrument, what: str, bar_size: str, duration: str
    ) -> bool:
        """Answers IB's refusal of a history request for what it asks (pacing aside), if it is one."""
        if len(conn.histories) >= MAX_OPEN_HISTORIES:
            conn.send_error(req_id, 322, TOO_MANY_HISTORIES)
        elif self.competing_session_on:
            conn.send_error(req_id, 162, COMPETING_SESSION_HISTORY)
        elif inst.secType == "CASH" and what.upper() == "TRADES":
            # IB disseminates no trades for IDEALPRO forex (ranaroussi/ezibpy#24, erdewit/ib_insync#316).
            conn.send_error(req_id, 162, _no_forex_trades(inst.localSymbol, bar_size))
        elif self._permission(inst) != "realtime":
            venue = PERMISSION_VENUES.get(inst.listing, inst.listing)
            message = (
                f"Historical Market Data Service error message:No market data permissions for {venue} {inst.secType}"
            )
            conn.send_error(req_id, 162, message)
        elif not legal_bar_size(bar_size):
            message = "Error validating request:-'bS' : cause - Historical data bar size setting is invalid. "
            conn.send_error(req_id, 321, message + f"Legal ones are: {LEGAL_BAR_SIZES}")
        elif _days_over_a_year(duration):
            conn.send_error(req_id, 321, DAYS_OVER_A_YEAR)
        else:
            return False
        return True

    def _send_bars(self, conn: Connection, req_id: int, bars: list[Bar], now: dt.datetime) -> None:
        start_text = bars[0].date
        end_text = now.strftime("%Y%m%d %H:%M:%S")
        fields: list[Any] = [17, req_id, start_text, end_text, len(bars)]
        for b in bars:
            fields += [b.date, b.open, b.high, b.low, b.close, b.volume, b.wap, b.count]
        delay = self.scenario.historyDelayMs / 1000
        if delay > 0:
            conn.histories[req_id] = asyncio.get_running_loop().call_later(
                delay, self._answer_history, conn, req_id, fields
            )
        else:
            conn.send(fields)

    def _answer_history(self, conn: Connection, req_id: int, fields: list[Any]) -> None:
        conn.histories.pop(req_id, None)
        if conn.ready:
            conn.send(fields)

    def _cancel_historical_data(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        pending = conn.histories.pop(r.int(), None)
        if pending is not None:
            pending.cancel()

    def _pacing_refusal(self, contract_key: tuple[str, str, str], request: tuple[Any, ...]) -> bool:
        """Whether IB refuses this request for pacing: "Historical Data Limitations for barSize = '1 mins' and
        greater have been lifted", so the three rules (pacing.historical) hold for bars under a minute; or the
        `pace_next_history` fault."""
        if self.pace_next:
            self.pace_next = False
            return True
        if not (self.scenario.pacing.get("historical") and under_a_minute(request[1])):
            return False
        return self._paced((*contract_key, *request))

    @fault()
    def pace_next_history(self) -> None:
        """The next historical request from any client is refused with IB's 162 pacing violation, whatever its
        bar size: another client of the login spending the pacing budget, as a test needs it."""
        self.pace_next = True

    def _paced(self, identity: tuple[Any, ...]) -> bool:
        """True when this historical request breaks one of IB's three pacing rules; otherwise it is counted."""
        now = self.clock.time()
        seen = self.history_requests
        while seen and seen[0][0] <= now - 600:
            seen.popleft()
        identical = any(key == identity and t > now - 15 for t, key in seen)
        same_contract = sum(1 for t, key in seen if key[:3] == identity[:3] and t > now - 2)
        if identical or same_contract >= 5 or len(seen) >= 60:
            return True
        seen.append((now, identity))
        return False

    @query
    def history_pacing_violations(self) -> int:
        """Historical requests refused with 162 for pacing (pacing.historical)."""
        return self.history_violations


def _days_over_a_year(duration: str) -> bool:
    try:
        return days_over_a_year(parse_duration(duration))
    except BarRequestError:
        return False  # refused with its own text by make_bars


def _no_forex_trades(local_symbol: str, bar_size: str) -> str:
    """'... for EUR/CASH@FXSUBPIP Last 1d': IB names the bar by its seconds, a day or longer as 1d."""
    try:
        seconds, kind = parse_bar_size(bar_size)
    except BarRequestError:
        seconds, kind = 86400, "day"
    last = f"{seconds}" if kind == "intraday" else "1d"
    pair = local_symbol.split(".")[0]
    return (
        f"Historical Market Data Service error message:No historical market data for {pair}/CASH@FXSUBPIP Last {last}"
    )
