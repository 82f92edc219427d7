"""Historical bars: IB's bar sizes and durations, and deterministic bars from a seeded model (or a scenario's).

The newest bar closes at the instrument's current price, and the same seed gives the same bars.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import struct
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from .market import (
    CALENDARS,
    NEW_YORK,
    UTC,
    Instrument,
    Span,
    calendar_of,
    is_trading_day,
    labelled_session,
    round_tick,
    time_zone_of,
)

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
TOO_MANY_BARS = "Too many bars requested"
# IB's daily history reaches back decades at most: a longer window is cut at 50 years (and then at the listing), so a
# duration no date can hold is answered with what there is instead of overflowing the date arithmetic.
MAX_DAYS_BACK = 50 * 365
# IB's text (ib_async issue 229): an 'N D' duration over a year is refused with 321.
DAYS_OVER_A_YEAR = (
    "Error validating request.-'bH' : cause - Historical data requests for durations longer than 365 days must be "
    "made in years."
)
# IB's bar sizes; any other gets 321 "Error validating request:-'bS' : cause - Historical data bar size setting is
# invalid. Legal ones are: 1 secs, 5 secs, ... 1 day, 1W, 1M" (IB Gateway's text).
LEGAL_BAR_SIZES = (
    "1 secs, 5 secs, 10 secs, 15 secs, 30 secs, 1 min, 2 mins, 3 mins, 5 mins, 10 mins, 15 mins, 20 mins, 30 mins, "
    "1 hour, 2 hours, 3 hours, 4 hours, 8 hours, 1 day, 1W, 1M"
)
BAR_SIZE_SPELLINGS = {"1 sec": "1 secs", "1 mins": "1 min", "1 hours": "1 hour", "1 week": "1W", "1 month": "1M"}


def legal_bar_size(text: str) -> bool:
    size = " ".join(text.split())
    return BAR_SIZE_SPELLINGS.get(size, size) in LEGAL_BAR_SIZES.split(", ")


class BarRequestError(ValueError):
    """A historical-data request IB would refuse (bar size, duration, what to show); the message is IB's text."""

    pass


@dataclass
class Bar:
    """One historical bar as the TWS API sends it (date, OHLC, volume, WAP, trade count)."""

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
    parts = {"1W": "1 week", "1M": "1 month"}.get(text.strip(), text).strip().split()
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


def under_a_minute(text: str) -> bool:
    """Bars IB's historical pacing rules still hold for (a legal bar size)."""
    seconds, kind = parse_bar_size(text)
    return kind == "intraday" and seconds < 60


def parse_duration(text: str) -> tuple[int, str]:
    parts = text.strip().split()
    if len(parts) != 2 or not parts[0].isdigit() or parts[1].upper() not in DURATION_SECONDS:
        raise BarRequestError(f"Invalid duration {text!r}: use an integer and one of S D W M Y")
    n = int(parts[0])
    if n <= 0:
        raise BarRequestError(f"Invalid duration {text!r}")
    return n, parts[1].upper()


def days_over_a_year(duration: tuple[int, str]) -> bool:
    n, unit = duration
    return unit == "D" and n > 365


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


class _Sessions:
    """An instrument's trading days and sessions as its bars count them, up to `end` (in exchange time)."""

    def __init__(self, inst: Instrument, end: dt.datetime) -> None:
        self.inst = inst
        self.tz = ZoneInfo(time_zone_of(inst))
        self.end = end.astimezone(self.tz)
        self.regular = calendar_of(inst) in CALENDARS
        self._spans: dict[tuple[dt.date, bool], Span | None] = {}

    def session(self, d: dt.date, rth: bool) -> Span | None:
        """The session labelled `d` (IDEALPRO's and CME Globex's open the evening before), its liquid hours if
        `rth`."""
        if (d, rth) not in self._spans:
            self._spans[d, rth] = labelled_session(self.inst, "regular", d, rth)
        return self._spans[d, rth]

    def held(self, d: dt.date) -> bool:
        """A trading day whose session had opened by `end` (a stock's regular session, the whole session else)."""
        if not is_trading_day(self.inst, d):
            return False
        if d < self.end.date():
            return True
        opened = self.session(d, self.regular)
        return opened is not None and opened[0] <= self.end

    def last_held(self, n: int) -> list[dt.date]:
        """The last `n` days held, newest first."""
        days: list[dt.date] = []
        d = self.end.date()
        while len(days) < n:
            if self.held(d):
                days.append(d)
            d -= dt.timedelta(days=1)
        return days

    def midnight(self, d: dt.date) -> dt.datetime:
        return dt.datetime.combine(d, dt.time(), self.tz)


