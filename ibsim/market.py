"""The simulated market: instruments, quotes, trading hours and the price walk (historical bars: bars.py)."""

from __future__ import annotations

import datetime as dt
import functools
import math
import random
from typing import Any
from zoneinfo import ZoneInfo

import exchange_calendars as xcals  # type: ignore[import-untyped]

from .instrument_spec import InstrumentSpec
from .messages import ContractView
from .protocol import ContractRequest

UTC = dt.UTC
NEW_YORK = "America/New_York"

# exchange -> (time zone, liquid hours, trading hours) for hours: regular; times are local HHMM on the exchange's
# sessions (holidays and early closes from exchange_calendars)
CALENDARS: dict[str, tuple[str, tuple[str, str], tuple[str, str]]] = {
    "US": (NEW_YORK, ("0930", "1600"), ("0400", "2000")),
    "IBIS": ("Europe/Berlin", ("0900", "1730"), ("0800", "2200")),
}
VALID_EXCHANGES = {
    "STK": "SMART,AMEX,NYSE,CBOE,PHLX,ISE,CHX,ARCA,NASDAQ,DRCTEDGE,BEX,BATS,EDGEA,BYX,IEX,PEARL,LTSE,MEMX",
    "CASH": "IDEALPRO",
    "FUT": "CME,QBALGO",
}
ORDER_TYPES = {
    "STK": "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,AVGCOST,BASKET,DAY,DEACT,DEACTDIS,DIS,GAT,GTC,GTD,IOC,LIT,LMT,MIT,"
    "MKT,MOC,MTL,NGCOMB,NONALGO,OCA,OPG,PEGMID,POSTONLY,REL,SCALE,SNAPMID,STP,STPLMT,TRAIL,WHATIF",
    "CASH": "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,AVGCOST,BASKET,DAY,DEACT,DEACTDIS,GAT,GTC,GTD,IOC,LIT,LMT,MIT,MKT,NONALGO,"
    "OCA,STP,STPLMT,TRAIL,WHATIF",
    "FUT": "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,DAY,DEACT,GAT,GTC,GTD,IOC,LIT,LMT,MIT,MKT,NONALGO,OCA,STP,STPLMT,"
    "TRAIL,WHATIF",
}


def round_tick(price: float, tick: float) -> float:
    decimals = max(0, -math.floor(math.log10(tick)) + 1)
    return round(round(price / tick) * tick, decimals)


