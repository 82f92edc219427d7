"""Settings from environment variables, validated once at start-up.

Every variable has a documented default (README, "Configuration"); a bad value stops the process at start-up with
a message naming the variable, rather than surfacing as a strange failure on the first message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

T = TypeVar("T")

TradingMode = Literal["paper", "live"]


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The process's settings, one field per environment variable (`from_env`; the names are in `_VARIABLES`)."""

    project: str = "local-project"
    trading_mode: TradingMode = "paper"

    ib_host: str = "127.0.0.1"
    ib_port: int = 4002
    ib_client_id: int = 1
    # The accounts this deployment serves (IB_ACCOUNTS, or IB_ACCOUNT for one); `accounts` is the list to use.
    ib_account: str = ""
    ib_accounts: tuple[str, ...] = ()
    # Every account of every deployment, with aliases (consumer.accounts); empty: only the ones served here.
    accounts_file: str = ""
    # The one deployment that answers messages addressed to no account, or to an account nobody serves.
    default_deployment: bool = True
    ib_connect_timeout: float = 10.0
    # The longest wait between connect attempts (exponential backoff up to it): past IB Gateway's nightly restart
    # the consumer keeps trying at this pace, no faster (repeated API logins are cheap; the gateway's own is not).
    reconnect_backoff_max: float = 15.0
    # Reading every open and completed order and execution to find a request's orders by orderRef: a busy account's
    # completed orders take IB seconds to send, and a lookup cut short fails the intent (retried, never guessed).
    order_lookup_timeout: float = 60.0
    # A historical-bars request (a strategy's signal): IB answers from its farms, slower for long or many histories.
    history_timeout: float = 60.0
    # A market-data snapshot (prices and quotes for sizing and limit prices); an unanswered one fails the intent.
    snapshot_timeout: float = 30.0

    # The live guard's ceilings, from the deployment (not from Firestore, which the consumer itself may write):
    # config/{mode} can only tighten them.
    allow_live: bool = False
    leverage_cap_max: float = 1.0

    intents_topic: str = "intents"
    intents_subscription: str = "intents-consumer"
    reply_topic: str = "intent-replies"
    dead_letter_topic: str = "intents-dead-letter"
    max_delivery_attempts: int = 5

    max_messages: int = 20
    intent_timeout: float = 300.0
    order_timeout: float = 30.0
    max_lease_duration: float = 3600.0
    lease_extension: float = 10.0
    shutdown_grace: float = 30.0
    # Closing the broker connection and the store at shutdown, after the grace period: past it, the process exits
    # anyway (bookings still queued are made by the sweep after the next connect).
    close_timeout: float = 10.0
    claim_lease: float = 30.0
    # A claim whose lease ran out this long ago, with no redelivery since, is finished from the broker's record.
    stranded_after: float = 900.0
    # Quiet this long, publish a probe; not delivered within twice as long, readiness says delivery stalled (0: off).
    delivery_probe: float = 60.0
    trading_max_age: float = 3600.0
    schedule_time_zone: str = "America/New_York"
    heartbeat_interval: float = 10.0
    # A "heartbeat" log line this often, with the gateway's state: the alerts on silence and on a long disconnect.
    heartbeat_log_interval: float = 60.0
    health_port: int = 8080
    # Loopback unless the deployment says otherwise: the container sets 0.0.0.0 (its network namespace is private).
    health_host: str = "127.0.0.1"

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var, parse = _VARIABLES[f.name]
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = parse(raw.strip())
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{var}={raw!r}: {e}") from None
        return cls(**values)

    @property
    def accounts(self) -> tuple[str, ...]:
        """The accounts served, in declared order: IB_ACCOUNTS, else IB_ACCOUNT, else none (learned nowhere: the
        consumer refuses to serve without one, since its books are keyed by account)."""
        if self.ib_accounts:
            return self.ib_accounts
        return (self.ib_account,) if self.ib_account else ()

    @property
    def account(self) -> str:
        """The first account served: the one a single-account deployment trades and connects for."""
        return self.accounts[0] if self.accounts else ""

    def describe(self) -> dict[str, Any]:
        """Settings as loggable data (there are no secrets here: the IB login lives with the gateway)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def _bounded(kind: Callable[[str], T], low: float, high: float) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"expected a {kind.__name__}") from None
        if not low <= value <= high:  # type: ignore[operator]
            raise ValueError(f"expected a value between {low:g} and {high:g}")
        return value

    return parse


def _name(raw: str) -> str:
    if not raw or any(c.isspace() or c == "/" for c in raw):
        raise ValueError("expected a plain resource name (no spaces or slashes)")
    return raw


def _account_list(raw: str) -> tuple[str, ...]:
    accounts = tuple(a.strip() for a in raw.split(",") if a.strip())
    if not accounts:
        raise ValueError("expected a comma-separated list of IB account ids")
    for a in accounts:
        _account_id(a)
    if len(set(accounts)) != len(accounts):
        raise ValueError("an account is listed twice")
    return accounts


def _account_id(raw: str) -> str:
    # Account ids become Firestore path segments: letters, digits, "-" and "_" only.
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", raw):
        raise ValueError(f"{raw!r} is not an IB account id (letters, digits, - and _)")
    return raw


def _time_zone(raw: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("expected an IANA time zone such as America/New_York") from None
    return raw


def _yes_no(raw: str) -> bool:
    value = raw.lower()
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off"):
        return False
    raise ValueError("expected yes or no")


def _ip_address(raw: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError("expected an IP address such as 127.0.0.1 (0.0.0.0 listens on every interface)") from None


def _level(raw: str) -> str:
    value = raw.upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return value


_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "project": ("GOOGLE_CLOUD_PROJECT", _name),
    "trading_mode": ("TRADING_MODE", _choice("paper", "live")),
    "ib_host": ("IB_HOST", str),
    "ib_port": ("IB_PORT", _bounded(int, 1, 65535)),
    "ib_client_id": ("IB_CLIENT_ID", _bounded(int, 0, 2**31 - 1)),
    "ib_account": ("IB_ACCOUNT", _account_id),
    "ib_accounts": ("IB_ACCOUNTS", _account_list),
    "accounts_file": ("ACCOUNTS_FILE", str),
    "default_deployment": ("DEFAULT_DEPLOYMENT", _yes_no),
    "ib_connect_timeout": ("IB_CONNECT_TIMEOUT", _bounded(float, 0.5, 300)),
    "reconnect_backoff_max": ("RECONNECT_BACKOFF_MAX_SECONDS", _bounded(float, 0.5, 600)),
    "order_lookup_timeout": ("ORDER_LOOKUP_TIMEOUT_SECONDS", _bounded(float, 5, 600)),
    "history_timeout": ("HISTORY_TIMEOUT_SECONDS", _bounded(float, 5, 600)),
    "snapshot_timeout": ("SNAPSHOT_TIMEOUT_SECONDS", _bounded(float, 1, 600)),
    "allow_live": ("ALLOW_LIVE", _yes_no),
    "leverage_cap_max": ("LEVERAGE_CAP_MAX", _bounded(float, 0.01, 10)),
    "intents_topic": ("INTENTS_TOPIC", _name),
    "intents_subscription": ("INTENTS_SUBSCRIPTION", _name),
    "reply_topic": ("REPLY_TOPIC", _name),
    "dead_letter_topic": ("DEAD_LETTER_TOPIC", _name),
    "max_delivery_attempts": ("MAX_DELIVERY_ATTEMPTS", _bounded(int, 5, 100)),
    "max_messages": ("MAX_MESSAGES", _bounded(int, 1, 1000)),
    "intent_timeout": ("INTENT_TIMEOUT_SECONDS", _bounded(float, 1, 3600)),
    "order_timeout": ("ORDER_TIMEOUT_SECONDS", _bounded(float, 0.1, 3600)),
    "max_lease_duration": ("MAX_LEASE_SECONDS", _bounded(float, 10, 86400)),
    "lease_extension": ("LEASE_EXTENSION_SECONDS", _bounded(float, 10, 600)),
    "shutdown_grace": ("SHUTDOWN_GRACE_SECONDS", _bounded(float, 0, 600)),
    "close_timeout": ("CLOSE_TIMEOUT_SECONDS", _bounded(float, 1, 300)),
    "claim_lease": ("CLAIM_LEASE_SECONDS", _bounded(float, 0.5, 3600)),
    "stranded_after": ("STRANDED_AFTER_SECONDS", _bounded(float, 1, 7 * 86400)),
    "delivery_probe": ("DELIVERY_PROBE_SECONDS", _bounded(float, 0, 3600)),
    "trading_max_age": ("TRADING_MAX_AGE_SECONDS", _bounded(float, 1, 7 * 86400)),
    "schedule_time_zone": ("SCHEDULE_TIME_ZONE", _time_zone),
    "heartbeat_interval": ("HEARTBEAT_SECONDS", _bounded(float, 0.1, 600)),
    "heartbeat_log_interval": ("HEARTBEAT_LOG_SECONDS", _bounded(float, 0.1, 3600)),
    "health_port": ("HEALTH_PORT", _bounded(int, 0, 65535)),
    "health_host": ("HEALTH_HOST", _ip_address),
    "log_format": ("LOG_FORMAT", _choice("auto", "json", "console")),
    "log_level": ("LOG_LEVEL", _level),
}
