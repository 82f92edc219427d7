"""Is an exchange open? From the contract's own trading hours, as IB Gateway reports them.

IB sends hours per contract (`liquidHours` for the regular session, `tradingHours` including extended hours), a
week or so ahead, holidays and half days included, in the contract's `timeZoneId`. That is better information
than a calendar library of ours would have, and costs no dependency. Two formats exist:
    new: "20231204:0930-20231204:1600;20231205:CLOSED"
    old: "20231204:0930-1600;20231205:CLOSED" (and several ranges per day separated by ",")
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

# IB's time zone ids are mostly IANA names, with a few of its own.
_ZONE_ALIASES = {
    "EST": "America/New_York",
    "EST5EDT": "America/New_York",
    "CST": "America/Chicago",
    "JST": "Asia/Tokyo",
}


def zone(time_zone_id: str) -> ZoneInfo:
    return ZoneInfo(_ZONE_ALIASES.get(time_zone_id, time_zone_id or "America/New_York"))


def sessions(hours: str, time_zone_id: str) -> list[tuple[datetime, datetime]]:
    """The open intervals in `hours`, as aware datetimes."""
    tz = zone(time_zone_id)
    out: list[tuple[datetime, datetime]] = []
    for day in filter(None, (part.strip() for part in hours.split(";"))):
        date, _, ranges = day.partition(":")
        if ranges.upper() == "CLOSED" or not ranges:
            continue
        for span in ranges.split(","):
            start, _, end = span.partition("-")
            begin = _point(date, start, tz)
            finish = _point(date, end, tz)
            if finish <= begin:  # an overnight session written in the old format
                finish += timedelta(days=1)
            out.append((begin, finish))
    return out


def is_open(hours: str, time_zone_id: str, now: datetime) -> bool:
    return any(start <= now < end for start, end in sessions(hours, time_zone_id))


def closes_at(hours: str, time_zone_id: str, now: datetime) -> datetime | None:
    """When the session open at `now` ends (None while none is)."""
    return next((end for start, end in sessions(hours, time_zone_id) if start <= now < end), None)


def next_open(hours: str, time_zone_id: str, now: datetime) -> datetime | None:
    """When the next session in `hours` after `now` starts (in the contract's zone); None if none is listed."""
    return min((start for start, _ in sessions(hours, time_zone_id) if start > now), default=None)


def good_after(text: str, time_zone_id: str) -> datetime | None:
    """An order's goodAfterTime in IB's format ('20261126 09:35:00 US/Eastern'; without a zone, the contract's)."""
    parts = text.split()
    if len(parts) < 2:
        return None
    try:
        local = datetime.strptime(f"{parts[0]} {parts[1]}", "%Y%m%d %H:%M:%S")
        return local.replace(tzinfo=zone(parts[2]) if len(parts) > 2 else zone(time_zone_id))
    except (ValueError, KeyError, OSError):
        # ZoneInfo's refusals: ZoneInfoNotFoundError (a KeyError) for a name it does not know, ValueError for one that
        # is not a relative path ('/etc', 'America/'), IsADirectoryError (an OSError) for a folder of the tz
        # database ('America', 'US', 'Etc').
        return None


def is_good_after_time(text: str) -> bool:
    """Whether `text` is a goodAfterTime an order can carry: IB's format, a real date and time, and a zone, if it
    names one, that is a time zone (the schemas check it as the format `ib-good-after-time`)."""
    return len(text.split()) <= 3 and good_after(text, "UTC") is not None


def closed_reason(symbol: str, hours: str, time_zone_id: str, now: datetime) -> str:
    """'SPY (opens 2026-11-27 09:30 America/New_York)': what a rejection names for a closed market."""
    opens = next_open(hours, time_zone_id, now)
    if opens is None:
        return f"{symbol} (no session in the hours the broker gave)"
    return f"{symbol} (opens {opens:%Y-%m-%d %H:%M} {opens.tzinfo})"


def _point(date: str, text: str, tz: ZoneInfo) -> datetime:
    if ":" in text:  # new format carries its own date
        date, _, text = text.partition(":")
    return datetime.strptime(f"{date}{text}", "%Y%m%d%H%M").replace(tzinfo=tz)