class Instrument:
    """One tradable contract with its current price."""

    def __init__(self, spec: InstrumentSpec) -> None:
        self.spec = spec
        self.key = spec.key
        self.symbol = spec.symbol
        self.secType = spec.secType
        self.currency = spec.currency
        self.conId = spec.conId
        self.multiplier = spec.multiplier
        self.tick = spec.minTick
        self.price = round_tick(spec.price, self.tick)
        self.volume = 0.0
        local = spec.key if spec.secType == "CASH" else spec.symbol
        if spec.secType == "FUT":
            local = f"{spec.symbol}{_month_code(spec.lastTradeDateOrContractMonth)}"
        self.localSymbol = local
        self.tradingClass = spec.key if spec.secType == "CASH" else spec.symbol
        self.primaryExchange = spec.primaryExchange
        self.listing = spec.primaryExchange or spec.exchange
        self.exchange = spec.exchange

    # -- quotes ----------------------------------------------------------------------------------------------
    @property
    def bid(self) -> float:
        return round_tick(self.price - self.tick * self.spec.spreadTicks, self.tick)

    @property
    def ask(self) -> float:
        return round_tick(self.price + self.tick * self.spec.spreadTicks, self.tick)

    @property
    def quote_size(self) -> float:
        return {"CASH": 1_000_000.0, "FUT": 50.0}.get(self.secType, 300.0)

    def set_price(self, price: float) -> None:
        self.price = round_tick(price, self.tick)

    @property
    def exec_exchange(self) -> str:
        if self.secType == "STK":
            return self.primaryExchange or "NYSE"
        return self.exchange

    # -- contract views --------------------------------------------------------------------------------------
    def view(self, exchange: str | None = None) -> ContractView:
        return ContractView(
            conId=self.conId,
            symbol=self.symbol,
            secType=self.secType,
            lastTradeDateOrContractMonth=self.spec.lastTradeDateOrContractMonth,
            multiplier=_mult_text(self.multiplier) if self.secType == "FUT" else "",
            exchange=exchange or self.exchange,
            primaryExchange=self.primaryExchange,
            currency=self.currency,
            localSymbol=self.localSymbol,
            tradingClass=self.tradingClass,
        )

    def valid_exchanges(self) -> list[str]:
        if self.secType == "STK":
            listing = self.primaryExchange
            exchanges = VALID_EXCHANGES["STK"].split(",")
            if self.currency != "USD":
                exchanges = ["SMART", listing]
            elif listing and listing not in exchanges:
                exchanges.append(listing)
            return exchanges
        if self.secType == "FUT":
            return [self.exchange, "QBALGO", "GLOBEX"] if self.exchange == "CME" else [self.exchange]
        return [self.exchange]

    def expired(self, now: dt.datetime) -> bool:
        """A future past its last trading moment: IB no longer lists it. CME's equity index futures stop trading at
        08:30 Chicago (09:30 New York) on their last trade date, and settle at the opening quotation."""
        last = self.spec.lastTradeDateOrContractMonth
        if self.secType != "FUT" or not last:
            return False
        local = now.astimezone(ZoneInfo(time_zone_of(self)))
        today = local.strftime("%Y%m%d")[: len(last[:8])]
        if last[:8] == today and len(last) >= 8:
            return local.time() >= FUTURES_LAST_TRADE_TIME
        return last[:8] < today

    def matches(self, c: ContractRequest) -> bool:  # noqa: C901 (one contract field after another, as IB matches them)
        if c.conId:
            if c.conId != self.conId:
                return False
            return not c.exchange or c.exchange in self.valid_exchanges()
        sec = c.secType.upper()
        if sec and sec != self.secType:
            return False
        if c.localSymbol:
            local = c.localSymbol.upper()
            if local not in {self.localSymbol.upper(), self.key.upper(), self.localSymbol.replace(".", "").upper()}:
                return False
        elif c.symbol.upper() != self.symbol.upper():
            return False
        if c.symbol and c.symbol.upper() != self.symbol.upper():
            return False
        if c.currency and c.currency.upper() != self.currency:
            return False
        if c.exchange and c.exchange.upper() not in self.valid_exchanges():
            return False
        if c.primaryExchange and self.primaryExchange and c.primaryExchange.upper() not in {self.primaryExchange}:
            return False
        if c.lastTradeDateOrContractMonth and not self.spec.lastTradeDateOrContractMonth.startswith(
            c.lastTradeDateOrContractMonth.split(" ")[0]
        ):
            return False
        if c.multiplier and self.secType == "FUT":
            try:
                if float(c.multiplier) != self.multiplier:
                    return False
            except ValueError:
                return False
        return not c.tradingClass or c.tradingClass.upper() == self.tradingClass.upper()

    def details(self, hours_mode: str, now: dt.datetime) -> dict[str, Any]:
        tz, trading, liquid = hours_strings(self, hours_mode, now)
        spec = self.spec
        industry, category, subcategory = "", "", ""
        if self.secType == "STK":
            industry, category, subcategory = (
                ("Funds", "Equity Fund", "ETF") if spec.kind == "ETF" else ("Technology", "Computers", "Software")
            )
        market_name = {"CASH": self.key, "FUT": self.symbol}.get(self.secType, self.tradingClass)
        return {
            "marketName": market_name,
            "minTick": self.tick,
            "orderTypes": ORDER_TYPES[self.secType],
            "validExchanges": ",".join(self.valid_exchanges()),
            "longName": spec.longName,
            "contractMonth": spec.lastTradeDateOrContractMonth[:6],
            "industry": industry,
            "category": category,
            "subcategory": subcategory,
            "timeZoneId": tz,
            "tradingHours": trading,
            "liquidHours": liquid,
            "underSymbol": self.symbol if self.secType == "FUT" else "",
            "underSecType": "IND" if self.secType == "FUT" else "",
            "marketRuleIds": "26" if self.secType == "STK" else ("239" if self.secType == "CASH" else "32"),
            "realExpirationDate": spec.lastTradeDateOrContractMonth,
            "stockType": ("ETF" if spec.kind == "ETF" else "COMMON") if self.secType == "STK" else "",
            "minSize": 1 if self.secType != "CASH" else 0.01,
            "sizeIncrement": 1 if self.secType != "CASH" else 0.01,
        }


