"""What an intent is: a name, a params schema, whether it trades, and a plain async handler.

Handlers receive an `IntentContext` holding everything they may use, passed in rather than imported, so an intent
is testable against any gateway and store, and nothing is created at import time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from consumer.intents import params_schema

if TYPE_CHECKING:
    from consumer.broker.broker import Broker, OrderSnapshot
    from consumer.broker.orders import ConnectionRecord
    from consumer.envelope import Request
    from consumer.services import Services
    from consumer.store.trading_config import TradingConfig

PHASES = ("claim", "config", "books", "contracts", "prices", "signals", "orders", "confirmations")

Handler = Callable[["IntentContext", dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Intent:
    """An intent: its name (the message's `intent`), handler and description; params are checked against
    schemas/intents/{name}.schema.json before the handler runs."""

    name: str
    handler: Handler
    description: str
    # Trading intents pass the kill switch and live guard, are rejected when stale, and never run concurrently with
    # each other; read-only ones may run side by side and are retried freely.
    trades: bool = False
    # Not a trading intent, yet it may act (risk-check's halt and reduce): it is claimed before it runs, gets the
    # config, and runs under the trading lock, but passes no kill switch (it may be what turns it off).
    exclusive: bool = False
    # An exclusive intent that reads no config (reconcile) is not refused for an invalid one: the comparison a
    # person needs while mending the config keeps answering.
    reads_config: bool = True
    # Held while the gateway is away (consumer.intake); ping answers regardless, saying it is away.
    needs_gateway: bool = True

    @property
    def schema(self) -> str:
        return params_schema(self.name)


@dataclass(slots=True)
class IntentContext:
    """What a handler is given: the services (`broker` among them), the request, its mode's config, its logger."""

    services: Services
    request: Request
    config: TradingConfig
    log: structlog.stdlib.BoundLogger
    # Milliseconds per phase of a trading intent (books, contracts, prices, signals, orders, confirmations): where
    # a slow rebalance spends its time, in its own reply.
    timings: dict[str, float] = field(default_factory=dict)
    # A first run (its claim was created, not taken over: no earlier delivery of the request id ran as far as
    # Firestore knows) and the connection generation when it started: such a run looks its orders up in the
    # connection's own record instead of a fresh download (see orders_to_look_up).
    first_run: bool = False
    generation: int | None = None
    # The dispatcher's policy for a trading intent (its expiry, the kill switch, the live guard), asked again by a
    # handler that waited (for a market's open): it raises Rejected when the intent may no longer trade.
    recheck: Callable[[], Awaitable[None]] | None = None

    async def still_allowed(self) -> None:
        """Raises Rejected if the request expired or trading was turned off since the dispatcher let it through."""
        if self.recheck is not None:
            await self.recheck()

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Adds the time spent inside to `phase` (a phase entered twice, e.g. books after a cancel, adds up)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add_time(phase, (time.perf_counter() - started) * 1000)

    def add_time(self, phase: str, ms: float) -> None:
        self.timings[phase] = round(self.timings.get(phase, 0.0) + ms, 1)

    def phase_timings(self) -> dict[str, float]:
        """Every phase a trading reply reports, 0 for one the intent never entered."""
        return {phase: self.timings.get(phase, 0.0) for phase in PHASES}

    @property
    def broker(self) -> Broker:
        """The one door to IB (consumer.broker.broker); its calls raise Transient (so the message is retried)
        while the gateway is away."""
        return self.services.broker

    def market_now(self) -> datetime:
        """Now by the gateway's clock: what decides whether an exchange is open (see Gateway.now)."""
        return self.services.broker.now()

    def orders_to_look_up(self) -> OrderSnapshot | None:
        """Started at a trading intent's beginning, read before placing (`send_orders`); None for a dry run.

        A redelivery or a claim taken over asks the broker afresh for every open and completed order and execution
        (an earlier run may have placed anything, on any connection); a first run reads the connection's record,
        which holds every order of our client id at no cost, unless the connection dropped since it started.
        """
        if self.dry_run:
            return None
        return self.broker.ask_orders(self.generation if self.first_run else None)

    def connection_record(self) -> ConnectionRecord | None:
        """The connection's record as the books phase reads it (the sweep, check_books), on every run: while the
        connection the intent started on holds, it is the broker's word for our client id (decision 14)."""
        return self.broker.record(self.generation)

    @property
    def dry_run(self) -> bool:
        return self.request.dry_run

    @property
    def request_id(self) -> str:
        return self.request.request_id
