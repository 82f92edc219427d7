"""The simulated gateway's clock: what "now" is for hours, history, executions and the handshake.

A real gateway's clock is the wall clock. Tests need another one: a given Wednesday, a Saturday, a holiday, a month
end, so that nothing they check depends on the day they happen to run. The clock runs at real speed from the
instant it was set to (a frozen clock would give every execution the same time), and `set`/`advance` move it
forward or back, as a day roll does.
"""

from __future__ import annotations

import datetime as dt
import time
from zoneinfo import ZoneInfo

UTC = dt.UTC


class SimClock:
    """Wall-clock time shifted by an offset; the offset is zero unless a start instant was given."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._offset = 0.0
        if start is not None:
            self.set(start)

    @property
    def simulated(self) -> bool:
        """True when the clock was set: it then tells a time other than the wall clock's."""
        return self._offset != 0.0

    def time(self) -> float:
        """Seconds since the epoch, like `time.time()`."""
        return time.time() + self._offset

    def now(self, tz: str | dt.tzinfo = UTC) -> dt.datetime:
        zone = ZoneInfo(tz) if isinstance(tz, str) else tz
        return dt.datetime.fromtimestamp(self.time(), zone)

    def set(self, when: dt.datetime) -> None:
        if when.tzinfo is None:
            raise ValueError(f"the clock needs an aware time (with its offset or zone), not {when.isoformat()}")
        self._offset = when.timestamp() - time.time()

    def advance(self, seconds: float) -> None:
        self._offset += seconds


def parse_instant(text: str) -> dt.datetime:
    """An ISO 8601 instant with its offset, e.g. 2026-11-25T11:00:00-05:00 or 2026-11-25T16:00:00Z."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (write e.g. 2026-11-25T11:00:00-05:00)")
    return when
