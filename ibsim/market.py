"""The simulated market: instruments, quotes, trading hours and deterministic historical bars."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
import struct
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from .protocol import ContractRequest, ContractView
from .scenario import InstrumentSpec

UTC = dt.UTC
NEW_YORK = "America/New_York"

# exchange -> (time zone, liquid hours, trading hours) for hours: regular; times are local HHMM, weekdays only
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

    def matches(self, c: ContractRequest) -> bool:
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


# -- trading hours ---------------------------------------------------------------------------------------------------
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


def hours_strings(inst: Instrument, mode: str, now: dt.datetime) -> tuple[str, str, str]:
    """(timeZoneId, tradingHours, liquidHours) for a week from yesterday, in IB's 'new' format."""
    tz_name = time_zone_of(inst)
    tz = ZoneInfo(tz_name)
    today = now.astimezone(tz).date()
    days = [today + dt.timedelta(days=i) for i in range(-1, 7)]

    def ymd(d: dt.date) -> str:
        return d.strftime("%Y%m%d")

    if mode == "always":
        span = ";".join(f"{ymd(d)}:0000-{ymd(d + dt.timedelta(days=1))}:0000" for d in days)
        return tz_name, span, span
    cal = calendar_of(inst)
    trading: list[str] = []
    liquid: list[str] = []
    for d in days:
        weekday = d.weekday()
        if cal in CALENDARS:
            _, (l0, l1), (t0, t1) = CALENDARS[cal]
            if weekday >= 5:
                trading.append(f"{ymd(d)}:CLOSED")
                liquid.append(f"{ymd(d)}:CLOSED")
            else:
                trading.append(f"{ymd(d)}:{t0}-{ymd(d)}:{t1}")
                liquid.append(f"{ymd(d)}:{l0}-{ymd(d)}:{l1}")
        elif cal == "FX":  # Sunday 17:15 to Friday 17:00 New York, a daily break 17:00-17:15
            if weekday in (4, 5):
                trading.append(f"{ymd(d)}:CLOSED")
            else:
                trading.append(f"{ymd(d)}:1715-{ymd(d + dt.timedelta(days=1))}:1700")
            liquid = trading
        else:  # CME equity futures: Sunday 17:00 to Friday 16:00 Chicago, liquid 08:30-15:00 on weekdays
            if weekday in (4, 5):
                trading.append(f"{ymd(d)}:CLOSED")
            else:
                trading.append(f"{ymd(d)}:1700-{ymd(d + dt.timedelta(days=1))}:1600")
            if weekday >= 5:
                liquid.append(f"{ymd(d)}:CLOSED")
            else:
                liquid.append(f"{ymd(d)}:0830-{ymd(d)}:1500")
    return tz_name, ";".join(trading), ";".join(liquid)


# -- historical bars -------------------------------------------------------------------------------------------------
BAR_SECONDS = {
    "sec": 1,
    "secs": 1,
    "min": 60,
    "mins": 60,
    "hour": 3600,
    "hours": 3600,
    "day": 86400,
    "days": 86400,
    "week": 7 * 86400,
    "weeks": 7 * 86400,
    "month": 30 * 86400,
    "months": 30 * 86400,
}
DURATION_SECONDS = {"S": 1, "D": 86400, "W": 7 * 86400, "M": 30 * 86400, "Y": 365 * 86400}
MAX_BARS = 100_000


class BarRequestError(ValueError):
    pass


@dataclass
class Bar:
    date: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    wap: float
    count: int


def parse_bar_size(text: str) -> tuple[int, str]:
    """'5 mins' -> (300, 'intraday'); '1 day' -> (86400, 'day'); '1 week' -> (7, 'week'); '1 month' -> (1, 'month')."""
    parts = text.strip().split()
    if len(parts) != 2 or not parts[0].isdigit() or parts[1] not in BAR_SECONDS:
        raise BarRequestError(f"Invalid bar size setting {text!r}")
    n, unit = int(parts[0]), parts[1]
    if n <= 0:
        raise BarRequestError(f"Invalid bar size setting {text!r}")
    if unit.startswith("day"):
        if n != 1:
            raise BarRequestError(f"Invalid bar size setting {text!r}")
        return 86400, "day"
    if unit.startswith("week"):
        return n, "week"
    if unit.startswith("month"):
        return n, "month"
    return n * BAR_SECONDS[unit], "intraday"


