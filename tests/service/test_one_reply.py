"""Every message gets exactly one reply (decisions 2, 36, 39, 48): never none, and a redelivery of a message this
process answered is acked without a second one. Failures an independent review found, each of which lost or
doubled a reply.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from consumer.intents import builtin_intents
from consumer.intents.base import Intent
from tests.support import QUIET, Bus, FirestoreFault, claim_of, mode_collection, wait_for

pytestmark = pytest.mark.usefixtures("paper_config")


@pytest.mark.slow(seconds=15)
@pytest.mark.timeout(120)
def test_a_reply_whose_store_committed_but_whose_answer_was_lost_is_still_published(
    consumer_factory, bus: Bus, project: str, monkeypatch
):
    """The commit that stores a reply with its claim reaches Firestore, but its answer is lost (a connection reset):
    the client library retries the commit (UNAVAILABLE is retried), and the retry meets the precondition the first
    commit just changed. The claim, done with this run's own reply, was taken for a takeover: the message acked,
    "its new owner replies", and no owner: no reply, ever."""
    proxy = FirestoreFault(os.environ["FIRESTORE_EMULATOR_HOST"], b"replyJson", "lose_answer")
    try:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", proxy.address)
        consumer_factory(stranded_after=1.0)  # a claim left running would be answered by the sweep at once
        monkeypatch.undo()  # the test's own clients talk to the emulator directly
        assert bus.reply_to(bus.publish({"intent": "ping"}))["status"] == "ok"  # all well through the proxy

        proxy.armed.set()
        message_id = bus.publish({"intent": "ping"})
        wait_for(proxy.fired.is_set, what="the reply's commit to go through the proxy")
        wait_for(lambda: claim_of(project, message_id).get("state") == "done", what="the claim stored done")
        claim = claim_of(project, message_id)
        assert claim["owner"], claim
        assert not claim.get("replyPending"), claim  # nothing left for the sweep either
        bus.reply_to(message_id, timeout=30)
        bus.settle(quiet=max(QUIET, 3.0))  # a redelivery (1 s backoff) and a sweep (1 s) have had time to answer
        replies = [r for r in bus.received if r["messageId"] == message_id]
        assert len(replies) == 1, f"{len(replies)} replies to a message whose outcome is stored: {claim}"
    finally:
        proxy.close()


@pytest.mark.slow(seconds=40)
@pytest.mark.timeout(180)
def test_a_last_attempt_interrupted_by_shutdown_is_still_answered(consumer_factory, bus: Bus, project: str):
    """SIGTERM while a message's last delivery attempt runs past the grace period: the run is cancelled and the
    message nacked. Pub/Sub delivers it no more (the emulator drops it, the cloud dead-letters it), so its claim is
    left running for the stranded-request sweep; it was released (`retry`), which the sweep never takes: no reply."""
    attempts: list[int] = []
    on_last = threading.Event()

    async def flaky(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        attempt = ctx.request.delivery.delivery_attempt or 0
        attempts.append(attempt)
        if attempt < 5:
            raise RuntimeError("a transient fault")
        on_last.set()
        await asyncio.sleep(60)  # the last attempt is still running when the consumer is told to stop
        return {}

    intents = {**builtin_intents(), "ping": Intent(name="ping", handler=flaky, description="flaky")}
    first = consumer_factory(intents=intents, shutdown_grace=1.0)
    message_id = bus.publish({"intent": "ping"})
    wait_for(on_last.is_set, timeout=60, what="the last delivery attempt to start")
    first.stop()
    assert attempts == [1, 2, 3, 4, 5]

    # A consumer that sweeps stranded claims at once: whatever the first left for it, it answers.
    consumer_factory(stranded_after=1.0)
    try:
        reply = bus.reply_to(message_id, timeout=20)
    except AssertionError:
        claims = [c for c in mode_collection(project, "requests") if c.get("requestId") == message_id]
        raise AssertionError(f"the message was never answered; its claim: {claims}") from None
    assert (reply["recovered"], reply["error"]["code"]) == (True, "interrupted"), reply
    bus.settle()
    assert [r["messageId"] for r in bus.received].count(message_id) == 1


@pytest.mark.slow(seconds=40)
@pytest.mark.timeout(120)
def test_a_redelivery_that_arrives_while_its_first_delivery_runs_gets_no_second_reply(
    consumer_factory, bus: Bus, project: str
):
    """Pub/Sub redelivers a message while this process still runs it (here: past the client's max lease; also a
    stream reopened after an error, or the emulator's spontaneous redeliveries). The redelivery waits for the first
    delivery; it checked whether the message was answered only before that wait, so it then found the claim done
    and republished the stored reply (decision 2: acked without a second reply)."""
    attempts: list[int] = []

    async def slow(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        attempts.append(ctx.request.delivery.delivery_attempt or 0)
        if len(attempts) == 1:
            await asyncio.sleep(30)  # past the client's lease (10 s max + the 10 s ack deadline)
        return {"runs": len(attempts)}

    intents = {**builtin_intents(), "ping": Intent(name="ping", handler=slow, description="slow")}
    consumer_factory(intents=intents, max_lease_duration=10.0)
    message_id = bus.publish({"intent": "ping"})
    bus.reply_to(message_id, timeout=90)
    bus.settle(quiet=max(QUIET, 3.0))
    replies = [r for r in bus.received if r["messageId"] == message_id]
    assert len(replies) == 1, replies
