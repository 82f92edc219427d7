"""Issue 15, gaps 8 and 9 from the consumer's side: IB Gateway answers one reqCurrentTime a second, and start-ups
can be slow or stall. Through Pub/Sub, ibsim and the consumer (HEARTBEAT_SECONDS=1 in tests)."""

from __future__ import annotations

from datetime import datetime

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