def parse_duration(text: str) -> tuple[int, str]:
    parts = text.strip().split()
    if len(parts) != 2 or not parts[0].isdigit() or parts[1].upper() not in DURATION_SECONDS:
        raise BarRequestError(f"Invalid duration {text!r}: use an integer and one of S D W M Y")
    n = int(parts[0])
    if n <= 0:
        raise BarRequestError(f"Invalid duration {text!r}")
    return n, parts[1].upper()


def parse_end(text: str, now: dt.datetime) -> dt.datetime:
    """endDateTime as clients send it: '', 'YYYYMMDD HH:MM:SS[ TZ]', 'YYYYMMDD-HH:MM:SS' (UTC), 'YYYYMMDD'."""
    text = text.strip()
    if not text:
        return now
    try:
        if "-" in text and " " not in text:
            return dt.datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC)
        parts = text.split(" ")
        if len(parts) == 1:
            return dt.datetime.strptime(text, "%Y%m%d").replace(
                hour=23, minute=59, second=59, tzinfo=ZoneInfo(NEW_YORK)
            )
        naive = dt.datetime.strptime(parts[0] + parts[1], "%Y%m%d%H:%M:%S")
        tz_name = parts[2] if len(parts) > 2 else NEW_YORK
        return naive.replace(tzinfo=ZoneInfo(tz_name))
    except (ValueError, KeyError, IndexError) as e:
        raise BarRequestError(f"Invalid endDateTime {text!r}") from e


def _normal(seed: int, key: str, size: str, stamp: str) -> tuple[float, float, float]:
    """Three deterministic standard normals for one bar of one instrument (Box-Muller on a hash)."""
    digest = hashlib.blake2b(f"{seed}|{key}|{size}|{stamp}".encode(), digest_size=24).digest()
    a, b, c = struct.unpack(">QQQ", digest)
    u1 = (a + 1) / 2**64
    u2 = b / 2**64
    u3 = (c + 1) / 2**64
    r = math.sqrt(-2 * math.log(u1))
    return r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2), u3


def bar_times(inst: Instrument, end: dt.datetime, duration: tuple[int, str], size: tuple[int, str], use_rth: bool):
    """The start times (aware, exchange time zone) of the bars in the window, oldest first."""
    n, unit = duration
    seconds, kind = size
    tz = ZoneInfo(time_zone_of(inst))
    end_local = end.astimezone(tz)
    if kind in ("day", "week", "month"):
        days_back = n * {"S": 1 / 86400, "D": 1, "W": 7, "M": 30, "Y": 365}[unit]
        if unit == "D":
            # 'N D' means N trading days
            out: list[dt.datetime] = []
            d = end_local.date()
            while len(out) < n:
                if d.weekday() < 5:
                    out.append(dt.datetime.combine(d, dt.time(), tz))
                d -= dt.timedelta(days=1)
            return list(reversed(out))
        start = end_local.date() - dt.timedelta(days=math.ceil(days_back) - 1)
        out = []
        d = start
        while d <= end_local.date():
            if d.weekday() < 5:
                out.append(dt.datetime.combine(d, dt.time(), tz))
            d += dt.timedelta(days=1)
        return out
    if unit == "D":
        # 'N D' means the last N trading days, the one in progress included
        d = end_local.date()
        days: list[dt.date] = []
        while len(days) < n:
            if d.weekday() < 5:
                days.append(d)
            d -= dt.timedelta(days=1)
        start = dt.datetime.combine(days[-1], dt.time(), tz)
    else:
        start = end_local - dt.timedelta(seconds=n * DURATION_SECONDS[unit])
    session = None
    if use_rth or inst.secType == "STK":
        cal = CALENDARS.get(calendar_of(inst))
        if cal:
            session = cal[1] if use_rth else cal[2]
    epoch = int(start.timestamp()) // seconds * seconds
    out = []
    t = epoch
    stop = end_local.timestamp()
    while t < stop:
        local = dt.datetime.fromtimestamp(t, tz)
        if local.weekday() < 5:
            hhmm = local.strftime("%H%M")
            if session is None or session[0] <= hhmm < session[1]:
                out.append(local)
            elif hhmm < session[0]:
                # a bar straddling the session start begins at the open, as IB labels it (09:30 for 1 hour bars)
                opening = local.replace(hour=int(session[0][:2]), minute=int(session[0][2:]))
                if local.timestamp() + seconds > opening.timestamp():
                    out.append(opening)
        if len(out) > MAX_BARS:
            raise BarRequestError("Historical Market Data Service error message:Too many bars requested")
        t += seconds
    return out


