"""One request, from claim to reply: the lifecycle every intent shares. Runs on the broker loop.

    claim the request id ─ duplicate? ── done: republish the stored reply, ack
          │                         └─ running elsewhere: nack (its owner replies)
    policy: stale? kill switch? live guard?         (trading intents)
    run the handler (trading intents one at a time, under a timeout, renewing the claim's lease)
    settle: store the reply with the claim + the activity record ‖ publish the reply  ──>  ack
    transient failure: release the claim, nack, or on the last attempt dead-letter + error reply, ack
    store failure: release the claim, nack, or on the last attempt store the claim alone, dead-letter + reply, ack
                   (the claim cannot be stored either: no reply, the claim is left to the stranded-request sweep)

A message is acked only once its effects are stored and its reply is published. Read-only intents run while their
claim is being written (they have no effects to undo), which takes a Firestore round trip off their latency.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog
from google.api_core import exceptions as google_exceptions
from google.cloud.firestore import AsyncWriteBatch

from consumer.accounts import live_account_refusal
from consumer.envelope import Request
from consumer.errors import (
    ClaimTakenOver,
    Failure,
    GatewayReadOnly,
    IntentError,
    LeaseLost,
    Rejected,
    Transient,
    as_transient,
    clip,
    reraise_if_cancelled,
)
from consumer.intents.base import Intent, IntentContext
from consumer.logs import get_logger
from consumer.reply_json import ReplyJson
from consumer.services import Services
from consumer.store.requests import Claim, ClaimState
from consumer.store.trading_config import TradingConfig

log = get_logger(__name__)

ANSWERED_MEMORY = 20_000  # message ids remembered as answered (about 2 MB)


@dataclass(frozen=True, slots=True)
class Started:
    """When a request's handling started, on two clocks: the wall clock's time for the reply's `startedAt`, the
    monotonic clock's reading for its `durationMs` (the wall clock can be stepped back by NTP mid-intent, and a
    negative duration is a reply the schema refuses)."""

    at: datetime
    clock: float

    @classmethod
    def now(cls) -> Started:
        return cls(datetime.now(UTC), time.monotonic())

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.clock) * 1000, 3)


class Settlement(StrEnum):
    """What becomes of the Pub/Sub message: acked (answered, or dead-lettered) or nacked (delivered again)."""

    ACK = "ack"
    NACK = "nack"


class Dispatcher:
    """Carries each request through the lifecycle above and says whether its message is acked or nacked.

    `handle` is called on the broker loop once per delivery (consumer.intake hands it over); its Settlement is the
    message's fate. Trading intents run one at a time (`_trading`); read-only ones run side by side. Every
    delivery ends in exactly one reply: a stored one for a duplicate, nothing for a redelivery this process has
    already answered. `abort_all` is the end of the shutdown grace period: what still runs is cancelled and nacked.
    """

    def __init__(self, services: Services, intents: dict[str, Intent]) -> None:
        self._services = services
        self._intents = intents
        # Trading intents for the account never overlap: each one reads holdings and working orders that the
        # previous one changes.
        self._trading = asyncio.Lock()
        self._running: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Settlement]] = set()
        self._marking: set[asyncio.Task[None]] = set()
        # Messages this process has answered: Pub/Sub redelivers some after their ack (the emulator under a burst
        # does so by the hundred), and each message gets one reply, not one per delivery.
        self._answered: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._market_data_type_known = False

    async def handle(self, request: Request) -> Settlement:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        started = Started.now()
        with structlog.contextvars.bound_contextvars(
            requestId=request.request_id,
            messageId=request.delivery.message_id,
            intent=request.intent,
            tradingMode=self._services.settings.trading_mode,
            account=self._services.account,
            dryRun=request.dry_run,
        ):
            try:
                return await self._handle(request, started)
            finally:
                self._tasks.discard(task)

    async def abort_all(self) -> None:
        """Shutdown past its grace period: in-flight intents stop, release their claims (on a last delivery attempt,
        leave them to the stranded-request sweep) and are nacked."""
        for task in list(self._tasks):
            task.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _handle(self, request: Request, started: Started) -> Settlement:
        if self._answered_here(request):
            return Settlement.ACK
        settlement = await self._handle_once(request, started)
        if settlement is Settlement.ACK:
            self._answered[request.delivery.message_id] = None
            while len(self._answered) > ANSWERED_MEMORY:
                self._answered.popitem(last=False)
        return settlement

    def _answered_here(self, request: Request) -> bool:
        if request.delivery.message_id not in self._answered:
            return False
        log.info("redelivery of a message already answered; acked without a second reply")
        return True

    async def _handle_once(self, request: Request, started: Started) -> Settlement:
        if request.problem is not None:
            log.warning("bad request", code=request.problem.code, error=request.problem.message)
            return await self._settle(request, started, failure=request.problem, claimed=False)
        intent = self._intents[request.envelope.intent]  # type: ignore[union-attr]

        # The same request id already running in this process (a re-publish with the same idempotency key, or a
        # redelivery that overtook its first delivery): wait for it, then answer from the stored reply.
        earlier = self._running.get(request.request_id)
        if earlier is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(earlier)
            if self._answered_here(request):  # this very message, answered while this delivery waited
                return Settlement.ACK
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[request.request_id] = done
        try:
            return await self._claim_and_run(intent, request, started)
        finally:
            self._running.pop(request.request_id, None)
            done.set_result(None)

    async def _claim_and_run(self, intent: Intent, request: Request, started: Started) -> Settlement:
        ledger = self._services.ledger
        claiming = ledger.claim(
            request.request_id, intent.name, request.delivery.message_id, request.fingerprint, request.dry_run
        )
        claim_started = time.perf_counter()
        try:
            if intent.trades or intent.exclusive:
                claim = await claiming
                run: asyncio.Task[dict[str, Any]] | None = None
            else:
                run = asyncio.create_task(self._run(intent, request))
                try:
                    claim = await claiming
                except BaseException:
                    run.cancel()
                    raise
        except google_exceptions.GoogleAPIError as e:
            return await self._retry_or_dead_letter(request, started, as_transient(e), claimed=False)

        if not claim.won:
            if run is not None:
                run.cancel()
                with contextlib.suppress(BaseException):
                    await run
            if claim.conflict is not None:
                other = claim.conflict[0]
                conflict = IntentError(
                    "conflicting_request",
                    f"the request id {clip(repr(request.request_id))} was already used by a request for "
                    f"{other!r} with other content; this one was not run (give it an idempotencyKey of its own)",
                )
                return await self._settle(request, started, failure=conflict, claimed=False)
            return await self._duplicate(request, claim)

        claim_ms = (time.perf_counter() - claim_started) * 1000
        return await self._run_claimed(
            request,
            started,
            run if run is not None else self._run(intent, request, first_run=claim.first_run, claim_ms=claim_ms),
            later_run=intent.trades and not claim.first_run and not request.dry_run,
        )

    async def _run_claimed(
        self, request: Request, started: Started, run: Awaitable[dict[str, Any]], later_run: bool = False
    ) -> Settlement:
        """Runs a request this process holds the claim of, renewing its lease, and settles the outcome.
        `later_run`: a trading request's redelivery or taken-over claim, whose earlier attempts may have placed."""
        ledger = self._services.ledger
        try:
            return await self._run_and_settle(request, started, run, later_run)
        finally:
            ledger.forget(request.request_id)

    async def _run_and_settle(
        self, request: Request, started: Started, run: Awaitable[dict[str, Any]], later_run: bool = False
    ) -> Settlement:
        ledger = self._services.ledger
        lease = asyncio.create_task(ledger.keep_alive(request.request_id))
        try:
            result = await run
        except Failure as failure:
            if later_run:
                await self._name_earlier_orders(request, failure)
            return await self._settle(request, started, failure=failure)
        except LeaseLost as e:
            # Nothing was placed here. Still this process's claim: handed back (or, on the last attempt, answered)
            # like any transient failure, not left running until its lease lapses. Another's: that owner replies.
            if e.held:
                return await self._retry_or_dead_letter(request, started, Transient("lease_short", str(e)), True)
            log.warning("claim lost before placing; left to its owner", error=str(e))
            return Settlement.NACK
        except asyncio.CancelledError:
            if (request.delivery.delivery_attempt or 0) >= self._services.settings.max_delivery_attempts:
                # No redelivery will come (the cloud dead-letters the nack, the emulator drops it): the claim is
                # left running, unrenewed, for the stranded-request sweep to answer once (decision 8). Released,
                # nothing would ever answer it.
                log.warning("intent interrupted on its last delivery attempt; the stranded-request sweep answers it")
                return Settlement.NACK
            await ledger.release(request.request_id, "interrupted by shutdown")
            log.warning("intent interrupted by shutdown; it will be redelivered")
            return Settlement.NACK
        except Exception as e:
            return await self._retry_or_dead_letter(request, started, as_transient(e), claimed=True)
        finally:
            lease.cancel()
        return await self._settle(request, started, result=result)

    async def _run(
        self, intent: Intent, request: Request, first_run: bool = False, claim_ms: float = 0.0
    ) -> dict[str, Any]:
        """`first_run`: the claim was created now, not taken over (read-only intents run before it is known).
        `claim_ms`: how long the claim took, for a trading reply's timings (read-only intents run beside it).

        A trading or exclusive intent takes the trading lock before anything else: its config (the kill switch
        among it) and its expiry are read once the intents before it are done. Read before the wait, an allocation
        queued behind a risk-check that halted trading traded all the same."""
        if (intent.trades or intent.exclusive) and not request.dry_run:
            async with self._trading:
                return await self._run_now(intent, request, first_run, claim_ms)
        return await self._run_now(intent, request, first_run, claim_ms)

    async def _run_now(self, intent: Intent, request: Request, first_run: bool, claim_ms: float) -> dict[str, Any]:
        services = self._services
        envelope = request.envelope
        assert envelope is not None
        config = TradingConfig()
        if intent.trades:
            self._check_fresh(request)
        config_started = time.perf_counter()
        configured = intent.trades or (intent.exclusive and intent.reads_config)
        if configured:
            config = await services.config_store.load()
        config_ms = (time.perf_counter() - config_started) * 1000
        if intent.trades:
            self._check_allowed(config)
            if services.broker.read_only:
                # Before any price or order is asked for: one clear reply. A dry run too, since its plan starts
                # from the broker's working orders, which IB refuses a read-only API.
                raise GatewayReadOnly()
        if intent.needs_gateway:
            await self._apply_market_data_type(config if configured else None)
        # A dry run's intent gets a store that writes nothing; its claim and activity record are written by _settle.
        context = IntentContext(
            services=services.for_dry_run() if request.dry_run else services,
            request=request,
            config=config,
            log=log,
            first_run=first_run,
            generation=services.broker.generation if intent.needs_gateway else None,
            recheck=(lambda: self._recheck(request)) if intent.trades else None,
        )
        context.add_time("claim", claim_ms)
        context.add_time("config", config_ms)
        async with asyncio.timeout(services.settings.intent_timeout):
            return await intent.handler(context, envelope.params)

    async def _apply_market_data_type(self, config: TradingConfig | None) -> None:
        """Every intent that reads the market gets the configured marketDataType. Trading intents read the config
        anyway; read-only ones read it for this alone only until it is known (the gateway re-sends it on every
        reconnect), so a summary does not pay a Firestore read for it; an invalid config keeps the type in force."""
        if config is None:
            if self._market_data_type_known:
                return
            try:
                config = await self._services.config_store.load()
            except IntentError as e:
                log.warning("config unreadable; market data type unchanged", error=str(e))
                return
        if config.exists:
            self._services.gateway.use_market_data_type(config.market_data_type)
            self._market_data_type_known = True

    async def _recheck(self, request: Request) -> None:
        """The trading policy again, for a handler that waited (for a market's open) before it placed anything."""
        self._check_fresh(request)
        self._check_allowed(await self._services.config_store.load())

    def _check_fresh(self, request: Request) -> None:
        stale = request.staleness(self._services.settings.trading_max_age, datetime.now(UTC))
        if stale is not None:
            raise Rejected(stale[0], f"{stale[1]}; not run")

    def _check_allowed(self, config: TradingConfig) -> None:
        mode = self._services.settings.trading_mode
        path = self._services.layout.config().path
        if not config.exists:
            raise Rejected(
                "trading_disabled", f"no trading configuration at {path}: trading is off until one is written"
            )
        if not config.trading_enabled:
            halted = f": {config.halted_reason}" if config.halted_reason else ""
            raise Rejected(
                "kill_switch", f"trading is disabled by the kill switch ({path} tradingEnabled=false){halted}"
            )
        if mode == "live" and not self._services.settings.allow_live:
            # Checked first and apart from config/live: the consumer can write that document, not its deployment.
            raise Rejected(
                "live_not_allowed",
                "live trading is refused: the deployment does not set ALLOW_LIVE=yes (config/live cannot enable it)",
            )
        if mode == "live" and not config.allow_live:
            raise Rejected("live_not_allowed", "live trading is refused: config/live does not set allowLive=true")
        live = live_account_refusal(mode, self._services.account, self._services.broker.managed_accounts())
        if live is not None:
            raise Rejected("live_account", live)

    async def _duplicate(self, request: Request, claim: Claim) -> Settlement:
        if claim.state is ClaimState.DONE and claim.reply is not None:
            if claim.reply_published and claim.reply.get("messageId") == request.delivery.message_id:
                # This very message was answered by the stranded-request sweep (its copy came back after the sweep
                # adopted the claim, e.g. nacked as running elsewhere meanwhile): a second reply would be one too many.
                log.info("redelivery of a message the sweep answered; acked without a reply")
                return Settlement.ACK
            # This message's own reply, stored and never published (the publish failed, or the process died between
            # the two): published now, it is the first the request gets; marked duplicate, monitors that drop
            # duplicates never saw the outcome. A published one is marked so (`_settle`) and answered above.
            first = claim.reply_unpublished and claim.reply.get("messageId") == request.delivery.message_id
            log.info("redelivery of a reply never published; publishing it" if first else
                     "duplicate delivery; republishing the stored reply")  # fmt: skip
            try:
                envelope = request.envelope
                again = {
                    **claim.reply,
                    # The stored outcome, addressed to this delivery: monitors match replies by message id.
                    "messageId": request.delivery.message_id,
                    "idempotencyKey": envelope.idempotency_key if envelope else None,
                    **({} if first else {"duplicate": True}),
                }
                await self._services.publishing.reply(ReplyJson.of(again))
                if first:
                    self._mark_published(request.request_id)
            except Exception as e:
                if claim.reply.get("messageId") == request.delivery.message_id:
                    # A redelivery of the message whose reply never went out: on its last attempt, the sweep's.
                    return await self._publish_failed(request, str(e))
                log.warning("could not republish the stored reply; will retry", error=str(e))
                return Settlement.NACK
            return Settlement.ACK
        attempt = request.delivery.delivery_attempt or 0
        if attempt >= self._services.settings.max_delivery_attempts:
            # Its owner is alive (its lease is fresh) and will reply; dead-lettering a twin would only add noise.
            log.warning("duplicate of a request still running elsewhere; acked on its last attempt", owner=claim.owner)
            return Settlement.ACK
        log.info("request is running elsewhere; nacked until it finishes", owner=claim.owner)
        return Settlement.NACK

    async def _retry_or_dead_letter(
        self, request: Request, started: Started, error: Transient, claimed: bool
    ) -> Settlement:
        attempt = request.delivery.delivery_attempt
        limit = self._services.settings.max_delivery_attempts
        if attempt is None or attempt < limit:
            log.warning(
                "transient failure; nacked for redelivery", code=error.code, error=error.message, attempt=attempt
            )
            if claimed:
                await self._services.ledger.release(request.request_id, f"{error.code}: {error.message}")
            return Settlement.NACK
        if claimed and await self._wrote_orders(request):
            # Orders written (and perhaps placed, filled) by this request: "gave up" would be a reply that names none
            # of them while one may be at IB. Left, like a last attempt stopped by a shutdown (decision 48), to the
            # stranded-request sweep, which resolves them by orderRef and answers once with what each came to.
            log.error("last attempt failed after writing orders; the stranded-request sweep answers it",
                      code=error.code, error=error.message, attempt=attempt)  # fmt: skip
            return Settlement.NACK
        # The emulator drops a message after its last attempt instead of forwarding it, so we dead-letter it
        # ourselves; the subscription's own policy stays as the backstop in the cloud.
        log.error(
            "giving up after the last attempt; dead-lettering", code=error.code, error=error.message, attempt=attempt
        )
        try:
            await self._services.publishing.dead_letter(request.delivery, error.code, error.message)
        except Exception as e:
            log.error("could not dead-letter; nacked", error=str(e))
            return Settlement.NACK
        self._services.metrics.count("deadLettered", self._services.metrics.intent_label(request.intent))
        failure = IntentError(
            "dead_lettered",
            f"gave up after {attempt} attempts and moved the message to the dead-letter topic; last error: "
            f"{error.code}: {error.message}",
        )
        return await self._settle(request, started, failure=failure, claimed=claimed, dead_lettered=True)

    async def _name_earlier_orders(self, request: Request, failure: Failure) -> None:
        """A later run refused before it reached the books (the kill switch, stale, a closed market) still answers
        for what its earlier attempts placed: their orders, as IB has them, in `details.orders`. Its reply said only
        "refused" while a buy of the first attempt had filled. Best effort: a lookup that fails leaves the refusal."""
        try:
            earlier = await self._services.bookkeeper.orders_at_broker(request.request_id)
        except Exception as e:
            reraise_if_cancelled(e)
            log.warning("could not look up the orders of earlier attempts", error=str(e))
            return
        if not earlier:
            return
        orders = [
            {
                "orderRef": doc["orderRef"],
                "symbol": doc.get("symbol"),
                "outcome": found.fate.value if found else doc.get("state", "unknown"),
                "filled": found.filled if found else doc.get("filled", 0.0),
            }
            for doc, found in earlier
        ]
        summary = ", ".join(f"{o['orderRef']} {o['outcome']} ({o['filled']:g} filled)" for o in orders)
        failure.message = f"{failure.message}; an earlier attempt of this request placed: {clip(summary, 600)}"
        details = failure.details if isinstance(failure.details, dict) else {"problems": failure.details}
        failure.details = {**{k: v for k, v in details.items() if v is not None}, "orders": orders}

    async def _wrote_orders(self, request: Request) -> bool:
        """Whether the request wrote order documents (its orders, placed or about to be); unknown (Firestore
        failing too) reads as no, and the message is dead-lettered as before."""
        if request.dry_run:
            return False
        try:
            open_docs, closed_docs = await self._services.books.orders_of(request.request_id)
        except Exception as e:
            reraise_if_cancelled(e)
            log.warning("could not read the request's orders; dead-lettering", error=str(e))
            return False
        return bool(open_docs or closed_docs)

    async def _settle(
        self,
        request: Request,
        started: Started,
        result: dict[str, Any] | None = None,
        failure: Failure | None = None,
        claimed: bool = True,
        dead_lettered: bool = False,
    ) -> Settlement:
        services = self._services
        reply = build_reply(request, services.settings.trading_mode, started, result, failure, services.account)
        encoded = ReplyJson.of(reply)
        # Stored before it is published: a reply goes out only once its claim holds it, so a redelivery after a
        # store failure runs again and replies once, instead of a second, different reply to one request.
        try:
            await self._store_outcome(request, encoded, claimed)
        except ClaimTakenOver as e:
            # Its lease lapsed while it ran and a redelivery or the sweep took the claim: the new owner resolves
            # this run's orders at the broker by orderRef and sends the one reply (decision 39).
            log.warning(
                "claim taken over before this run stored its outcome; its new owner replies",
                status=reply["status"],
                error=str(e),
            )
            return Settlement.ACK
        except Exception as e:
            attempt = request.delivery.delivery_attempt or 0
            if attempt < services.settings.max_delivery_attempts:
                log.error("could not store the outcome; nacked", error=str(e), attempt=attempt)
                if claimed:
                    # Nobody is working on it now: a claim left running would make the redeliveries wait out its
                    # lease as duplicates, and the last one would be acked with no reply at all.
                    await services.ledger.release(request.request_id, clip(f"store_failed: {e}", 500))
                return Settlement.NACK
            # The last attempt: the reply stored with the claim alone (the activity record is what Firestore
            # refuses, as a rule), then one reply, and the message to the dead-letter topic with what went wrong.
            log.error("could not store the outcome on the last attempt; dead-lettering", error=str(e))
            answerable = not claimed or await self._finish_claim_alone(request, encoded)
            try:
                if not dead_lettered:  # once per message, even when the failure that got it here was dead-lettered
                    await services.publishing.dead_letter(request.delivery, "store_failed", clip(str(e), 500))
            except Exception as dead:
                log.error("could not dead-letter; nacked", error=str(dead))
                return Settlement.NACK
            if not answerable:
                # A claim left running is the stranded-request sweep's to answer once Firestore takes writes again
                # (its lease has stopped being renewed). A reply now would be a second one then.
                log.error(
                    "could not store the reply with its claim either; no reply: the stranded-request sweep answers it",
                    status=reply["status"],
                    **({"error": reply["error"]} if reply.get("error") else {}),
                )
                return Settlement.ACK
        return await self._publish(request, encoded, claimed)

    async def _publish(self, request: Request, encoded: ReplyJson, claimed: bool) -> Settlement:
        """Publishes a stored reply (a failure leaves it to a redelivery, or the sweep); marks its claim published."""
        services = self._services
        reply = encoded.reply
        try:
            await services.publishing.reply(encoded)
        except Exception as e:
            if claimed:
                return await self._publish_failed(request, str(e))
            return await self._unclaimed_publish_failed(request, encoded, str(e))
        if claimed:
            # A redelivery of this message (its ack lost) is then acked without a second reply, and one of a reply
            # stored but never published (a kill between the two) publishes it as the first (`_duplicate`). Apart
            # from the ack: the reply is out, so the message is acked, however slow Firestore is or a stop that
            # aborts in-flight work (awaited here, a stop cancelled it and nacked, and the message got two replies).
            self._mark_published(request.request_id)
        services.metrics.observe_intent(reply["intent"], reply["status"], reply["durationMs"])
        log_method = log.info if reply["status"] == "ok" else log.warning
        log_method(
            "intent finished",
            status=reply["status"],
            durationMs=reply["durationMs"],
            **({"alert": True} if reply.get("alert") else {}),
            **({"error": reply["error"]} if reply.get("error") else {}),
        )
        return Settlement.ACK

    def _mark_published(self, request_id: str) -> None:
        async def mark() -> None:
            with contextlib.suppress(Exception):
                await self._services.ledger.published(request_id)

        task = asyncio.get_running_loop().create_task(mark(), name=f"published {request_id[:40]}")
        self._marking.add(task)
        task.add_done_callback(self._marking.discard)

    async def _publish_failed(self, request: Request, error: str) -> Settlement:
        """A reply stored with its claim could not be published. Nacked, the redelivery answers from the stored
        reply; on the last attempt there is no redelivery (the emulator drops the message, the cloud dead-letters
        it unanswered), so the reply is marked pending and the stranded-request sweep publishes it (decision 39)."""
        attempt = request.delivery.delivery_attempt or 0
        if attempt < self._services.settings.max_delivery_attempts:
            log.error("could not publish the reply; nacked", error=error, attempt=attempt)
            return Settlement.NACK
        try:
            await self._services.ledger.reply_pending(request.request_id)
        except Exception as e:
            log.error("could not publish the reply on the last attempt, nor leave it to the sweep", error=str(e))
            return Settlement.NACK
        log.error("could not publish the reply on the last attempt; the sweep publishes it", error=error)
        return Settlement.ACK

    async def _unclaimed_publish_failed(self, request: Request, reply: ReplyJson, error: str) -> Settlement:
        """A reply with no claim (a bad request, a conflicting one) could not be published. Nacked, the redelivery
        answers again; the last attempt stores it pending for the sweep, as `_publish_failed` does a claimed one:
        nacked there too, the message was dropped (the emulator) or dead-lettered unanswered (Pub/Sub)."""
        attempt = request.delivery.delivery_attempt or 0
        if attempt < self._services.settings.max_delivery_attempts:
            log.error("could not publish the reply; nacked", error=error, attempt=attempt)
            return Settlement.NACK
        try:
            await self._services.ledger.store_pending_reply(request.delivery.message_id, reply)
        except Exception as e:
            log.error("could not publish the reply on the last attempt, nor leave it to the sweep", error=str(e))
            return Settlement.NACK
        log.error("could not publish the reply on the last attempt; the sweep publishes it", error=error)
        return Settlement.ACK

    async def _finish_claim_alone(self, request: Request, reply: ReplyJson) -> bool:
        """The claim finished with its reply, without the activity record: whether the reply may go out. Once the
        claim is done, nothing answers the request again (the sweep takes only running claims, a redelivery gets the
        stored reply); a claim still running would be answered by the sweep, so it may not."""
        ledger = self._services.ledger
        try:
            await ledger.commit_as_owner(
                request.request_id, lambda batch: ledger.finish(batch, request.request_id, reply)
            )
        except ClaimTakenOver:
            log.warning("claim taken over before this run stored its outcome; its new owner replies")
            return False
        except google_exceptions.NotFound:
            return True  # the claim is gone (its documents deleted): no sweep will find it, this is the one reply
        except Exception as e:
            log.error("could not store the reply with its claim", error=clip(str(e), 300))
            return False
        return True

    async def _store_outcome(self, request: Request, reply: ReplyJson, claimed: bool) -> None:
        services = self._services
        params = request.envelope.params if request.envelope else None
        for attempt_params in (params, None):

            def fill(batch: AsyncWriteBatch, attempt_params: dict[str, Any] | None = attempt_params) -> None:
                if claimed:
                    services.ledger.finish(batch, request.request_id, reply)
                # The client encodes the record here, and refuses what it cannot encode (an integer beyond 64 bits:
                # ValueError) before anything is sent; Firestore refuses at commit what it will not keep.
                services.activity.record(batch, reply, attempt_params, request.delivery.delivery_attempt)

            try:
                if claimed:
                    await services.ledger.commit_as_owner(request.request_id, fill)
                else:
                    batch = services.db.batch()
                    fill(batch)
                    await batch.commit()
                return
            except (google_exceptions.InvalidArgument, ValueError, TypeError) as e:
                if attempt_params is None:
                    raise
                # The record was refused (too large, a name Firestore reserves, a value it cannot encode): keep the
                # outcome, drop the params.
                log.warning("activity record refused; storing it without its params", error=clip(str(e), 300))


