"""A scenario's instruments: what a scenario's `instruments` entry becomes, with the defaults for its kind."""

from __future__ import annotations

import datetime as dt
import functools
import zlib
from dataclasses import dataclass, field
from typing import Any

import exchange_calendars as xcals  # type: ignore[import-untyped]

# ISO 4217 codes ibsim accepts, with a fallback rate in USD used when the scenario has no forex pair for them.
USD_RATES: dict[str, float] = {
    "USD": 1.0,
    "EUR": 1.085,
    "GBP": 1.265,
    "JPY": 1 / 151.5,
    "CAD": 1 / 1.36,
    "CHF": 1.11,
    "AUD": 0.655,
    "NZD": 0.60,
    "HKD": 0.128,
    "SGD": 0.74,
    "SEK": 0.095,
    "NOK": 0.093,
    "DKK": 0.145,
    "CNH": 0.138,
    "MXN": 0.059,
    "ZAR": 0.053,
    "PLN": 0.25,
    "CZK": 0.043,
    "HUF": 0.0027,
    "ILS": 0.27,
    "KRW": 0.00074,
    "INR": 0.012,
    "TRY": 0.031,
}


class ScenarioError(ValueError):
    """A scenario is invalid; the message starts with the path of the offending field."""


@dataclass
class InstrumentSpec:
    """An instrument of a scenario, with the defaults for its kind filled in: the contract fields IB reports, its
    starting price and volatility, quoting (spread, tick), history (`bars`) and market-data permission.
    """

    key: str  # how tests and the fault API name it: SPY, EUR.USD, ES; SAP.NYSE beside SAP (two listings, one symbol)
    symbol: str  # the contract's symbol: SPY, EUR, ES
    secType: str  # STK, CASH, FUT (ETF is a STK)
    kind: str  # STK, ETF, CASH, FUT as the scenario says
    exchange: str
    primaryExchange: str
    currency: str
    multiplier: float
    price: float
    volatility: float
    histVolatility: float
    spreadTicks: int
    minTick: float
    conId: int
    lastTradeDateOrContractMonth: str
    longName: str
    bars: list[dict[str, Any]] = field(default_factory=list)
    # realtime | delayed | none: this instrument's market-data permission ("": the scenario's marketData.permissions)
    permissions: str = ""
    # False: IB finds no shares to borrow, and holds a sale that would go short until they are located (404)
    shortable: bool = True
    # YYYYMMDD of the first session it traded ("": long ago): history has no bar before it, and a window holding
    # none is IB's 162 "HMDS query returned no data"
    listed: str = ""


def currency_code(value: Any, where: str) -> str:
    if not isinstance(value, str) or value not in USD_RATES:
        raise ScenarioError(f"{where}: {value!r} is not a currency")
    return value


@functools.cache
def _nyse_sessions(year: int) -> Any:
    return xcals.get_calendar("XNYS", start=f"{year - 1}-01-01", end=f"{year + 1}-12-31")


def last_trade_date(year: int, month: int) -> dt.date:
    """CME's equity index futures: the third Friday of the month, or the business day before it when the exchange
    is closed that day (June 2026: Juneteenth, so Thursday the 18th)."""
    first = dt.date(year, month, 1)
    day = first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)
    sessions = _nyse_sessions(year)
    while not sessions.is_session(day.isoformat()):
        day -= dt.timedelta(days=1)
    return day


def front_quarterly(today: dt.date) -> str:
    """The next quarterly expiry (Mar/Jun/Sep/Dec, `last_trade_date`) on or after today, as YYYYMMDD."""
    year, month = today.year, today.month
    while True:
        if month % 3 == 0:
            last = last_trade_date(year, month)
            if last >= today:
                return last.strftime("%Y%m%d")
        month += 1
        if month > 12:
            year, month = year + 1, 1


