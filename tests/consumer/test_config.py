"""Settings come from the environment; a bad value stops start-up naming the variable."""

from __future__ import annotations

import pytest

from consumer.config import ConfigError, Settings


def test_defaults_are_the_documented_ones() -> None:
    s = Settings.from_env({})
    assert (s.project, s.trading_mode) == ("local-project", "paper")
    assert (s.ib_host, s.ib_port, s.ib_client_id) == ("127.0.0.1", 4002, 1)
    assert (s.intents_topic, s.intents_subscription) == ("intents", "intents-consumer")
    assert (s.reply_topic, s.dead_letter_topic) == ("intent-replies", "intents-dead-letter")
    assert (s.allow_live, s.leverage_cap_max) == (False, 1.0)  # live refused, gross exposure at most 1x
    assert s.health_host == "127.0.0.1"  # the health endpoint is not reachable from other hosts unless asked


def test_values_are_parsed() -> None:
    s = Settings.from_env({"IB_PORT": "4001", "TRADING_MODE": "LIVE", "ORDER_TIMEOUT_SECONDS": "2.5"})
    assert s.ib_port == 4001
    assert s.trading_mode == "live"
    assert s.order_timeout == 2.5
    s = Settings.from_env({"ALLOW_LIVE": "yes", "LEVERAGE_CAP_MAX": "1.5", "HEALTH_HOST": "0.0.0.0"})
    assert (s.allow_live, s.leverage_cap_max, s.health_host) == (True, 1.5, "0.0.0.0")
    # A busy account's completed orders take seconds: the order lookup's bound is the deployment's to set.
    assert Settings.from_env({}).order_lookup_timeout == 60.0
    assert Settings.from_env({"ORDER_LOOKUP_TIMEOUT_SECONDS": "120"}).order_lookup_timeout == 120.0
    with pytest.raises(ConfigError, match="ORDER_LOOKUP_TIMEOUT_SECONDS"):
        Settings.from_env({"ORDER_LOOKUP_TIMEOUT_SECONDS": "1"})


@pytest.mark.parametrize(
    ("variable", "field", "default", "value", "too_small", "too_large"),
    [
        ("HISTORY_TIMEOUT_SECONDS", "history_timeout", 60.0, "120", "1", "601"),
        ("SNAPSHOT_TIMEOUT_SECONDS", "snapshot_timeout", 30.0, "45.5", "0.5", "601"),
        ("CLOSE_TIMEOUT_SECONDS", "close_timeout", 10.0, "20", "0", "301"),
    ],
)
def test_broker_and_shutdown_timeouts_are_settings(
    variable: str, field: str, default: float, value: str, too_small: str, too_large: str
) -> None:
    """Timeouts an operator may need to lengthen (a slow data farm, a slow store at shutdown) are bounded settings."""
    assert getattr(Settings.from_env({}), field) == default
    assert getattr(Settings.from_env({variable: value}), field) == float(value)
    for bad in (too_small, too_large, "soon"):
        with pytest.raises(ConfigError, match=variable):
            Settings.from_env({variable: bad})


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("IB_PORT", "forty", "expected a int"),
        ("IB_PORT", "70000", "between 1 and 65535"),
        ("TRADING_MODE", "demo", "paper, live"),
        ("MAX_DELIVERY_ATTEMPTS", "2", "between 5 and 100"),
        ("LOG_LEVEL", "LOUD", "DEBUG"),
        ("INTENTS_SUBSCRIPTION", "projects/x/subscriptions/y", "plain resource name"),
        ("SCHEDULE_TIME_ZONE", "Mars/Olympus", "IANA time zone"),
        ("ALLOW_LIVE", "maybe", "yes or no"),
        ("LEVERAGE_CAP_MAX", "11", "between 0.01 and 10"),
        ("HEALTH_HOST", "localhost; rm", "IP address"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        Settings.from_env({variable: value})
    assert str(e.value).startswith(f"{variable}=")
    assert fragment in str(e.value)
