"""Decision 76 under review: a claimed reply marks its claim published once it went out (consumer/dispatch.py
`_publish`, `_duplicate`; consumer/store/requests.py `published`), and a failed booking or sweep queues a catch-up
sweep (consumer/bookkeeper.py `_work`, `_catch_up_later`). Found by an independent review of that decision; each
test failed against its first version, for the reason its docstring gives (decision 76, "A review")."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from typing import Any

import pytest

from tests.support import (
    STANDBY,
    Bus,
    FirestoreFault,
    allocation,
    another_intents_subscription,
    booked_totals,
    claim_of,
    firestore_client,
    mode_collection,
    mode_document,
    stock_positions,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("paper_config")

BOOKING_FAILED = "live booking failed; the next reconciliation will catch up"


def logged(caplog: Any, event: str) -> list[dict[str, Any]]:
    return [r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == event]


# -- 1. a live booking that fails in a batch is never caught up --------------------------------------------------------


@pytest.mark.slow(seconds=60)
@pytest.mark.timeout(240)
def test_a_live_booking_that_failed_as_a_batch_is_caught_up_once_firestore_takes_it(
    consumer_factory, bus: Bus, gateway, project: str, caplog
):
    """An allocation's buy works at IB (fills held, so it answers `working`); while another Firestore transaction
    holds the order document's lock (a consumer killed inside its booking transaction, decision 76's own case:
    Firestore keeps a dead client's locks for 60 s), the buy fills. IB reports the execution and its commission
    together, so the bookkeeper books them as one batch: the batch fails ("Failed to commit transaction in 5
    attempts"), then each event alone fails too. Once the lock is gone a user expects the books to follow IB within
    the catch-up backoff (2 s doubling to 120 s, decision 76): the fill booked by execId, dummy holding what IB
    holds. Nothing sweeps: the books stay short of IB's fill, the order open, until the next reconnect or trading
    intent (hours), while summary, pnl and risk-check read them.

    Root cause: consumer/bookkeeper.py Bookkeeper._book_live falls back to booking a failed batch's events one at a
    time and only logs each one that fails (`_warn_unless_stopping`), returning normally; `_work` calls
    `_catch_up_later` only when `_book_live` raises, which it does for a batch of one event alone. A burst of fills
    (an execution with its commission report, a rebalance's legs) is the usual case."""
    c = consumer_factory(order_timeout=3.0)
    gateway.hold_fills(True)
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    (line,) = [i for i in reply["result"]["instruments"] if i.get("orderRef")]
    assert line["outcome"] == "working", line
    ref = line["orderRef"]

    # Another client's transaction reads (and so locks) the order's document, as a killed consumer's did.
    lock = firestore_client(project).transaction()
    lock._begin()
    mode_document(project).collection("openOrders").document(ref).get(transaction=lock)
    caplog.clear()
    # The execution and its commission report arrive together, as they do whenever the broker loop is busy for a
    # moment (an intent computing, a burst of fills): the loop is held while IB reports the fill.
    held, release = threading.Event(), threading.Event()

    async def busy() -> None:
        held.set()
        release.wait(30)

    c.service.loop.submit(busy())
    wait_for(held.is_set, what="the broker loop busy")
    gateway.hold_fills(False)
    wait_for(lambda: gateway.executions(), what="the fill at IB")
    time.sleep(0.5)  # ibsim sends the execution and its commission report right after it records them
    release.set()
    wait_for(lambda: logged(caplog, BOOKING_FAILED), timeout=60, what="the live booking to fail on the lock")
    (bookkeeper,) = [view.bookkeeper for view in c.service.services.accounts.values()]
    # Every event it had was tried (the batch, then one at a time) and failed: its queue is worked off.
    wait_for(lambda: bookkeeper._queue._unfinished_tasks == 0, timeout=90, what="the bookkeeper to go idle")
    kinds = [e["kind"] for e in logged(caplog, BOOKING_FAILED)]
    assert kinds[0] == "batch", kinds
    with contextlib.suppress(Exception):  # the emulator may have ended it already: the lock is gone either way
        lock._rollback()

    executions = sorted(e["execId"] for e in gateway.executions())
    assert executions
    try:
        wait_for(
            lambda: (
                sorted(f["_id"] for f in mode_collection(project, "fills")) == executions
                and booked_totals(project) == stock_positions(gateway)
            ),
            timeout=60,
            what="the fill booked once the lock is gone",
        )
    except AssertionError as e:
        raise AssertionError(
            f"{e}: fills booked {[f['_id'] for f in mode_collection(project, 'fills')]} of {executions}; books "
            f"{booked_totals(project)} vs IB {stock_positions(gateway)}; failures logged {kinds}; sweeps logged "
            f"{len(logged(caplog, 'books reconciled'))}"
        ) from None
    assert [o["_id"] for o in mode_collection(project, "openOrders")] == []


# -- 2. a graceful stop while the `published` mark is slow: the reply goes out twice ----------------------------------


@pytest.mark.slow(seconds=90)
@pytest.mark.timeout(240)
def test_a_consumer_stopped_while_marking_its_reply_published_does_not_reply_twice(
    consumer_factory, bus: Bus, project: str, monkeypatch, caplog
):
    """A ping is answered: its reply stored with its claim, then published. Firestore stops answering right then, so
    the write that marks the claim published (`replyPending: false`) hangs (the client waits 60 s for a commit).
    The consumer is stopped gracefully (SIGTERM: a rolling deploy, its successor already pulling the same
    subscription) meanwhile; past its grace period the delivery is cancelled in that write and the message nacked,
    though its reply went out. The successor gets the message again, finds the claim done and not marked, and
    publishes the same reply again, unmarked: the request has two replies, neither marked duplicate.
    A user expects one reply per message (decision 2): before decision 76 the ack followed the publish directly,
    and a graceful stop could not send a reply twice; decision 76's "Left" is a process killed between the two, not
    one stopped as designed.

    Root cause: consumer/dispatch.py Dispatcher._publish awaits `ledger.published` (consumer/store/requests.py
    RequestLedger.published) after the reply went out and before it returns ACK, unbounded (the commit's 60 s
    timeout) and cancellable; `contextlib.suppress(Exception)` does not catch the CancelledError of `abort_all`, so
    the settled message is nacked."""
    proxy = FirestoreFault(os.environ["FIRESTORE_EMULATOR_HOST"], b"replyPending", "stall")
    try:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", proxy.address)
        first = consumer_factory(shutdown_grace=1.0)
        monkeypatch.undo()  # the test's own clients, and the next consumer, talk to the emulator directly
        warm_up = bus.publish({"intent": "ping"})
        assert bus.reply_to(warm_up)["status"] == "ok"  # all well through the proxy
        wait_for(lambda: claim_of(project, warm_up).get("replyPending") is False, what="its claim marked published")

        proxy.armed.set()
        message_id = bus.publish({"intent": "ping"})
        first_reply = bus.reply_to(message_id, timeout=30)
        wait_for(proxy.fired.is_set, what="the published mark to reach the stalled Firestore")
        # Its successor is up before it stops (a rolling deploy), pulling the same subscription: an acked message
        # comes back no more, a nacked one comes to it.
        consumer_factory(ib_client_id=2)
        first.stop()  # the message was acked once its reply went out: nothing in flight for the stop to abort
        with contextlib.suppress(AssertionError):
            wait_for(lambda: len([r for r in bus.settle(quiet=0.2) if r["messageId"] == message_id]) > 1,
                     timeout=30, what="a second reply")  # fmt: skip
        replies = [r for r in bus.received if r["messageId"] == message_id]
        assert len(replies) == 1, (
            f"{len(replies)} replies to one message (duplicate marks {[r.get('duplicate') for r in replies]}); "
            f"the first {first_reply['status']}"
        )
    finally:
        proxy.close()


# -- 3. a claim the previous version settled: its published reply reads as never published -----------------------------


@pytest.mark.slow(seconds=20)
@pytest.mark.timeout(120)
def test_a_redelivery_of_a_message_the_previous_version_answered_is_not_its_first_reply(
    consumer_factory, bus: Bus, project: str
):
    """A message answered by the version before decision 76 (its claim `done` with its reply, no `replyPending`,
    no `replyUnsent`: that version marked `replyUnsent` only when the publish failed) comes back to the upgraded
    consumer: an ack lost as the old process stopped for the deploy, a Pub/Sub redelivery after an ack. The
    upgraded consumer reads the claim as "stored, never published" and publishes the stored reply again unmarked,
    as the request's first: a monitor that keeps the first unmarked reply per message sees the request answered
    twice. A user expects what the claim said when it was written: published, so a redelivery gets none, or at
    most a copy marked `"duplicate": true`, as the previous version gave (decision 73).

    Root cause: consumer/dispatch.py Dispatcher._duplicate takes every done claim of this message not marked
    `replyPending: false` for unpublished (`first = claim.reply["messageId"] == this message`), and
    consumer/store/requests.py RequestLedger.claim no longer reads `replyUnsent`, the previous version's mark of the
    only claims that were in fact unpublished. The claims stored before the upgrade (a claim settled before
    2026-11-30 is still read as a map, so old claims are meant to be read) lose their meaning."""
    first = consumer_factory()
    answered = bus.publish({"intent": "ping"})
    assert bus.reply_to(answered)["status"] == "ok"
    wait_for(lambda: claim_of(project, answered).get("replyPending") is False, what="its claim marked published")
    template = claim_of(project, answered)
    standby = another_intents_subscription(project, STANDBY)  # the next consumer's copy of the message, below
    first.stop()

    # The message the previous version answered, its claim as that version left it.
    message_id = bus.publish({"intent": "ping"})
    reply = {**json.loads(template["replyJson"]), "messageId": message_id, "requestId": message_id}
    legacy = {k: v for k, v in template.items() if k not in ("replyPending", "replyUnsent")}
    legacy.update(requestId=message_id, messageIds=[message_id], replyJson=json.dumps(reply))
    legacy.pop("fingerprint", None)  # claimed by the same request: the fingerprint is not what this is about
    requests = mode_document(project).collection("requests")
    requests.document(hashlib.sha256(message_id.encode()).hexdigest()).set(legacy)

    consumer_factory(intents_subscription=standby)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: [r for r in bus.settle(quiet=0.2) if r["messageId"] == message_id], timeout=15,
                 what="a reply")  # fmt: skip
    unmarked = [r for r in bus.received if r["messageId"] == message_id and not r.get("duplicate")]
    assert unmarked == [], f"a reply the previous version published went out again as the first: {unmarked}"
