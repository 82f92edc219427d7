"""Market data from the gateway, for strategies and sizing: daily bars, snapshot prices and FX rates."""

from __future__ import annotations

import asyncio
import copy
import functools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from ib_insync import IB, Contract, Ticker

from consumer.broker import views
from consumer.broker.hours import sessions
from consumer.broker.instruments import Instrument, Instruments, fx_pair
from consumer.broker.model import HistoricalBar, Prices, Quote
from consumer.errors import IntentError, Transient
from consumer.strategies.base import Bar, SignalUnavailable

# IB's historical-data pacing ("Historical Data Limitations"): no identical request within 15 s, fewer than six
# requests for one contract within 2 s, at most 60 requests within 10 minutes; a violation is error 162. IB keeps
# the 10-minute budget for bars under a minute only: "Historical Data Limitations for barSize = '1 mins' and
# greater have been lifted" (a soft slow-down instead). Counted for every size, it failed a 61-instrument daily
# collect on every attempt, and every allocation for 10 minutes after a 60-instrument one.
IDENTICAL_WITHIN = 15.0
PER_CONTRACT = (5, 2.0)
OVERALL = (60, 600.0)
# Longer than this to wait for a slot: the intent is retried later (Transient) rather than held on the loop. Not a
# setting: it only bounds a wait that IB's fixed windows above decide, and a retry costs nothing.
MAX_PACING_WAIT = 30.0
# "The maximum number of simultaneous open historical data requests from the API is 50. In practice, it will
# probably be more efficient to have a much smaller number of requests pending at a time." The 51st is refused
# with 322; with IB taking over ~1 s a request, a burst of 60 (the 10-minute budget) would have 51 open.
MAX_OPEN_REQUESTS = 20
PACING_VIOLATION = "pacing violation"
# IB's 162 for a window that holds no bar (a listing younger than it): IB saying there are none, not a refusal.
NO_DATA = "hmds query returned no data"

HistoryKey = tuple[int, str, str, str, bool]