def _mult_text(m: float) -> str:
    return str(int(m)) if float(m).is_integer() else str(m)


def _month_code(yyyymmdd: str) -> str:
    if len(yyyymmdd) < 6:
        return ""
    codes = "FGHJKMNQUVXZ"
    return f"{codes[int(yyyymmdd[4:6]) - 1]}{yyyymmdd[3]}"


# When CME's equity index futures stop trading on their last trade date, in Chicago.
FUTURES_LAST_TRADE_TIME = dt.time(8, 30)


# -- trading hours ---------------------------------------------------------------------------------------------------
# calendar -> exchange_calendars code: its holidays and early closes are the exchange's own (hours: regular).
EXCHANGE_CALENDARS = {"US": "XNYS", "IBIS": "XETR"}
# CME Globex's own calendar for futures (CMES: Good Friday, Christmas, New Year closed; US holidays close at 12:00
# Chicago); its sessions are labelled by the day they end on, as IB's tradingHours list them.
FUTURES_CALENDAR = "CMES"
# IDEALPRO has no exchange calendar: the session that would end on Christmas Day or New Year's Day is closed (it
# reopens at 17:15 New York that evening), the days IB's forex holiday calendar closes.
FX_HOLIDAYS = {(12, 25), (1, 1)}
Span = tuple[dt.datetime, dt.datetime]


@functools.cache
def _exchange_calendar(code: str, year: int) -> Any:
    """The calendar for the years around `year`: explicit bounds, so nothing depends on the day ibsim runs."""
    return xcals.get_calendar(code, start=f"{year - 1}-01-01", end=f"{year + 1}-12-31")


def calendar_of(inst: Instrument) -> str:
    if inst.secType == "CASH":
        return "FX"
    if inst.secType == "FUT":
        return "CME"
    return "IBIS" if inst.primaryExchange == "IBIS" else "US"


def time_zone_of(inst: Instrument) -> str:
    cal = calendar_of(inst)
    if cal in CALENDARS:
        return CALENDARS[cal][0]
    return "America/Chicago" if cal == "CME" else NEW_YORK


def day_sessions(inst: Instrument, mode: str, day: dt.date) -> tuple[Span | None, Span | None]:
    """(trading, liquid) session that starts on `day` (local to the instrument), None when closed that day.

    Stocks follow the exchange's calendar: a holiday is closed, an early close ends the regular session early
    (and the extended one at 17:00, as NYSE Arca's late session does on half days). FX and CME futures keep their
    weekly pattern, less their holidays (FX_HOLIDAYS; CME Globex's calendar, with its 12:00 early closes).
    """
    tz = ZoneInfo(time_zone_of(inst))

    def at(d: dt.date, hhmm: str) -> dt.datetime:
        return dt.datetime(d.year, d.month, d.day, int(hhmm[:2]), int(hhmm[2:]), tzinfo=tz)

    nxt = day + dt.timedelta(days=1)
    if mode == "always":
        whole: Span = (at(day, "0000"), at(nxt, "0000"))
        return whole, whole
    cal = calendar_of(inst)
    weekday = day.weekday()
    if cal in CALENDARS:
        _, (l0, l1), (t0, t1) = CALENDARS[cal]
        xcal = _exchange_calendar(EXCHANGE_CALENDARS[cal], day.year)
        if weekday >= 5 or not xcal.is_session(day.isoformat()):
            return None, None
        close: dt.datetime = xcal.session_close(day.isoformat()).tz_convert(tz).to_pydatetime()
        if close >= at(day, l1):
            return (at(day, t0), at(day, t1)), (at(day, l0), at(day, l1))
        return (at(day, t0), at(day, "1700") if cal == "US" else close), (at(day, l0), close)
    if cal == "FX":  # Sunday 17:15 to Friday 17:00 New York, a daily break 17:00-17:15
        closed = weekday in (4, 5) or (nxt.month, nxt.day) in FX_HOLIDAYS
        fx: Span | None = None if closed else (at(day, "1715"), at(nxt, "1700"))
        return fx, fx
    # CME equity futures: Sunday 17:00 to Friday 16:00 Chicago, liquid 08:30-15:00 on weekdays; the session that
    # starts on `day` is the one CME labels with the next weekday, and closes early (12:00) on US holidays.
    cme = _exchange_calendar(FUTURES_CALENDAR, day.year)
    fut: Span | None = None
    if weekday not in (4, 5) and cme.is_session(nxt.isoformat()):
        fut = (at(day, "1700"), min(at(nxt, "1600"), _close(cme, nxt, tz)))
    liquid: Span | None = None
    if weekday < 5 and cme.is_session(day.isoformat()):
        close = _close(cme, day, tz)
        liquid = (at(day, "0830"), min(at(day, "1500"), close)) if close > at(day, "0830") else None
    return fut, liquid