def bar_times(
    inst: Instrument, end: dt.datetime, duration: tuple[int, str], size: tuple[int, str], use_rth: bool
) -> list[dt.datetime]:
    """The start times (aware, exchange time zone) of the bars in the window, oldest first.

    Sessions are counted as IB counts them: exchange holidays have no bar, early closes end early, and a session
    that has not opened by `end` has no bar yet and is not one of the last 'N D'.
    """
    n, unit = duration
    seconds, kind = size
    sessions = _Sessions(inst, end)
    if kind in ("day", "week", "month"):
        return _daily_times(sessions, n, unit)
    if unit == "D":
        # 'N D' means the last N sessions that have opened, the one in progress included (from its start: forex and
        # futures sessions open the evening before the day they are labelled with)
        first = sessions.last_held(n)[-1]
        span = sessions.session(first, use_rth)
        start = span[0] if span is not None else sessions.midnight(first)
    else:
        if n * DURATION_SECONDS[unit] > 7 * MAX_BARS * seconds:
            # Sessions fill at least a seventh of the calendar (6.5 h on weekdays): a window holding seven times
            # MAX_BARS slots holds more than MAX_BARS bars, refused now rather than after walking every slot.
            raise BarRequestError(TOO_MANY_BARS)
        start = sessions.end - dt.timedelta(seconds=n * DURATION_SECONDS[unit])
    return _intraday_times(sessions, start, seconds, use_rth)


def _daily_times(sessions: _Sessions, n: int, unit: str) -> list[dt.datetime]:
    if unit == "D":  # 'N D' means N trading days
        return [sessions.midnight(d) for d in reversed(sessions.last_held(n))]
    days_back = min(n * {"S": 1 / 86400, "D": 1, "W": 7, "M": 30, "Y": 365}[unit], MAX_DAYS_BACK)
    last = sessions.end.date()
    start = last - dt.timedelta(days=math.ceil(days_back) - 1)
    days = (start + dt.timedelta(days=i) for i in range((last - start).days + 1))
    return [sessions.midnight(d) for d in days if sessions.held(d)]


def _intraday_times(sessions: _Sessions, start: dt.datetime, seconds: int, use_rth: bool) -> list[dt.datetime]:
    out: list[dt.datetime] = []
    t = int(start.timestamp()) // seconds * seconds
    stop = sessions.end.timestamp()
    while t < stop:
        bar = _session_bar(sessions, dt.datetime.fromtimestamp(t, sessions.tz), seconds, use_rth)
        if bar is not None:
            out.append(bar)
        if len(out) > MAX_BARS:
            raise BarRequestError(TOO_MANY_BARS)
        t += seconds
    return out


def _session_bar(sessions: _Sessions, local: dt.datetime, seconds: int, use_rth: bool) -> dt.datetime | None:
    """The start of the bar beginning at `local`, or None outside the sessions (the liquid hours if `use_rth`; a
    forex or futures session that opened the evening before is the next day's)."""
    spans = [s for d in (local.date(), local.date() + dt.timedelta(days=1)) if (s := sessions.session(d, use_rth))]
    if any(span[0] <= local < span[1] for span in spans):
        return local
    for span in spans:
        if local < span[0] and local.timestamp() + seconds > span[0].timestamp():
            # a bar straddling the session start begins at the open, as IB labels it (09:30 for 1 hour bars)
            return span[0]
    return None


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
    times = _since_listing(inst, bar_times(inst, end, duration, daily_size if size[1] != "intraday" else size, use_rth))
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


def _since_listing(inst: Instrument, times: list[dt.datetime]) -> list[dt.datetime]:
    return [t for t in times if t.strftime("%Y%m%d") >= inst.spec.listed]


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
    rows = [b for b in inst.spec.bars if inst.spec.listed <= b["date"] <= last]
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