class HistoryPacer:
    """Keeps this connection's historical requests inside IB's pacing rules, so none is answered with 162.

    An identical request within 15 s gets the answer already received (or joins the one in flight) instead of
    asking again; a request that would be the sixth for its contract within 2 s, or the 61st within 10 minutes,
    waits for the window to pass (IB's rule is a time window: there is no event to wait on). At most
    MAX_OPEN_REQUESTS are unanswered at a time; the others wait for an answer. One pacer per Broker; `timeout`
    bounds each request sent (HISTORY_TIMEOUT_SECONDS).
    """

    def __init__(
        self,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._recent: dict[HistoryKey, tuple[float, list[HistoricalBar]]] = {}
        self._inflight: dict[HistoryKey, asyncio.Future[list[HistoricalBar]]] = {}
        self._sent: deque[tuple[float, int, bool]] = deque()  # (when, conId, bars under a minute), oldest first
        self._open = asyncio.Semaphore(MAX_OPEN_REQUESTS)

    async def bars(
        self, ib: IB, instrument: Instrument, duration: str, bar_size: str, utc: bool
    ) -> list[HistoricalBar]:
        key: HistoryKey = (instrument.con_id, duration, bar_size, _what_to_show(instrument), utc)
        now = self._clock()
        recent = self._recent.get(key)
        if recent is not None and now - recent[0] < IDENTICAL_WITHIN:
            return list(recent[1])
        pending = self._inflight.get(key)
        if pending is not None:
            return list(await asyncio.shield(pending))
        future: asyncio.Future[list[HistoricalBar]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            async with self._open:  # before the slot, which counts the request as sent now
                await self._slot(instrument.con_id, _under_a_minute(bar_size))
                bars = await _request_bars(ib, instrument, duration, bar_size, utc, self._timeout)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:
            future.set_exception(e)
            future.exception()  # marked retrieved: there may be no joiner
            raise
        finally:
            self._inflight.pop(key, None)
        self._recent[key] = (self._clock(), bars)
        future.set_result(bars)
        return list(bars)

    async def _slot(self, con_id: int, small: bool) -> None:
        """Waits until a request for `con_id` keeps within IB's budgets, then counts it (`small`: bars under a
        minute, which IB's 10-minute budget counts)."""
        while True:
            now = self._clock()
            for key in [k for k, (t, _) in self._recent.items() if now - t >= IDENTICAL_WITHIN]:
                del self._recent[key]
            while self._sent and now - self._sent[0][0] >= OVERALL[1]:
                self._sent.popleft()
            waits = []
            mine = [t for t, c, _ in self._sent if c == con_id and now - t < PER_CONTRACT[1]]
            if len(mine) >= PER_CONTRACT[0]:
                waits.append(mine[-PER_CONTRACT[0]] + PER_CONTRACT[1] - now)
            paced = [t for t, _, under in self._sent if under]
            if small and len(paced) >= OVERALL[0]:
                waits.append(paced[-OVERALL[0]] + OVERALL[1] - now)
            if not waits:
                self._sent.append((now, con_id, small))
                return
            wait = max(waits)
            if wait > MAX_PACING_WAIT:
                raise Transient("history_paced", f"IB's historical-data pacing allows no request for {wait:.0f} s")
            await self._sleep(wait)


def _under_a_minute(bar_size: str) -> bool:
    """'30 secs' and the like: the sizes IB's 10-minute pacing budget still counts."""
    return bar_size.strip().split(" ")[-1].startswith("sec")


def duration(days: int) -> str:
    """IB's duration string: days up to a year, whole years beyond."""
    return f"{days} D" if days <= 365 else f"{math.ceil(days / 365)} Y"


class BrokerMarketData:
    """The strategies' view of the market (consumer.strategies.base.MarketData), limited to their instruments."""

    def __init__(
        self,
        ib: IB,
        instruments: Mapping[str, Instrument],
        pacer: HistoryPacer,
        snapshot_timeout: float,
        now: Callable[[], datetime],
    ) -> None:
        self._ib = ib
        self._instruments = instruments
        self._pacer = pacer
        self._snapshot_timeout = snapshot_timeout
        self._now = now

    def _instrument(self, symbol: str) -> Instrument:
        try:
            return self._instruments[symbol]
        except KeyError:
            raise SignalUnavailable(f"{symbol} is not among the strategy's instruments") from None

    async def daily_bars(self, symbol: str, days: int) -> list[Bar]:
        """Completed sessions only. During a session IB ends daily history with the session's bar so far, its
        close the last trade: a signal read from it turned with the minute a message arrived (the 09:30 open's
        allocation a few seconds either side of the open, or a redelivery later in the day, traded opposite ways).
        One session more is asked for, so that `days` completed ones come back in a session as outside one (a
        strategy given just enough history was skipped at every open and signalled in the evening's dry run)."""
        instrument = self._instrument(symbol)
        try:
            bars = await historical_bars(self._ib, self._pacer, instrument, duration(days + 1), "1 day", utc=False)
        except HistoryRefused as e:
            raise SignalUnavailable(e.message) from e
        started = _session_started(instrument, self._now())
        if bars and started is not None and bars[-1].day >= started.isoformat():
            bars = bars[:-1]
        return [Bar(b.time, b.open, b.high, b.low, b.close, b.volume) for b in bars[max(0, len(bars) - days) :]]

    async def price(self, symbol: str) -> float:
        instrument = self._instrument(symbol)
        return (await snapshot_prices(self._ib, [instrument], self._snapshot_timeout))[instrument.con_id]


def _session_started(instrument: Instrument, now: datetime) -> date | None:
    """The date (in the exchange's zone) the regular session under way at `now` started, or None when none is."""
    hours = instrument.liquid_hours or instrument.trading_hours
    if not hours:
        return None
    under_way = [start for start, end in sessions(hours, instrument.time_zone) if start <= now < end]
    return min(under_way).date() if under_way else None


def _what_to_show(instrument: Instrument) -> str:
    return "MIDPOINT" if instrument.sec_type == "CASH" else "TRADES"


async def _request_bars(
    ib: IB, instrument: Instrument, duration: str, bar_size: str, utc: bool, within: float
) -> list[HistoricalBar]:
    """Regular-hours bars ending now: midpoints for forex (IDEALPRO has no trades), trades otherwise. `utc` asks for
    intraday bar times as UTC timestamps rather than in the exchange's zone.

    ib_insync answers a refused request with no bars; its error arrives on errorEvent with the request's contract,
    a copy of ours so that concurrent requests for one instrument are told apart. A pacing violation (162, the
    gateway's budget spent by another client) and a request not answered in `within` are Transient: the intent
    is retried later, never run on no bars. IB's 162 "HMDS query returned no data" (a listing younger than the
    window) is the one refusal that means no bars.
    """
    contract = copy.copy(instrument.contract)
    errors: list[tuple[int, str]] = []

    def on_error(req_id: int, code: int, message: str, about: Any) -> None:
        if about is contract:
            errors.append((code, message))

    ib.errorEvent += on_error
    asked = time.monotonic()
    try:
        bars = await ib.reqHistoricalDataAsync(
            contract,
            endDateTime="",
            durationStr=duration,
            barSizeSetting=bar_size,
            whatToShow=_what_to_show(instrument),
            useRTH=True,
            formatDate=2 if utc else 1,
            timeout=within,
        )
    finally:
        ib.errorEvent -= on_error
    for code, message in errors:
        if code == 162 and PACING_VIOLATION in message.lower():
            raise Transient("history_paced", f"{instrument.symbol} history: IB error {code}: {message}")
    if errors and all(code == 162 and NO_DATA in message.lower() for code, message in errors):
        return []
    if errors and not bars:
        code, message = errors[0]
        raise HistoryRefused("history_refused", f"{instrument.symbol} history: IB error {code}: {message}")
    if not bars and time.monotonic() - asked >= within:
        # ib_insync answers a request it gave up waiting for with no bars and no error: HMDS not answering (its
        # farm down, the nightly reset) is no "there are none", and must not be stored or signalled as such.
        raise Transient("history_timeout", f"{instrument.symbol} history: IB did not answer in {within:g} s")
    return [views.bar(b) for b in bars]


class HistoryRefused(IntentError):
    """IB refused a history request (no market-data permission, a bar size it does not offer...): not "no bars"."""


async def historical_bars(
    ib: IB, pacer: HistoryPacer, instrument: Instrument, duration: str, bar_size: str, utc: bool = True
) -> list[HistoricalBar]:
    return await pacer.bars(ib, instrument, duration, bar_size, utc)


@dataclass(frozen=True, slots=True)
class SnapshotRead:
    """What snapshots brought: a Ticker per instrument, and IB's refusals ("IB 354: ...") by conId."""

    tickers: list[Ticker]
    refused: dict[int, str]


async def snapshot_tickers(ib: IB, instruments: Iterable[Instrument], within: float) -> SnapshotRead:
    """One snapshot per distinct instrument, each read as soon as it holds a bid, an ask and a last or close price.

    IB sends a snapshot's ticks at once but ends it (tickSnapshotEnd) 11 s later, and ib_insync's reqTickers waits
    for that end: every pricing step would take 11 s. A snapshot that gets less than a full quote (a market without
    one, a refusal) is read at its end. All must be read within `within` seconds (SNAPSHOT_TIMEOUT_SECONDS), else
    TimeoutError; a connection lost meanwhile raises ConnectionError. Either way the intent is retried.
    """
    unique = {i.con_id: i for i in instruments}
    if not unique:
        return SnapshotRead([], {})
    batch = _SnapshotBatch(ib, unique.values())
    ib.pendingTickersEvent += batch.on_ticks
    ib.errorEvent += batch.on_error
    try:
        await asyncio.wait_for(batch.all_read, timeout=within)
    finally:
        ib.pendingTickersEvent -= batch.on_ticks
        ib.errorEvent -= batch.on_error
    batch.raise_if_lost()
    return SnapshotRead(batch.tickers, batch.refused)


class _SnapshotBatch:
    """The snapshots of one read: those still awaited, IB's refusals, and a future set once every one is read."""

    def __init__(self, ib: IB, instruments: Iterable[Instrument]) -> None:
        self._requests = {i.con_id: _request_snapshot(ib, i.contract) for i in instruments}
        self._by_req_id = {req_id: con_id for con_id, (_, _, req_id) in self._requests.items()}
        self._waiting = {id(ticker) for ticker, _, _ in self._requests.values()}
        self.tickers = [ticker for ticker, _, _ in self._requests.values()]
        self.refused: dict[int, str] = {}
        self.all_read: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for ticker, ended, _ in self._requests.values():
            ended.add_done_callback(functools.partial(self._read, ticker))

    def _read(self, ticker: Ticker, *_: object) -> None:
        self._waiting.discard(id(ticker))
        if not self._waiting and not self.all_read.done():
            self.all_read.set_result(None)

    def on_ticks(self, updated: Iterable[Ticker]) -> None:
        # Only the tickers this batch of messages updated: checking every waiting one would be quadratic.
        for ticker in updated:
            if id(ticker) in self._waiting and _has_full_quote(ticker):
                self._read(ticker)

    def on_error(self, req_id: int, code: int, message: str, _contract: object) -> None:
        if req_id in self._by_req_id:
            self.refused[self._by_req_id[req_id]] = f"IB {code}: {message}"

    def raise_if_lost(self) -> None:
        """A refusal ends a request with a result (its ticker stays empty); a lost connection with an exception,
        which must fail the intent (it is retried) rather than read as instruments without a price."""
        for _, ended, _ in self._requests.values():
            if ended.done() and not ended.cancelled() and (lost := ended.exception()) is not None:
                raise lost


def _request_snapshot(ib: IB, contract: Contract) -> tuple[Ticker, asyncio.Future[Any], int]:
    """Sends one snapshot request; returns its Ticker, the future IB's end (or refusal) resolves, and its reqId.

    The request gets a contract object, so a Ticker, of its own: ib_insync keys tickers by contract object, and a
    ticker shared with a snapshot still open from an earlier call would already hold that call's prices. ib_insync
    keeps every snapshot's Ticker for the session; it is dropped here when IB ends the snapshot, since a
    1,000-instrument rebalance a day would otherwise keep megabytes.
    """
    own = copy.copy(contract)
    wrapper = ib.wrapper
    req_id = ib.client.getReqId()
    ended = wrapper.startReq(req_id, own)
    ticker = wrapper.startTicker(req_id, own, "snapshot")

    def forget(done: asyncio.Future[Any]) -> None:
        if not done.cancelled():
            done.exception()  # a dropped connection ends it with ConnectionError: nobody else reads that
        wrapper.endTicker(ticker, "snapshot")
        wrapper.tickers.pop(id(own), None)
        wrapper.reqId2Ticker.pop(req_id, None)

    ended.add_done_callback(forget)
    ib.client.reqMktData(req_id, own, "", True, False, [])
    return ticker, ended, req_id


def _has_full_quote(ticker: Ticker) -> bool:
    """Everything a price or a limit price is made of: nothing more is waited for once it is there. A bid or ask of
    -1 is IB's answer that there is none (outside the trading hours): an answer, which a later tick will not change
    before the snapshot's end."""
    has_reference = _usable(ticker.last) is not None or _usable(ticker.close) is not None
    return _answered(ticker.bid) and _answered(ticker.ask) and has_reference


def _answered(value: float | None) -> bool:
    return value is not None and (value == -1 or _usable(value) is not None)


async def snapshot_prices(ib: IB, instruments: Iterable[Instrument], within: float) -> Prices:
    """One snapshot per instrument, concurrently; an instrument without a usable price is left out (with IB's
    refusal in `refused` when there was one)."""
    read = await snapshot_tickers(ib, instruments, within)
    prices = {}
    for ticker in read.tickers:
        price = ticker_price(ticker)
        if price is not None and ticker.contract is not None:
            prices[ticker.contract.conId] = price
    return Prices(prices.items(), {c: why for c, why in read.refused.items() if c not in prices})


async def snapshot_quotes(ib: IB, instruments: Iterable[Instrument], within: float) -> dict[int, Quote]:
    """Bid, ask and last (or close) per instrument, for limit prices."""
    quotes = {}
    read = await snapshot_tickers(ib, instruments, within)
    for ticker in read.tickers:
        if ticker.contract is not None:
            con_id = ticker.contract.conId
            last = _usable(ticker.last) or _usable(ticker.close)
            quotes[con_id] = Quote(
                _usable(ticker.bid), _usable(ticker.ask), last, read.refused.get(con_id), ticker_price(ticker)
            )
    return quotes


def _usable(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) and value > 0 else None


def ticker_price(ticker: Ticker) -> float | None:
    for candidate in (ticker.marketPrice(), ticker.close):
        if candidate is not None and math.isfinite(candidate) and candidate > 0:
            return float(candidate)
    return None


def fx_rates(ib: IB, account: str) -> dict[str, float]:
    """Units of base currency per unit of each currency, from the account's ExchangeRate values.

    ib_insync keeps account values current through the subscription it starts at connect.
    """
    rates = {}
    for value in ib.accountValues(account):
        if value.tag == "ExchangeRate" and value.currency and value.currency != "BASE":
            try:
                rates[value.currency] = float(value.value)
            except ValueError:
                continue
    return rates


async def market_fx_rates(
    ib: IB, instruments: Instruments, currencies: Iterable[str], base: str, within: float
) -> dict[str, float]:
    """Rates for currencies the account values carry none for (no cash in them), from the forex pair's quote.

    Either orientation: EUR.USD's price is USD per EUR; USD.JPY's is JPY per USD, so JPY's rate is its inverse.
    A currency without a pair or a price is left out (its instruments are then skipped, never sized at 1).
    """
    pairs = {}
    for currency in set(currencies) - {base}:
        try:
            pairs[currency] = await fx_pair(instruments, currency, base)
        except IntentError:
            continue
    prices = await snapshot_prices(ib, [pair for pair, _ in pairs.values()], within)
    rates = {}
    for currency, (pair, currency_is_base) in pairs.items():
        price = prices.get(pair.con_id)
        if price is not None:
            rates[currency] = price if currency_is_base else 1.0 / price
    return rates
