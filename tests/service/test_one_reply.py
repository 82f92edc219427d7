"""Every message gets exactly one reply (decisions 2, 36, 39, 48): never none, and a redelivery of a message this
process answered is acked without a second one. Failures an independent review found, each of which lost or
doubled a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import threading
from typing import Any

import pytest

from consumer.intents import builtin_intents
from consumer.intents.base import Intent
from tests.support import QUIET, Bus, mode_collection, mode_document, wait_for

pytestmark = pytest.mark.usefixtures("paper_config")


# -- a TCP proxy in front of the Firestore emulator that can lose one response -------------------------------------


class LossyProxy:
    """Forwards TCP to `upstream`. Once armed, the first client->server chunk containing `needle` is forwarded (the
    server applies it), but everything the server sends back on that connection is dropped, and the connection is
    closed a moment later: what a network fault after a commit reached Firestore looks like to the client."""

    def __init__(self, upstream: str, needle: bytes) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._needle = needle
        self.armed = threading.Event()
        self.fired = threading.Event()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="lossy-proxy").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            state = {"blackhole": False}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, state: dict[str, bool]) -> None:
        tail = b""
        try:
            while chunk := client.recv(65536):
                window = tail + chunk
                tail = window[-len(self._needle) :]
                fire = self.armed.is_set() and self._needle in window
                if fire:  # before forwarding: the server's answer must not slip through
                    self.armed.clear()
                    state["blackhole"] = True
                upstream.sendall(chunk)
                if fire:
                    self.fired.set()
                    threading.Timer(1.0, self._cut, args=(client, upstream)).start()
        except OSError:
            pass
        finally:
            self._cut(client, upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        try:
            while chunk := upstream.recv(65536):
                if not state["blackhole"]:
                    client.sendall(chunk)
        except OSError:
            pass
        finally:
            self._cut(client, upstream)

    @staticmethod
    def _cut(*sockets: socket.socket) -> None:
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()


def claim_of(project: str, message_id: str) -> dict[str, Any]:
    doc = mode_document(project).collection("requests").document(hashlib.sha256(message_id.encode()).hexdigest())
    return doc.get().to_dict() or {}


@pytest.mark.slow(seconds=15)
@pytest.mark.timeout(120)
def test_a_reply_whose_store_committed_but_whose_answer_was_lost_is_still_published(
    consumer_factory, bus: Bus, project: str, monkeypatch
):
    """The commit that stores a reply with its claim reaches Firestore, but its answer is lost (a connection reset):
    the client library retries the commit (UNAVAILABLE is retried), and the retry meets the precondition the first
    commit just changed. The claim, done with this run's own reply, was taken for a takeover: the message acked,
    "its new owner replies", and no owner: no reply, ever."""
    proxy = LossyProxy(os.environ["FIRESTORE_EMULATOR_HOST"], b"replyJson")
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
