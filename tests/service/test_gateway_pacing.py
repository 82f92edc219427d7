"""Issue 15, gaps 8 and 9 from the consumer's side: IB Gateway answers one reqCurrentTime a second, and start-ups
can be slow or stall. Through Pub/Sub, ibsim and the consumer (HEARTBEAT_SECONDS=1 in tests)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.support import Bus


def test_concurrent_pings_beside_the_heartbeat_are_all_answered(consumer, bus: Bus, gateway) -> None:
    """Ping, the heartbeat and the clock-offset read share one current-time request; a second one within a second
    would go unanswered by the gateway (the ping then fails after 10 s, or the heartbeat reconnects)."""
    message_ids = [bus.publish({"intent": "ping"}) for _ in range(4)]
    replies = bus.replies_to_all(message_ids, timeout=30)
    for message_id in message_ids:
        assert [r["status"] for r in replies[message_id]] == ["ok"], replies[message_id]
        result = replies[message_id][0]["result"]
        assert datetime.fromisoformat(result["gatewayTime"]).tzinfo is not None
        assert result["connections"] == 1  # no heartbeat miss made it reconnect
    assert gateway.connected_client_ids() == [1]


@pytest.mark.slow
def test_a_slow_startup_connects_once_without_timing_out(consumer_factory, bus: Bus, gateway) -> None:
    """Completed orders take 8 s: within IB_CONNECT_TIMEOUT (10 s, per start-up request in ib_insync), so one
    connect, no retry, and no second session."""
    gateway.stall_request("reqCompletedOrders", 8)
    c = consumer_factory(ib_connect_timeout=10.0)
    counters = c.service.metrics.snapshot()["counters"]
    assert counters["gatewayConnects"] == {"": 1}
    assert "gatewayStartupTimeouts" not in counters
    assert gateway.connected_client_ids() == [1]
    reply = bus.reply_to(bus.publish({"intent": "ping"}))
    assert reply["status"] == "ok"
    assert reply["result"]["connections"] == 1


def test_a_startup_request_never_answered_is_reported_and_retried(consumer_factory, bus: Bus, gateway) -> None:
    """ib_insync would log the timeout and carry on without the completed orders; the consumer hangs up and
    connects again (with backoff), and serves once a start-up is complete."""
    gateway.stall_request("reqCompletedOrders", 0)  # the first connect's request is never answered
    c = consumer_factory(ib_connect_timeout=2.0)
    counters = c.service.metrics.snapshot()["counters"]
    assert counters["gatewayStartupTimeouts"] == {"": 1}
    assert counters["gatewayConnects"] == {"": 1}
    assert gateway.connected_client_ids() == [1]
    assert bus.reply_to(bus.publish({"intent": "ping"}))["status"] == "ok"


@pytest.mark.slow(seconds=15)
def test_a_late_heartbeat_answer_while_the_gateway_keeps_answering_is_no_reason_to_reconnect(
    consumer, bus: Bus, gateway
) -> None:
    """A 1,000-order rebalance queues hundreds of messages in ib_insync's 45/s throttle, and the heartbeat's
    current-time request waits behind them while fills and statuses keep coming in: the consumer took the late
    answer for a dead socket and reconnected in the middle of placing. Here the gateway answers current time 12 s
    late (two heartbeats' budget) while summaries keep it busy answering."""
    gateway.stall_request("reqCurrentTime", 12)
    stalled = time.monotonic()
    replies = []
    while time.monotonic() - stalled < 13:
        replies.append(bus.reply_to(bus.publish({"intent": "summary"})))
    assert [r["status"] for r in replies] == ["ok"] * len(replies)
    counters = consumer.service.metrics.snapshot()["counters"]
    assert counters["gatewayConnects"] == {"": 1}
    assert "gatewayDisconnects" not in counters
    ping = bus.reply_to(bus.publish({"intent": "ping"}))
    assert ping["status"] == "ok", ping
    assert ping["result"]["connections"] == 1
    assert gateway.connected_client_ids() == [1]
