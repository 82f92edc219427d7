"""The consumer's health endpoint from outside (issue 13, item 13): where it listens and what /metrics may contain.

Real sockets against the real consumer service; the requests come through the Pub/Sub emulator.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any

import pytest

from tests.support import Bus, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def outward_address() -> str:
    """This machine's address on its default route (no packet is sent: connecting a UDP socket only routes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))
        except OSError:
            pytest.skip("no network interface besides loopback here")
        address = str(s.getsockname()[0])
    if address.startswith("127."):
        pytest.skip("no network interface besides loopback here")
    return address


def get_json(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status), json.loads(response.read())


def intent_counters(port: int) -> dict[str, int]:
    _, body = get_json(f"http://127.0.0.1:{port}/metrics.json")
    return dict(body["counters"].get("intents", {}))


def test_the_health_endpoint_listens_on_loopback_only_by_default(consumer_factory):
    port = free_port()
    consumer_factory(health_port=port)
    assert get_json(f"http://127.0.0.1:{port}/livez")[0] == 200
    address = outward_address()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, port), timeout=5).close()


def test_metrics_label_only_known_intents(consumer_factory, bus: Bus):
    port = free_port()
    consumer_factory(health_port=port)
    hostile = "../../etc/passwd"
    replies = [
        bus.reply_to(bus.publish({"intent": hostile})),
        bus.reply_to(bus.publish({"intent": hostile}, intent=hostile)),
        bus.reply_to(bus.publish({"intent": "ping"})),
    ]
    assert [r["status"] for r in replies] == ["error", "error", "ok"], replies

    counters = wait_for(
        lambda: (c := intent_counters(port)) and sum(c.values()) == 3 and c, what="three intents on /metrics"
    )
    # The body's name never decodes (no such intent), the attribute's is carried on the reply: neither is a label.
    assert [r["intent"] for r in replies] == [None, hostile, "ping"]
    assert counters == {"(none):error": 1, "unknown:error": 1, "ping:ok": 1}
    _, body = get_json(f"http://127.0.0.1:{port}/metrics.json")
    assert "passwd" not in json.dumps(body)
