"""The HEALTHCHECK: the gateway's API port accepts on localhost AND the consumer answers /livez.

The gateway is expected to be away for a minute or two every night (IBC's auto-restart) and longer on Sundays (cold
restart with a full login), so a closed API port only fails the check once it has stayed closed for longer than
HEALTH_GATEWAY_GRACE_SECONDS. Readiness (/readyz: connected and subscribed) is reported but never fails the check:
not-ready during the nightly restart is normal. A small state file remembers since when the port has been closed,
because every HEALTHCHECK run is a new process.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_GRACE_SECONDS = 900.0


@dataclass(frozen=True, slots=True)
class HealthReport:
    healthy: bool
    gateway_accepting: bool
    gateway_down_for: float | None
    consumer_live: bool
    consumer_ready: bool | None
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tcp_accepting(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 3.0) -> int | None:
    """The HTTP status of GET url, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return None


class DownSince:
    """Remembers, across processes, since when the gateway's port has been closed (a JSON file in memory)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> float | None:
        try:
            value = json.loads(self.path.read_text()).get("gateway_down_since")
        except (OSError, ValueError, AttributeError):
            return None
        return float(value) if isinstance(value, int | float) else None

    def write(self, since: float | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"gateway_down_since": since}))
        tmp.replace(self.path)


def check(
    api_port: int,
    health_port: int,
    state: DownSince,
    grace: float = DEFAULT_GRACE_SECONDS,
    host: str = "127.0.0.1",
    timeout: float = 3.0,
    clock: Callable[[], float] = time.time,
) -> HealthReport:
    now = clock()
    reasons: list[str] = []
    accepting = tcp_accepting(host, api_port, timeout)
    since = state.read()
    if accepting:
        if since is not None:
            state.write(None)
        down_for = None
    else:
        if since is None or since > now:
            since = now
            state.write(since)
        down_for = now - since
        if down_for > grace:
            reasons.append(f"gateway API port {api_port} closed for {down_for:.0f}s (grace {grace:.0f}s)")
    live = http_status(f"http://{host}:{health_port}/livez", timeout) == 200
    if not live:
        reasons.append(f"consumer /livez on port {health_port} is not answering 200")
    ready_status = http_status(f"http://{host}:{health_port}/readyz", timeout) if live else None
    ready = None if ready_status is None else ready_status == 200
    return HealthReport(
        healthy=not reasons,
        gateway_accepting=accepting,
        gateway_down_for=down_for,
        consumer_live=live,
        consumer_ready=ready,
        reasons=reasons,
    )
