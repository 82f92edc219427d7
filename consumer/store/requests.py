"""Idempotency: each request id is claimed once, and its reply is stored with the claim.

Claims are plain create-if-absent writes, not transactions: on the emulator two parallel transactions creating
the same document can both abort on a lock timeout, and a transaction function may be re-run on contention. A
claim carries a short lease that the running process renews; a claim whose lease ran out (its process died) is
taken over with a write conditioned on the claim's update time, so two takers cannot both win.

Every later write of a run (renewal, reply, release) is conditioned the same way, on the update time of the run's
own last write: a run whose claim was taken over while it ran (its renewals failed until the lease lapsed) cannot
overwrite the new owner's claim, and leaves the reply to it (decision 39). Knowing that time costs no read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from google.api_core import exceptions
from google.cloud.firestore import AsyncDocumentReference, AsyncWriteBatch, DocumentSnapshot
from google.cloud.firestore_v1.base_query import FieldFilter
from google.protobuf.timestamp_pb2 import Timestamp

from consumer.errors import ClaimTakenOver, LeaseLost
from consumer.logs import get_logger
from consumer.reply_json import ReplyJson, dumps
from consumer.store.layout import Layout

log = get_logger(__name__)

T = TypeVar("T")

# A Firestore document holds at most 1 MiB; a summary of a large account or a big rebalance can reply with more.
# The claim keeps the reply whole up to this size, else without its result (the reply itself went out whole).
MAX_STORED_REPLY_BYTES = 500_000


# The claim-like document of a reply with no claim of its own (`store_pending_reply`), by message id.
UNCLAIMED_REPLY_PREFIX = "unclaimed-reply:"


def stored_reply(encoded: ReplyJson) -> str:
    """The reply as the claim stores it for duplicates: its JSON text, whole when it fits, else marked
    `resultTruncated`. Text, not a map: nothing queries inside a reply, and the client encodes a map value by value
    (about 25 ms for a 100 kB summary, stored twice before the reply can go out: decision 19)."""
    if len(encoded.text) <= MAX_STORED_REPLY_BYTES:
        return encoded.text
    note = {"truncated": True, "note": "the result was too large to keep; the first reply carried it whole"}
    return dumps({**encoded.reply, "result": note, "resultTruncated": True})


def _reply_of(claim: dict[str, Any]) -> dict[str, Any] | None:
    text = claim.get("replyJson")
    if isinstance(text, str):
        reply: dict[str, Any] = json.loads(text)
        return reply
    # A claim settled before replies were stored as text holds the reply as a map.
    legacy = claim.get("reply")
    return legacy if isinstance(legacy, dict) else None


class ClaimState(StrEnum):
    """A request claim's state: running (held by a process with a lease), retry (released by a transient failure:
    the next delivery may run it) or done (its reply is stored and is the answer to every redelivery).
    """

    RUNNING = "running"
    RETRY = "retry"  # a transient failure released it: the next delivery may run it again
    DONE = "done"


@dataclasses.dataclass(frozen=True)
class Claim:
    """The outcome of trying to claim a request id."""

    won: bool
    state: ClaimState
    reply: dict[str, Any] | None = None
    owner: str | None = None
    runs: int = 1
    # Set when the id was claimed by a request that asked for something else: (its intent, its fingerprint).
    conflict: tuple[str | None, str] | None = None
    # The stored reply is known to have been published (marked so once it went out, by its delivery or the sweep).
    reply_published: bool = False
    # The stored reply is known not to have been published (stored since `replyPublished` is written: a claim of
    # an earlier version says neither).
    reply_unpublished: bool = False

    @property
    def first_run(self) -> bool:
        """Won by creating the claim: no earlier delivery of this request id claimed it, as far as Firestore knows
        (a redelivery after a release, or a lapsed lease taken over, is a later run)."""
        return self.won and self.runs == 1


# Lease a run must still hold to place orders, at most: less than this left means its renewals have failed for most
# of the lease, and a redelivery may take the claim any moment. A short lease (tests run 3 s) is held to a third of
# it instead: renewed every third, a healthy claim has two thirds left just before a renewal lands, so a fixed 2 s
# would refuse a healthy run that checks at that moment.
HOLD_SPARE = timedelta(seconds=2)


class RequestLedger:
    """The claims on request ids (see above): `claim`, `keep_alive` while running, `finish` with the reply stored,
    `release` for a retry, `forget` once the run is over; `stranded`, `adopt` and `pending_replies` are
    consumer.recovery's, for claims whose process died."""

    def __init__(self, layout: Layout, owner: str, lease_seconds: float) -> None:
        self._layout = layout
        self._owner = owner
        self._lease = timedelta(seconds=lease_seconds)
        self._hold_spare = min(HOLD_SPARE, self._lease / 3)
        # The update time of this process's last write to each claim it holds: the precondition of its next one.
        self._written: dict[str, datetime | Timestamp] = {}
        # The stored reply of each `finish` being committed: how a commit whose answer was lost is known for ours.
        self._finishing: dict[str, str] = {}

    @property
    def owner(self) -> str:
        return self._owner

    async def claim(
        self, request_id: str, intent: str | None, message_id: str, fingerprint: str, dry_run: bool = False
    ) -> Claim:
        ref = self._layout.request(request_id)
        now = datetime.now(UTC)
        record = {
            "requestId": request_id,
            "intent": intent,
            "fingerprint": fingerprint,
            "dryRun": dry_run,
            "messageIds": [message_id],
            "state": ClaimState.RUNNING.value,
            "owner": self._owner,
            "leaseUntil": now + self._lease,
            "runs": 1,
            "createdAt": now,
            "updatedAt": now,
        }
        try:
            self._written[request_id] = (await ref.create(record)).update_time
            return Claim(won=True, state=ClaimState.RUNNING)
        except exceptions.AlreadyExists:
            pass
        snapshot = await ref.get()
        existing = snapshot.to_dict() or {}
        if existing.get("fingerprint", fingerprint) != fingerprint:
            return Claim(
                won=False,
                state=ClaimState(existing.get("state", ClaimState.RUNNING.value)),
                conflict=(existing.get("intent"), existing["fingerprint"]),
            )
        state = ClaimState(existing.get("state", ClaimState.RUNNING.value))
        if state is ClaimState.DONE:
            published = existing.get("replyPending") is False or existing.get("replyPublished") is True
            return Claim(
                won=False,
                state=state,
                reply=_reply_of(existing),
                owner=existing.get("owner"),
                reply_published=published,
                reply_unpublished=not published and existing.get("replyPublished") is False,
            )
        lease_until = existing.get("leaseUntil")
        expired = lease_until is None or lease_until <= now
        if state is ClaimState.RUNNING and not expired:
            return Claim(won=False, state=state, owner=existing.get("owner"))
        # Released after a transient failure, or its process died: take it over, unless someone else just did.
        runs = int(existing.get("runs", 1)) + 1
        try:
            written = await ref.update(
                {
                    "state": ClaimState.RUNNING.value,
                    "owner": self._owner,
                    "leaseUntil": now + self._lease,
                    "runs": runs,
                    "previousOwner": existing.get("owner"),
                    "messageIds": [*existing.get("messageIds", []), message_id][-20:],
                    "updatedAt": now,
                },
                option=self._layout.db.write_option(last_update_time=snapshot.update_time),
            )
        except exceptions.FailedPrecondition:
            return Claim(won=False, state=ClaimState.RUNNING, owner="(taken over concurrently)")
        self._written[request_id] = written.update_time
        log.info("request taken over", previous_owner=existing.get("owner"), previous_state=state.value, runs=runs)
        return Claim(won=True, state=ClaimState.RUNNING, runs=runs)

    async def stranded(self, older_than: float) -> list[DocumentSnapshot]:
        """Claims still `running` whose lease ran out more than `older_than` seconds ago: their process died, and
        no redelivery has taken them over since."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        query = self._layout.requests().where(filter=FieldFilter("state", "==", ClaimState.RUNNING.value))
        out = []
        async for snapshot in query.stream():
            lease_until = (snapshot.to_dict() or {}).get("leaseUntil")
            if lease_until is None or lease_until <= cutoff:
                out.append(snapshot)
        return out

    async def adopt(self, snapshot: DocumentSnapshot) -> bool:
        """Takes over a stranded claim to finish it; False if anyone touched it since it was read."""
        now = datetime.now(UTC)
        claim = snapshot.to_dict() or {}
        try:
            written = await snapshot.reference.update(
                {
                    "owner": self._owner,
                    "previousOwner": claim.get("owner"),
                    "leaseUntil": now + self._lease,
                    "recovering": True,
                    "updatedAt": now,
                },
                option=self._layout.db.write_option(last_update_time=snapshot.update_time),
            )
        except (exceptions.FailedPrecondition, exceptions.NotFound):
            return False
        self._written[claim["requestId"]] = written.update_time  # keyed as every other write is, not by doc id
        return True

    def _precondition(self, request_id: str) -> Any:
        """The write option that makes a write land only on the claim as this process last wrote it."""
        written = self._written.get(request_id)
        return None if written is None else self._layout.db.write_option(last_update_time=written)

    def finish(self, batch: AsyncWriteBatch, request_id: str, reply: ReplyJson, pending: bool = False) -> None:
        """Adds the final state and the reply to a batch the caller commits (with the activity record); the commit
        fails with FailedPrecondition if the claim changed since this process last wrote it (see `still_held`).
        `pending`: the reply is not published yet (the sweep's: no redelivery will ask for it again)."""
        stored = self._finishing[request_id] = stored_reply(reply)
        batch.update(
            self._layout.request(request_id),
            {
                "state": ClaimState.DONE.value,
                "replyJson": stored,
                "leaseUntil": None,
                "updatedAt": datetime.now(UTC),
                "replyPublished": False,
                **({"replyPending": True} if pending else {}),
            },
            option=self._precondition(request_id),
        )

    async def still_held(self, request_id: str) -> bool:
        """After a conditioned write failed: whether the claim is still this process's and running (a renewal it
        cancelled may have landed after all), in which case the next write is conditioned on what it read.
        NotFound if the claim is gone (its documents deleted): no owner will answer, so the caller does."""
        snapshot = await self._layout.request(request_id).get()
        if not snapshot.exists:
            raise exceptions.NotFound(f"request {request_id}'s claim is gone")
        claim = snapshot.to_dict() or {}
        if claim.get("owner") == self._owner and claim.get("state") == ClaimState.RUNNING.value:
            self._written[request_id] = snapshot.update_time
            return True
        return False

    async def commit_as_owner(self, request_id: str, fill: Callable[[AsyncWriteBatch], None]) -> None:
        """Commits a batch `fill` builds around `finish`, as `_as_owner` says."""

        async def commit() -> None:
            batch = self._layout.db.batch()
            fill(batch)
            try:
                await batch.commit()
            except exceptions.FailedPrecondition:
                if not await self._landed(request_id):
                    raise

        try:
            await self._as_owner(request_id, commit)
        finally:
            self._finishing.pop(request_id, None)

    async def _landed(self, request_id: str) -> bool:
        """Whether the claim is done with the reply this process is committing: the commit went through and only
        its answer was lost (the client retried it, and the retry met the precondition the commit itself changed).
        Read as a takeover, nobody would ever have published that reply."""
        stored = self._finishing.get(request_id)
        claim = (await self._layout.request(request_id).get()).to_dict() or {}
        return (
            stored is not None
            and claim.get("owner") == self._owner
            and claim.get("state") == ClaimState.DONE.value
            and claim.get("replyJson") == stored
        )

    async def _as_owner(self, request_id: str, write: Callable[[], Awaitable[T]]) -> T:
        """Makes a write conditioned on this process's last one: once more if the claim is still this process's but
        changed (a renewal cancelled in flight landed after all), ClaimTakenOver if it is another's."""
        for _ in range(2):
            try:
                return await write()
            except exceptions.FailedPrecondition:
                if not await self.still_held(request_id):
                    raise ClaimTakenOver(f"request {request_id}'s claim was taken over") from None
        raise ClaimTakenOver(f"request {request_id}'s claim keeps changing under this process")

    def forget(self, request_id: str) -> None:
        """The run is over: its claim's last write time is no longer needed."""
        self._written.pop(request_id, None)

    async def release(self, request_id: str, error: str) -> None:
        """After a transient failure: the redelivery may run the request again straight away. Not if the claim was
        taken over meanwhile: the new owner's run goes on."""
        now = datetime.now(UTC)
        fields = {"state": ClaimState.RETRY.value, "leaseUntil": None, "lastError": error, "updatedAt": now}
        with contextlib.suppress(exceptions.GoogleAPIError, ClaimTakenOver):
            await self._write(self._layout.request(request_id), request_id, fields)

    async def _write(self, ref: AsyncDocumentReference, request_id: str, fields: dict[str, Any]) -> None:
        """A conditioned update of a claim this process holds; ClaimTakenOver if it is no longer its own."""
        written = await self._as_owner(request_id, lambda: ref.update(fields, option=self._precondition(request_id)))
        self._written[request_id] = written.update_time

    async def pending_replies(self, older_than: float) -> list[DocumentSnapshot]:
        """Claims whose stored reply was not published (by the sweep, which failed or died; by a last delivery
        attempt, which failed) at least `older_than` seconds ago."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        query = self._layout.requests().where(filter=FieldFilter("replyPending", "==", True))
        return [s async for s in query.stream() if ((s.to_dict() or {}).get("updatedAt") or cutoff) <= cutoff]

    async def take_pending(self, snapshot: DocumentSnapshot) -> bool:
        """Takes a pending reply to publish it; False if another process took it (or published it) since."""
        try:
            await snapshot.reference.update(
                {"updatedAt": datetime.now(UTC), "replyOwner": self._owner},
                option=self._layout.db.write_option(last_update_time=snapshot.update_time),
            )
        except (exceptions.FailedPrecondition, exceptions.NotFound):
            return False
        return True

    async def reply_pending(self, request_id: str) -> None:
        """A stored reply no delivery will publish (its last attempt failed to): a later sweep publishes it."""
        await self._layout.request(request_id).update({"replyPending": True, "updatedAt": datetime.now(UTC)})

    async def store_pending_reply(self, message_id: str, reply: ReplyJson) -> None:
        """A reply that has no claim of its own (a bad request, a conflicting one) and that the message's last
        delivery attempt could not publish, stored pending under an id of its own for the sweep to publish."""
        request_id = f"{UNCLAIMED_REPLY_PREFIX}{message_id}"
        stored = {
            "requestId": request_id,
            "intent": reply.reply.get("intent"),
            "state": ClaimState.DONE.value,
            "replyJson": stored_reply(reply),
            "replyPending": True,
            "updatedAt": datetime.now(UTC),
        }
        await self._layout.request(request_id).create(stored)

    async def published(self, request_id: str) -> None:
        """The stored reply went out: no later sweep publishes it again, and a redelivery of its message gets none."""
        await self._layout.request(request_id).update({"replyPending": False, "replyPublished": True})

    async def hold(self, request_id: str) -> None:
        """Raises LeaseLost unless this process still owns the claim, running, with lease to spare: the check a run
        makes before it places orders. A run whose renewals failed until its lease lapsed can be taken over by a
        redelivery elsewhere, and two runs placing at once could both miss the other's orders at the broker."""
        snapshot = await self._layout.request(request_id).get()
        claim = snapshot.to_dict() or {}
        lease_until = claim.get("leaseUntil")
        if claim.get("owner") != self._owner or claim.get("state") != ClaimState.RUNNING.value:
            raise LeaseLost(f"request {request_id} is now {claim.get('state')} under {claim.get('owner')!r}", False)
        if lease_until is None or lease_until - datetime.now(UTC) < self._hold_spare:
            raise LeaseLost(f"request {request_id}'s lease runs out at {lease_until}: its renewals failed", True)
        if request_id in self._written:  # a dry run's view reads through here, and tracks nothing
            self._written[request_id] = snapshot.update_time

    async def keep_alive(self, request_id: str) -> None:
        """Renews the lease while the request runs, so only a dead process's claim can expire; stops once the claim
        is another's (the run finds out when it next holds, stores or releases)."""
        interval = max(self._lease.total_seconds() / 3, 0.05)
        ref = self._layout.request(request_id)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._write(ref, request_id, {"leaseUntil": datetime.now(UTC) + self._lease})
            except ClaimTakenOver as e:
                log.warning("stopped renewing a claim another process took over", error=str(e))
                return
            except exceptions.GoogleAPIError as e:
                log.warning("could not renew request lease", error=str(e))