class AccountDispatchers:
    """One Dispatcher per served account (its own trading lock and books), chosen by the request's account: the
    accounts of one login trade side by side, each one intent at a time."""

    def __init__(self, services: Services, intents: dict[str, Intent]) -> None:
        self._first = Dispatcher(services, intents)
        self._by_account = {
            account: self._first if view is services else Dispatcher(view, intents)
            for account, view in services.accounts.items()
        }

    async def handle(self, request: Request) -> Settlement:
        dispatcher = self._by_account.get(request.account or "", self._first)
        return await dispatcher.handle(request)

    async def abort_all(self) -> None:
        for dispatcher in self._by_account.values():
            await dispatcher.abort_all()

    @property
    def in_flight(self) -> int:
        return sum(d.in_flight for d in self._by_account.values())


def build_reply(
    request: Request,
    trading_mode: str,
    started: Started,
    result: dict[str, Any] | None,
    failure: Failure | None,
    account: str | None = None,
) -> dict[str, Any]:
    finished = datetime.now(UTC)
    envelope = request.envelope
    return {
        "requestId": request.request_id,
        "messageId": request.delivery.message_id,
        "idempotencyKey": envelope.idempotency_key if envelope else None,
        "intent": request.intent,
        "status": failure.status if failure else "ok",
        "result": None if failure else result,
        "error": failure.as_reply() if failure else None,
        "tradingMode": trading_mode,
        "account": account,
        "dryRun": request.dry_run,
        "schedule": envelope.schedule if envelope else request.delivery.attributes.get("schedule"),
        "startedAt": started.at.isoformat(),
        "finishedAt": finished.isoformat(),
        "durationMs": started.elapsed_ms(),
        # risk-check's breaches: repeated as the reply's `alert` attribute, the one thing monitoring filters on.
        **({"alert": True} if result and result.get("alert") is True else {}),
    }