def make_bars(
    inst: Instrument,
    seed: int,
    end_text: str,
    duration_text: str,
    size_text: str,
    use_rth: bool,
    format_date: int,
    now: dt.datetime,
    what_to_show: str,
) -> list[Bar]:
    """Bars ending at the instrument's current price; each bar's move is a hash of (seed, symbol, size, time)."""
    size = parse_bar_size(size_text)
    duration = parse_duration(duration_text)
    end = parse_end(end_text, now)
    if size[1] != "intraday" and inst.spec.bars:
        return _scenario_bars(inst, end, duration)
    daily_size = (86400, "day")
    times = bar_times(inst, end, duration, daily_size if size[1] != "intraday" else size, use_rth)
    if not times:
        return []
    seconds = size[0] if size[1] == "intraday" else 86400
    sigma = inst.spec.histVolatility * math.sqrt(min(seconds, 23400) / 23400 / 252)
    size_key = str(seconds)
    moves = []
    for t in times:
        stamp = t.strftime("%Y%m%d%H%M%S")
        z1, z2, u = _normal(seed, inst.key, size_key, stamp)
        moves.append((z1, z2, u))
    # walk backwards from the current price so the newest bar closes at the market
    closes = [0.0] * len(times)
    price = inst.price
    for i in range(len(times) - 1, -1, -1):
        closes[i] = price
        price = price / math.exp(sigma * moves[i][0] - 0.5 * sigma * sigma)
    bars: list[Bar] = []
    prev = price
    tz = ZoneInfo(time_zone_of(inst))
    base_volume = {"CASH": 0.0, "FUT": 1_500_000.0}.get(inst.secType, 5_000_000.0)
    for i, t in enumerate(times):
        z1, z2, u = moves[i]
        o = prev
        c = closes[i]
        wiggle = abs(z2) * sigma * 0.5
        h = max(o, c) * (1 + wiggle)
        lo = min(o, c) * (1 - wiggle * (0.5 + u))
        o, h, lo, c = (round_tick(x, inst.tick) for x in (o, h, lo, c))
        h = max(h, o, c)
        lo = min(lo, o, c)
        if size[1] == "intraday":
            volume = round(base_volume * seconds / 23400 * (0.5 + u))
            if format_date == 2:
                date = str(int(t.timestamp()))
            else:
                date = t.astimezone(tz).strftime("%Y%m%d %H:%M:%S ") + time_zone_of(inst)
        else:
            volume = round(base_volume * (0.5 + u))
            date = t.strftime("%Y%m%d")
        if what_to_show.upper() != "TRADES" or inst.secType == "CASH":
            volume = -1
        count = max(1, int(volume // 100)) if volume > 0 else -1
        wap = round_tick((o + h + lo + c) / 4, inst.tick)
        bars.append(Bar(date, o, h, lo, c, float(volume), wap, count))
        prev = closes[i]
    if size[1] in ("week", "month"):
        bars = _aggregate(bars, size)
    return bars


def _aggregate(daily: list[Bar], size: tuple[int, str]) -> list[Bar]:
    n, kind = size
    groups: dict[tuple[int, int], list[Bar]] = {}
    for b in daily:
        d = dt.datetime.strptime(b.date, "%Y%m%d").date()
        if kind == "week":
            iso = d.isocalendar()
            key = (iso[0], (iso[1] - 1) // n)
        else:
            key = (d.year, (d.month - 1) // n)
        groups.setdefault(key, []).append(b)
    out = []
    for bars in groups.values():
        volume = sum(b.volume for b in bars) if bars[0].volume >= 0 else -1.0
        out.append(
            Bar(
                bars[0].date,
                bars[0].open,
                max(b.high for b in bars),
                min(b.low for b in bars),
                bars[-1].close,
                volume,
                bars[-1].wap,
                sum(max(b.count, 0) for b in bars) or -1,
            )
        )
    return out


def _scenario_bars(inst: Instrument, end: dt.datetime, duration: tuple[int, str]) -> list[Bar]:
    n, unit = duration
    last = end.astimezone(ZoneInfo(time_zone_of(inst))).strftime("%Y%m%d")
    rows = [b for b in inst.spec.bars if b["date"] <= last]
    if unit == "D":
        rows = rows[-n:]
    else:
        first = (end - dt.timedelta(seconds=n * DURATION_SECONDS[unit])).strftime("%Y%m%d")
        rows = [b for b in rows if b["date"] > first]
    out = []
    for b in rows:
        volume = float(b.get("volume", 0))
        wap = (b["open"] + b["high"] + b["low"] + b["close"]) / 4
        out.append(Bar(b["date"], b["open"], b["high"], b["low"], b["close"], volume, wap, max(1, int(volume // 100))))
    return out


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
