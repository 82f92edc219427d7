"""One reply per message when the stranded-request sweep answered a request whose message then comes back (a
consumer down longer than the sweep's wait; its redelivery nacked as running elsewhere while the sweep held the
claim). Found by an independent review of recovery; failed before its fix. Checked at the broker by orderRef."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support import (
    STANDBY,
    Bus,
    ConsumerProcess,
    allocation,
    another_intents_subscription,
    holdings,
    mode_document,
    stock_positions,
    wait_for,
    write_config,
)


def _booked(project: str) -> dict[str, float]:
    return holdings(project).get("dummy", {})


CLOSE_ALL = {"intent": "close-all", "params": {"strategies": ["dummy"]}}


def replies_with(bus: Bus, message_id: str, timeout: float) -> list[dict[str, Any]]:
    """Every reply to `message_id` received until `timeout` seconds pass with nothing new for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bus.settle(quiet=0.5)
    return [r for r in bus.received if r["messageId"] == message_id]


@pytest.mark.slow(seconds=90)
@pytest.mark.timeout(300)
def test_a_close_all_the_sweep_answered_gets_no_second_reply_when_its_message_comes_back(
    consumer_factory, bus: Bus, gateway, project: str, tmp_path
):
    """Decision 8: the sweep answers a request whose process died and whose message did not come back, stores that
    reply `done` and publishes it (replyPending false: known published). Pub/Sub is at-least-once, and the message
    can still come back afterwards: a consumer that was down longer than STRANDED_AFTER_SECONDS restarts, and its
    start-up sweep and the redelivery race for the claim (when the sweep adopts first, the redelivery is nacked as
    running elsewhere and comes back once the claim is done). The redelivery of that very message then finds the
    claim done and republishes the stored reply: the message gets a second reply. Here the message is kept from the
    sweeping consumer (it reads a subscription made after the publish) and handed to the next one afterwards."""
    write_config(project)
    first = ConsumerProcess(project, gateway.port, tmp_path / "first.log", ORDER_TIMEOUT_SECONDS="120")
    try:
        first.wait_ready()
        bought = bus.reply_to(bus.publish(allocation({"SPY": 0.05})), timeout=60)
        assert bought["status"] == "ok", bought
        wait_for(lambda: _booked(project) == stock_positions(gateway), what="the buy booked to dummy")
        standby = another_intents_subscription(project, STANDBY)  # holds its own copy of the close-all
        gateway.hold_fills(True)
        message_id = bus.publish(CLOSE_ALL)
        wait_for(lambda: any(o["action"] == "SELL" for o in gateway.orders()), timeout=60, what="the sell placed")
        first.kill()
    finally:
        first.stop()
    (sell,) = [o for o in gateway.orders() if o["action"] == "SELL"]

    # No copy of the close-all on this one: the request is stranded, and the sweep answers it.
    sweeper = consumer_factory(
        intents_subscription=another_intents_subscription(project, "intents-consumer-sweeper"), stranded_after=2.0
    )
    answered = bus.reply_to(message_id, timeout=60)
    assert (answered["recovered"], answered["error"]["code"]) == (True, "interrupted"), answered
    claim = wait_for(lambda: (c := _claim(project)).get("replyPending") is False and c, what="the reply published")
    assert claim["state"] == "done"
    sweeper.stop()

    consumer_factory(intents_subscription=standby)  # the message comes back
    replies = replies_with(bus, message_id, timeout=25)
    assert len(replies) == 1, f"{len(replies)} replies to one message: " + "; ".join(
        f"recovered={r.get('recovered')} duplicate={r.get('duplicate')}" for r in replies
    )
    assert [o["orderRef"] for o in gateway.orders() if o["action"] == "SELL"] == [sell["orderRef"]]


def _claim(project: str) -> dict[str, Any]:
    (claim,) = [
        d.to_dict() or {}
        for d in mode_document(project).collection("requests").stream()
        if (d.to_dict() or {}).get("intent") == "close-all"
    ]
    return claim
