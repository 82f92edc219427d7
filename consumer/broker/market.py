"""Market data from the gateway, for strategies and sizing: daily bars, snapshot prices and FX rates."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping

from ib_insync import IB, Ticker

from consumer.broker import views
from consumer.broker.instruments import Instrument, Instruments, fx_pair
from consumer.broker.model import HistoricalBar, Quote
from consumer.errors import IntentError
from consumer.strategies.base import Bar, SignalUnavailable

HISTORY_TIMEOUT = 60.0
SNAPSHOT_TIMEOUT = 30.0


def duration(days: int) -> str:
    """IB's duration string: days up to a year, whole years beyond."""
    return f"{days} D" if days <= 365 else f"{math.ceil(days / 365)} Y"


class BrokerMarketData:
    """The strategies' view of the market (consumer.strategies.base.MarketData), limited to their instruments."""

    def __init__(self, ib: IB, instruments: Mapping[str, Instrument]) -> None:
        self._ib = ib
        self._instruments = instruments

    def _instrument(self, symbol: str) -> Instrument:
        try:
            return self._instruments[symbol]
        except KeyError:
            raise SignalUnavailable(f"{symbol} is not among the strategy's instruments") from None

    async def daily_bars(self, symbol: str, days: int) -> list[Bar]:
        bars = await historical_bars(self._ib, self._instrument(symbol), duration(days), "1 day", utc=False)
        return [Bar(b.time, b.open, b.high, b.low, b.close, b.volume) for b in bars]

    async def price(self, symbol: str) -> float:
        instrument = self._instrument(symbol)
        return (await snapshot_prices(self._ib, [instrument]))[instrument.con_id]


async def historical_bars(
    ib: IB, instrument: Instrument, duration: str, bar_size: str, utc: bool = True
) -> list[HistoricalBar]:
    """Regular-hours bars ending now: midpoints for forex (IDEALPRO has no trades), trades otherwise. `utc` asks for
    intraday bar times as UTC timestamps rather than in the exchange's zone."""
    bars = await ib.reqHistoricalDataAsync(
        instrument.contract,
        endDateTime="",
        durationStr=duration,
        barSizeSetting=bar_size,
        whatToShow="MIDPOINT" if instrument.sec_type == "CASH" else "TRADES",
        useRTH=True,
        formatDate=2 if utc else 1,
        timeout=HISTORY_TIMEOUT,
    )
    return [views.bar(b) for b in bars]


async def snapshot_tickers(ib: IB, instruments: Iterable[Instrument]) -> list[Ticker]:
    unique = {i.con_id: i for i in instruments}
    if not unique:
        return []
    return await asyncio.wait_for(ib.reqTickersAsync(*(i.contract for i in unique.values())), timeout=SNAPSHOT_TIMEOUT)


async def snapshot_prices(ib: IB, instruments: Iterable[Instrument]) -> dict[int, float]:
    """One snapshot per instrument, concurrently; an instrument without a usable price is left out."""
    prices = {}
    for ticker in await snapshot_tickers(ib, instruments):
        price = ticker_price(ticker)
        if price is not None and ticker.contract is not None:
            prices[ticker.contract.conId] = price
    return prices


async def snapshot_quotes(ib: IB, instruments: Iterable[Instrument]) -> dict[int, Quote]:
    """Bid, ask and last (or close) per instrument, for limit prices."""
    quotes = {}
    for ticker in await snapshot_tickers(ib, instruments):
        if ticker.contract is not None:
            quotes[ticker.contract.conId] = Quote(
                _usable(ticker.bid), _usable(ticker.ask), _usable(ticker.last) or _usable(ticker.close)
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


async def market_fx_rates(ib: IB, instruments: Instruments, currencies: Iterable[str], base: str) -> dict[str, float]:
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
    prices = await snapshot_prices(ib, [pair for pair, _ in pairs.values()])
    rates = {}
    for currency, (pair, currency_is_base) in pairs.items():
        price = prices.get(pair.con_id)
        if price is not None:
            rates[currency] = price if currency_is_base else 1.0 / price
    return rates
