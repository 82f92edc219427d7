"""From a Pub/Sub delivery to a settled outcome. Runs in the subscriber's callback threads.

The callback does no broker work: it decodes and validates the message here, hands it to the broker loop with
`run_coroutine_threadsafe`, and waits for the dispatcher's verdict (ack or nack). Waiting keeps the message leased
by the client library while the intent runs, and lets a graceful shutdown drain in-flight intents: the library
waits for running callbacks before it stops sending acks.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Mapping
from dataclasses import replace
from zoneinfo import ZoneInfo

from consumer.accounts import AccountDirectory, Address, Route
from consumer.broker.loop import BrokerLoop
from consumer.dispatch import AccountDispatchers, Dispatcher, Settlement
from consumer.envelope import Delivery, Request, to_request
from consumer.errors import BadRequest
from consumer.intents.base import Intent
from consumer.logs import get_logger
from consumer.schemas import Schemas, SchemaViolation

log = get_logger(__name__)


class RequestDecoder:
    """From a delivery to a Request, in the callback thread and without the broker: routes it by account (`address`),
    decodes and validates it against the schemas, the intents and the scheduled jobs (`decode`), and says whether it
    needs the gateway (`needs_gateway`), so that requests that do not are not held while it is away.
    """

    def __init__(
        self,
        schemas: Schemas,
        intents: dict[str, Intent],
        schedule_zone: ZoneInfo,
        schedule_intents: Mapping[str, str] | None = None,
        directory: AccountDirectory | None = None,
        schedule_accounts: Mapping[str, list[str]] | None = None,
    ) -> None:
        self._schemas = schemas
        self._directory = directory
        self._schedule_accounts = schedule_accounts or {}
        self._intents = intents
        self._zone = schedule_zone
        self._schedule_intents = schedule_intents

    def address(self, delivery: Delivery) -> Address | None:
        """Whose message this is, from its attributes alone (None: no routing, the one-deployment tests)."""
        return self._directory.route(delivery.attributes) if self._directory is not None else None

    def decode(self, delivery: Delivery, address: Address | None = None) -> Request:
        request = to_request(delivery, self._schemas, self._zone, self._schedule_intents)
        if address is None:
            return self._checked(request)
        assert self._directory is not None
        envelope = request.envelope
        if envelope is not None:
            body = {"account": envelope.account, "tradingMode": envelope.trading_mode}
            address = self._directory.settle(address, delivery.attributes, {k: v for k, v in body.items() if v})
        if address.problem is None and envelope is not None and envelope.schedule:
            address = self._directory.check_schedule(
                address, envelope.schedule, self._schedule_accounts.get(envelope.schedule)
            )
        request = replace(request, account=address.account)
        if address.problem is not None:
            # The address is checked first: a message for the wrong account must not run, however valid.
            return replace(request, envelope=None, problem=address.problem)
        return self._checked(request)

    def _checked(self, request: Request) -> Request:
        envelope = request.envelope
        if envelope is None:
            return request
        intent = self._intents.get(envelope.intent)
        problem: BadRequest | None = None
        if intent is None:
            problem = BadRequest(
                "unknown_intent",
                f"unknown intent {envelope.intent!r}; known intents: {', '.join(sorted(self._intents))}",
            )
        else:
            try:
                self._schemas.validate(intent.schema, envelope.params, where="params")
            except SchemaViolation as e:
                problem = BadRequest("invalid_params", f"invalid params for {intent.name}: {e}", details=e.problems)
        if problem is None:
            return request
        return replace(request, envelope=None, problem=problem)

    def needs_gateway(self, request: Request) -> bool:
        envelope = request.envelope
        return envelope is not None and self._intents[envelope.intent].needs_gateway


class Intake:
    """`open` is set while the gateway is connected; while it is clear, requests that need it wait here, leased (the
    client library keeps extending their deadlines and flow control stops further pulls), instead of being
    nacked and burning delivery attempts. `stopping` releases them as nacks at shutdown (a last delivery attempt
    goes to the dispatcher instead, to be answered)."""

    HOLD_POLL_SECONDS = 0.5

    def __init__(
        self,
        decoder: RequestDecoder,
        dispatcher: Dispatcher | AccountDispatchers,
        loop: BrokerLoop,
        wait_limit: float,
        open_: threading.Event | None = None,
        stopping: threading.Event | None = None,
        max_delivery_attempts: int = 5,
    ) -> None:
        self._decoder = decoder
        self._dispatcher = dispatcher
        self._loop = loop
        self._wait_limit = wait_limit
        self._open = open_ or threading.Event()
        self._stopping = stopping or threading.Event()
        self._max_delivery_attempts = max_delivery_attempts
        if open_ is None:
            self._open.set()

    def __call__(self, delivery: Delivery) -> Settlement:
        try:
            address = self._decoder.address(delivery)
            if address is not None and address.route is Route.IGNORE:
                # Another deployment's (its own subscription has a copy): no effect, no reply, no record.
                log.debug("message for another deployment; acked", messageId=delivery.message_id)
                return Settlement.ACK
            request = self._decoder.decode(delivery, address)
        except Exception:
            # Decoding is ours and pure; a crash here is a bug, and the message must not be lost to it.
            log.exception("could not decode message; nacked", messageId=delivery.message_id)
            return Settlement.NACK
        # A bad request keeps its problem and still goes to the loop: its error reply and activity record are
        # written by the same code path as every other outcome (and need no gateway, so they are not held).
        if self._decoder.needs_gateway(request):
            while not self._open.wait(self.HOLD_POLL_SECONDS):
                if self._stopping.is_set():
                    if (delivery.delivery_attempt or 0) < self._max_delivery_attempts:
                        return Settlement.NACK
                    # No redelivery will come: run now, and the gateway's absence is its one reply (with the
                    # message dead-lettered), not a nack that drops it unanswered.
                    break
        future = self._loop.submit(self._dispatcher.handle(request))
        try:
            return future.result(timeout=self._wait_limit)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.error("intent overran its time limit; nacked", messageId=delivery.message_id, limit_s=self._wait_limit)
            return Settlement.NACK
        except concurrent.futures.CancelledError:
            return Settlement.NACK
        except Exception:
            log.exception("dispatcher failed; nacked", messageId=delivery.message_id)
            return Settlement.NACK
