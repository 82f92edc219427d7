"""Requests whose process died mid-run and that Pub/Sub did not bring back: finished from the broker's record.

A killed consumer leaves its claim `running` and its write-ahead orders `pending` or working. Normally the message
is redelivered and the next run takes the claim over. When no redelivery comes (the emulator sometimes drops it;
in the cloud a message can outlive its retention), nothing would ever answer the request. The sweep finds claims
whose lease ran out long ago, takes each over, resolves its orders at the broker by orderRef, books whatever filled,
and answers once with `recovered: true`: an error `interrupted` that says what each order did. It does not place
what the run did not get to: the intent's inputs are stale by then; the operator publishes it again.

No redelivery will ask for that reply again, so it is stored marked `replyPending` until it has been published: a
publish that failed (or a sweeper killed between the two) leaves it to a later sweep, here or in another consumer.
A message's last delivery attempt that stored its reply but could not publish it leaves it the same way.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.cloud.firestore import AsyncWriteBatch

from consumer.bookkeeper import perm_ids
from consumer.broker.model import NOT_PLACED, is_done, meaning
from consumer.errors import ClaimTakenOver, reraise_if_cancelled
from consumer.logs import get_logger
from consumer.reply_json import ReplyJson

if TYPE_CHECKING:
    from consumer.services import Services

log = get_logger(__name__)


class StrandedRequests:
    """Sweeps for stranded requests at start-up and then every `interval` seconds, while the gateway is up."""

    def __init__(self, services: Services, stranded_after: float) -> None:
        self._services = services
        self._stranded_after = stranded_after

    @property
    def interval(self) -> float:
        return min(max(self._stranded_after / 3, 1.0), 300.0)

    async def run(self) -> None:
        broker = self._services.broker
        while True:
            if broker.ready:
                try:
                    await self.sweep()
                except Exception as e:
                    reraise_if_cancelled(e)
                    log.warning("stranded-request sweep failed; will try again", error=str(e))
            await asyncio.sleep(self.interval)

    async def sweep(self) -> list[str]:
        """Finishes every stranded request it can take over, and publishes the replies earlier sweeps stored but
        could not publish; returns the request ids answered."""
        recovered = await self._publish_pending()
        for snapshot in await self._services.ledger.stranded(self._stranded_after):
            claim = snapshot.to_dict() or {}
            request_id = claim["requestId"]
            if self._services.broker.read_only and (await self._services.books.orders_of(request_id))[0]:
                # Its orders are resolved from IB's order lists, which a read-only API refuses: left as it is
                # (not taken over, so a consumer on a writable gateway can) until the gateway is writable.
                log.info("a stranded request waits for a writable gateway to resolve its orders", requestId=request_id)
                continue
            if not await self._services.ledger.adopt(snapshot):
                continue  # a redelivery or another consumer got there first
            log.warning(
                "finishing a request its process left running", requestId=request_id, intent=claim.get("intent")
            )
            try:
                if await self._finish(claim):
                    recovered.append(request_id)
            except Exception as e:
                # One request that cannot be finished must not keep the others from being answered; adopted, it is
                # stranded again once its lease lapses, and a later sweep tries it again.
                reraise_if_cancelled(e)
                log.error("could not finish a stranded request", requestId=request_id, error=str(e))
        return recovered

    async def _finish(self, claim: dict[str, Any]) -> bool:
        """Resolves and answers an adopted claim, renewing its lease meanwhile (resolving can outlast it)."""
        ledger = self._services.ledger
        request_id = claim["requestId"]
        lease = asyncio.create_task(ledger.keep_alive(request_id))
        try:
            orders = await self._resolve(request_id)
            encoded = self._reply(claim, orders)
            lease.cancel()
            await ledger.commit_as_owner(request_id, lambda batch: self._store(batch, request_id, encoded))
        except ClaimTakenOver:
            # A late redelivery took it over while its orders were being resolved: that run answers it.
            log.warning("a stranded request was taken over while being finished; its new owner replies")
            return False
        finally:
            lease.cancel()
            ledger.forget(request_id)
        await self._publish(request_id, encoded)
        return True

    async def _publish_pending(self) -> list[str]:
        """The replies stored but not published (by a sweep that failed or died, or by a message's last delivery
        attempt), one claim lease after they were marked pending."""
        ledger = self._services.ledger
        published = []
        for snapshot in await ledger.pending_replies(self._services.settings.claim_lease):
            text = (snapshot.to_dict() or {}).get("replyJson")
            if not isinstance(text, str) or not await ledger.take_pending(snapshot):
                continue
            request_id = (snapshot.to_dict() or {})["requestId"]
            log.warning("publishing a stored reply that was never published", requestId=request_id)
            try:
                await self._publish(request_id, ReplyJson.of(json.loads(text)))
            except Exception as e:
                # Still pending: a later sweep tries it again. One reply Pub/Sub refuses for good must not stop
                # every other pending reply and stranded request behind it, sweep after sweep.
                reraise_if_cancelled(e)
                log.error("could not publish a stored reply; a later sweep tries again", requestId=request_id,
                          error=str(e))  # fmt: skip
                continue
            published.append(request_id)
        return published

    async def _publish(self, request_id: str, encoded: ReplyJson) -> None:
        services = self._services
        await services.publishing.reply(encoded)
        await services.ledger.published(request_id)
        if encoded.reply.get("recovered"):
            services.metrics.count("recovered", encoded.reply.get("intent") or "(none)")

    async def _resolve(self, request_id: str) -> list[dict[str, Any]]:
        """Books what the broker filled for this request's orders and closes those that are over."""
        services = self._services
        await services.bookkeeper.reconcile()
        open_docs, closed_docs = await services.books.orders_of(request_id)
        at_broker = await services.broker.find_orders(
            {d["orderRef"] for d in open_docs}, account=services.account, perm_ids=perm_ids(open_docs)
        )
        orders = [_line(d, _outcome(d.get("state")), d.get("filled")) for d in closed_docs]
        # Listed nowhere: never sent, or sent before the kill and finished on an earlier day (IB lists the current
        # day's orders and executions only). What the position says it filled decides (decision 44).
        unlisted = [d for d in open_docs if d["orderRef"] not in at_broker]
        gone, _ = await services.bookkeeper.close_unlisted(unlisted, busy=set())  # it reads what else is open
        closed = {c["orderRef"]: c for c in gone}
        for doc in open_docs:
            ref = doc["orderRef"]
            found = at_broker.get(ref)
            if ref in closed:
                orders.append(_line(doc, _outcome(closed[ref]["state"]), closed[ref]["filled"]))
            elif found is None:
                # The position cannot say whether it was sent, or what it filled: open for reconcile, not called
                # "not placed" (that closed an order that had filled, and lost its fills from the books).
                orders.append(_line(doc, "unknown", doc.get("filled", 0.0)))
            else:
                if is_done(found.status):
                    await services.books.close_order(ref, found.status, found.filled)
                orders.append(_line(doc, found.fate.value, found.filled))
        return sorted(orders, key=lambda o: o["orderRef"])

    def _reply(self, claim: dict[str, Any], orders: list[dict[str, Any]]) -> ReplyJson:
        services = self._services
        now = datetime.now(UTC)
        started = claim.get("createdAt") or now
        message_ids = claim.get("messageIds") or [""]
        summary = ", ".join(f"{o['orderRef']} {o['outcome']} ({o['filled']:g} filled)" for o in orders) or "none"
        reply = {
            "requestId": claim["requestId"],
            "messageId": message_ids[-1],
            "idempotencyKey": None,
            "intent": claim.get("intent"),
            "status": "error",
            "result": None,
            "error": {
                "code": "interrupted",
                "message": "the consumer running this request stopped before it finished and the message was not "
                f"delivered again; its orders at the broker: {summary}. Publish it again to finish it.",
                "details": {"orders": orders},
            },
            "tradingMode": services.settings.trading_mode,
            "account": services.account,
            "dryRun": bool(claim.get("dryRun", False)),
            "schedule": None,
            "startedAt": started.isoformat(),
            "finishedAt": now.isoformat(),
            # Two wall clocks, of two processes (perhaps two hosts): no monotonic clock spans them, and one stepped
            # back or running behind must not make a negative duration, a reply the schema refuses.
            "durationMs": max(round((now - started).total_seconds() * 1000, 3), 0.0),
            "recovered": True,
        }
        return ReplyJson.of(reply)

    def _store(self, batch: AsyncWriteBatch, request_id: str, encoded: ReplyJson) -> None:
        self._services.ledger.finish(batch, request_id, encoded, pending=True)
        self._services.activity.record(batch, encoded, None, None)


def _outcome(state: str | None) -> str:
    """A closed order's state in the words a reply's legs use (`filled`, `cancelled`, `rejected`...): the books keep
    IB's status names, and one list mixing "Filled" with "filled" reads as two outcomes to a monitor."""
    return "not placed" if state == NOT_PLACED else meaning(state or "").fate.value


def _line(doc: dict[str, Any], outcome: str, filled: Any) -> dict[str, Any]:
    return {"orderRef": doc["orderRef"], "symbol": doc.get("symbol"), "outcome": outcome, "filled": filled}