def daily_bars(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Daily bars as a scenario (or `set_bars`) gives them, checked and sorted by date."""
    bars = []
    for j, bar in enumerate(rows):
        date = str(bar["date"]).replace("-", "")
        try:
            dt.datetime.strptime(date, "%Y%m%d")
        except ValueError:
            raise ScenarioError(f"{where}[{j}].date: {bar['date']!r} is not a date (YYYYMMDD)") from None
        if not (bar["low"] <= min(bar["open"], bar["close"]) and bar["high"] >= max(bar["open"], bar["close"])):
            raise ScenarioError(f"{where}[{j}]: high/low do not contain open and close")
        bars.append({**bar, "date": date})
    bars.sort(key=lambda b: b["date"])
    return bars


def auto_con_id(key: str, sec_type: str) -> int:
    return 100_000_000 + zlib.crc32(f"{sec_type}:{key}".encode()) % 900_000_000


DEFAULT_EXCHANGE = {"STK": "SMART", "ETF": "SMART", "CASH": "IDEALPRO", "FUT": "CME"}


def instrument_spec(raw: dict[str, Any], where: str, today: dt.date) -> InstrumentSpec:
    kind = raw["secType"]
    sec_type = "STK" if kind == "ETF" else kind
    key = raw.get("key", raw["symbol"])
    exchange = raw.get("exchange") or DEFAULT_EXCHANGE[kind]
    if sec_type == "CASH":
        if key != raw["symbol"]:
            raise ScenarioError(f"{where}.key: a forex pair is named by its symbol ({raw['symbol']}), not {key!r}")
        base, dot, quote = key.partition(".")
        if not dot or len(base) != 3 or len(quote) != 3:
            raise ScenarioError(f"{where}.symbol: forex is written BASE.QUOTE like EUR.USD, not {key!r}")
        currency_code(base, f"{where}.symbol")
        currency_code(quote, f"{where}.symbol")
        if "currency" in raw and raw["currency"] != quote:
            raise ScenarioError(f"{where}.currency: {raw['currency']!r} is not the quote currency of {key} ({quote})")
        symbol, currency = base, quote
        default_tick = 0.005 if quote == "JPY" else 0.00005
        primary = raw.get("primaryExchange", "")
    else:
        symbol = raw["symbol"]
        if not symbol.replace(".", "").replace(" ", "").isalnum():
            raise ScenarioError(f"{where}.symbol: {symbol!r} is not a symbol")
        if not key.replace(".", "").replace(" ", "").isalnum():
            raise ScenarioError(f"{where}.key: {key!r} is not a name (letters, digits, dots)")
        currency = currency_code(raw.get("currency", "USD"), f"{where}.currency")
        default_tick = 0.25 if sec_type == "FUT" else 0.01
        primary = raw.get("primaryExchange", exchange if exchange != "SMART" else "")
    if sec_type == "FUT" and "multiplier" not in raw:
        raise ScenarioError(f"{where}.multiplier: a future needs its multiplier")
    last_trade = ""
    if sec_type == "FUT":
        last_trade = raw.get("lastTradeDateOrContractMonth") or front_quarterly(today)
    elif "lastTradeDateOrContractMonth" in raw:
        raise ScenarioError(f"{where}.lastTradeDateOrContractMonth: only futures expire")
    bars = daily_bars(raw.get("bars") or [], f"{where}.bars")
    vol_default = {"CASH": 0.08, "FUT": 0.18}.get(sec_type, 0.22)
    return InstrumentSpec(
        key=key,
        symbol=symbol,
        secType=sec_type,
        kind=kind,
        exchange=exchange,
        primaryExchange=primary,
        currency=currency,
        multiplier=float(raw.get("multiplier", 1)),
        price=float(raw["price"]),
        volatility=float(raw.get("volatility", 0.0)),
        histVolatility=float(raw.get("histVolatility", vol_default)),
        spreadTicks=int(raw.get("spreadTicks", 1)),
        minTick=float(raw.get("minTick", default_tick)),
        conId=int(raw.get("conId") or auto_con_id(key, sec_type)),
        lastTradeDateOrContractMonth=last_trade,
        longName=raw.get("longName", raw["symbol"]),
        bars=bars,
        permissions=str(raw.get("permissions", "")),
        shortable=bool(raw.get("shortable", True)),
        listed=_listed(raw.get("listed"), f"{where}.listed"),
    )


def _listed(value: Any, where: str) -> str:
    if value is None:
        return ""
    text = str(value).replace("-", "")
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise ScenarioError(f"{where}: {value!r} is not a date (YYYYMMDD)") from None
    return text