def labelled_session(inst: Instrument, mode: str, day: dt.date, liquid: bool) -> Span | None:
    """The session IB labels with `day`: a stock's session on that day; for IDEALPRO and CME Globex, whose sessions
    open the evening before, the one that ends on `day` (CME's liquid hours are `day`'s own)."""
    cal = calendar_of(inst)
    if cal == "FX" or (cal == "CME" and not liquid):
        return day_sessions(inst, mode, day - dt.timedelta(days=1))[0]
    trading, liquid_span = day_sessions(inst, mode, day)
    return liquid_span if liquid else trading


def _close(xcal: Any, day: dt.date, tz: ZoneInfo) -> dt.datetime:
    close: dt.datetime = xcal.session_close(day.isoformat()).tz_convert(tz).to_pydatetime()
    return close


def is_trading_day(inst: Instrument, day: dt.date) -> bool:
    """A day the instrument's exchange holds a session: weekdays, less the exchange's holidays for stocks."""
    cal = calendar_of(inst)
    if day.weekday() >= 5:
        return False
    if cal == "FX":
        return (day.month, day.day) not in FX_HOLIDAYS
    code = FUTURES_CALENDAR if cal == "CME" else EXCHANGE_CALENDARS[cal]
    return bool(_exchange_calendar(code, day.year).is_session(day.isoformat()))


def hours_strings(inst: Instrument, mode: str, now: dt.datetime) -> tuple[str, str, str]:
    """(timeZoneId, tradingHours, liquidHours) for a week from yesterday, in IB's 'new' format ("CLOSED" days)."""
    tz_name = time_zone_of(inst)
    today = now.astimezone(ZoneInfo(tz_name)).date()

    def text(d: dt.date, span: Span | None) -> str:
        if span is None:
            return f"{d:%Y%m%d}:CLOSED"
        return f"{span[0]:%Y%m%d:%H%M}-{span[1]:%Y%m%d:%H%M}"

    trading: list[str] = []
    liquid: list[str] = []
    for d in (today + dt.timedelta(days=i) for i in range(-1, 7)):
        t, lq = day_sessions(inst, mode, d)
        trading.append(text(d, t))
        liquid.append(text(d, lq))
    return tz_name, ";".join(trading), ";".join(liquid)


def session_span(inst: Instrument, mode: str, at: dt.datetime, extended: bool) -> Span:
    """The session of `inst` under way at `at` (its regular one, or its extended one if `extended`), else the next
    one to open: (start, end)."""
    today = at.astimezone(ZoneInfo(time_zone_of(inst))).date()
    for i in range(-1, 15):
        trading, liquid = day_sessions(inst, mode, today + dt.timedelta(days=i))
        span = trading if extended else liquid
        if span is not None and span[1] > at:
            return span
    raise ValueError(f"{inst.key} has no session in the next two weeks")


def session_state(inst: Instrument, mode: str, now: dt.datetime, extended: bool) -> dt.datetime | None:
    """None when `inst` trades at `now` (in its regular session, or its extended one if `extended`); otherwise
    when that session next opens."""
    start, _ = session_span(inst, mode, now, extended)
    return None if start <= now else start


class PriceWalk:
    """Seeded random walk for instruments whose scenario volatility is above zero."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def step(self, inst: Instrument, dt_seconds: float) -> bool:
        vol = inst.spec.volatility
        if vol <= 0:
            return False
        sigma = vol * math.sqrt(dt_seconds / (252 * 23400))
        new = inst.price * math.exp(sigma * self.rng.gauss(0.0, 1.0))
        old = inst.price
        inst.set_price(new)
        return inst.price != old
