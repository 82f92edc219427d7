"""Market hours from IB's liquidHours strings, both formats, in the contract's time zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumer.broker.hours import closed_reason, good_after, is_open, next_open, sessions

NEW = "20261123:0930-20261123:1600;20261124:0930-20261124:1600;20261126:CLOSED;20261127:0930-20261127:1300"
OLD = "20261123:0930-1600;20261126:CLOSED;20261127:0930-1300"


@pytest.mark.parametrize("hours", [NEW, OLD])
@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        (datetime(2026, 11, 23, 14, 29, tzinfo=UTC), False),  # 09:29 New York
        (datetime(2026, 11, 23, 14, 30, tzinfo=UTC), True),  # the open
        (datetime(2026, 11, 23, 20, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 23, 21, 0, tzinfo=UTC), False),  # the close
        (datetime(2026, 11, 26, 16, 0, tzinfo=UTC), False),  # Thanksgiving
        (datetime(2026, 11, 27, 17, 59, tzinfo=UTC), True),  # half day, before 13:00
        (datetime(2026, 11, 27, 18, 1, tzinfo=UTC), False),  # half day, after
        (datetime(2026, 11, 28, 16, 0, tzinfo=UTC), False),  # Saturday: not listed at all
    ],
)
def test_open_and_closed(hours: str, utc: datetime, expected: bool) -> None:
    assert is_open(hours, "US/Eastern", utc) is expected


def test_overnight_session_in_the_old_format() -> None:
    ((start, end),) = sessions("20261123:1700-1600", "US/Central")
    assert (end - start).total_seconds() == 23 * 3600


def test_every_day_closed_means_closed() -> None:
    assert not is_open("20261123:CLOSED;20261124:CLOSED", "US/Eastern", datetime(2026, 11, 23, 15, tzinfo=UTC))


@pytest.mark.parametrize("hours", [NEW, OLD])
@pytest.mark.parametrize(
    ("utc", "opens"),
    [
        (datetime(2026, 11, 23, 13, 0, tzinfo=UTC), "2026-11-23 09:30"),  # Monday before the open
        (datetime(2026, 11, 26, 16, 0, tzinfo=UTC), "2026-11-27 09:30"),  # Thanksgiving: the half day next
        (datetime(2026, 11, 27, 18, 30, tzinfo=UTC), None),  # after the early close: nothing more listed
    ],
)
def test_next_open_skips_holidays(hours: str, utc: datetime, opens: str | None) -> None:
    found = next_open(hours, "America/New_York", utc)
    assert (found and f"{found:%Y-%m-%d %H:%M}") == opens


def test_closed_reason_names_the_next_open_in_the_contracts_zone() -> None:
    on_thanksgiving = datetime(2026, 11, 26, 16, 0, tzinfo=UTC)
    assert (
        closed_reason("SPY", NEW, "America/New_York", on_thanksgiving)
        == "SPY (opens 2026-11-27 09:30 America/New_York)"
    )
    assert closed_reason("SPY", "20261126:CLOSED", "America/New_York", on_thanksgiving) == (
        "SPY (no session in the hours the broker gave)"
    )


def test_a_good_after_time_is_read_in_its_own_zone_else_the_contracts() -> None:
    assert good_after("20261207 09:35:00 US/Eastern", "Europe/London") == datetime(2026, 12, 7, 14, 35, tzinfo=UTC)
    assert good_after("20261207 09:35:00", "Europe/London") == datetime(2026, 12, 7, 9, 35, tzinfo=UTC)


@pytest.mark.parametrize(
    "zone",
    ["America", "US", "Etc", "Nowhere/Land", "America/", "/etc/localtime", "../UTC"],
    ids=["folder-America", "folder-US", "folder-Etc", "unknown", "trailing-slash", "absolute", "parent"],
)
def test_a_good_after_time_whose_zone_is_not_one_is_no_time(zone: str) -> None:
    """ZoneInfo refuses such names three ways (KeyError, ValueError, and IsADirectoryError for a folder of the tz
    database, which escaped and failed the intent as transient on every delivery): each is no time at all."""
    assert good_after(f"20261207 09:35:00 {zone}", "America/New_York") is None
