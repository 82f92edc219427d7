"""Requests ib_insync keys by a fixed name, shared safely between concurrent callers on the broker loop.

ib_insync files the answer to `reqPositions`, `reqOpenOrders`/`reqAllOpenOrders`, `reqCompletedOrders` and
`reqCurrentTime` under one fixed key each. A second call while one is in flight replaces the first call's future,
which then never resolves: two summaries at once, or the bookkeeper's sweep beside an allocation, would hang. It
also subscribes the account summary on every call made before the first answer, and IB allows a client two.

Every caller here gets an answer requested after it asked (a caller never gets a stale one that was already on
its way, which matters right after placing an order): callers that arrive while a request is in flight wait for
it to finish, then share the next one. A request IB never answers (its answers get lost now and then) fails its
callers after `within` seconds and is asked afresh by the next caller: waited on for ever, it stopped every later
request of its kind until a reconnect, while the heartbeat kept the connection up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from ib_insync import IB, AccountValue, ExecutionFilter, Fill, Position, Trade

from consumer.errors import GatewayReadOnly

# IB Gateway 10.19+ leaves a second reqCurrentTime within 1 s unanswered (no error): keep requests further apart
# than that, with a margin for the socket's jitter (the gateway measures the gap on arrival).
CURRENT_TIME_GAP = 1.1


class SharedRequests:
    """The fixed-key requests of one connection (see above), each shared by the callers waiting at the same time.

    `reset` fails what is in flight; the gateway calls it after every disconnect. `on_time` is told the gateway's
    time from every current-time answer. `read_only`, set by the gateway at every connect, is whether the gateway's
    API is read-only: then the order lists are refused here (GatewayReadOnly) rather than sent, since IB would
    refuse them with 321 and never end them.
    """

    def __init__(self, ib: IB, within: float, on_time: Callable[[datetime], None] | None = None) -> None:
        self._ib = ib
        self._within = within
        self._on_time = on_time
        self.read_only = False
        self._in_flight: dict[str, asyncio.Future[Any]] = {}
        self._current_time_sent = -CURRENT_TIME_GAP

    async def positions(self) -> list[Position]:
        return await self._fresh("positions", self._ib.reqPositionsAsync)

    async def open_orders(self) -> list[Trade]:
        """Every open order of the account, whichever client placed it."""
        if self.read_only:
            raise GatewayReadOnly()
        return await self._fresh("openOrders", self._ib.reqAllOpenOrdersAsync)

    async def completed_orders(self) -> list[Trade]:
        if self.read_only:
            raise GatewayReadOnly()
        return await self._fresh("completedOrders", lambda: self._ib.reqCompletedOrdersAsync(apiOnly=True))

    async def executions(self) -> list[Fill]:
        """Today's executions (no filter). Safe to call concurrently anyway; sharing saves pacing budget."""
        return await self._fresh("executions", lambda: self._ib.reqExecutionsAsync(ExecutionFilter()))

    async def account_summary(self) -> list[AccountValue]:
        """Every account's summary values. ib_insync subscribes on a call made while it holds none, and never
        cancels; IB refuses a client's third subscription (322), so callers that arrive before the first answer
        share its request, and later ones read the values the subscription keeps current."""
        if self._ib.wrapper.acctSummary:
            return await self._ib.accountSummaryAsync()
        return await self._fresh("accountSummary", self._ib.accountSummaryAsync)

    async def current_time(self) -> datetime:
        """The heartbeat, the clock-offset read and ping share this; at most one request per CURRENT_TIME_GAP."""
        return await self._fresh("currentTime", self._spaced_current_time)

    def _spaced_current_time(self) -> asyncio.Future[datetime]:
        """A plain future (not a task), so that `reset` can fail it like the others; the request is sent once
        CURRENT_TIME_GAP has passed since the last one: a client-side rate limit, not a wait for a broker state."""
        answer: asyncio.Future[datetime] = asyncio.get_running_loop().create_future()

        async def ask() -> None:
            await asyncio.sleep(max(0.0, self._current_time_sent + CURRENT_TIME_GAP - time.monotonic()))
            self._current_time_sent = time.monotonic()
            try:
                gateway_time = await self._ib.reqCurrentTimeAsync()
            except Exception as e:  # handed to the callers, who decide
                if not answer.done():
                    answer.set_exception(e)
                return
            # Also a gap after the answer: a request held in ib_insync's throttle (behind a burst of orders) reaches
            # the gateway late, and the next one sent a gap after it was asked for could follow it within a second.
            self._current_time_sent = time.monotonic()
            if self._on_time is not None:
                self._on_time(gateway_time)  # every answer tells the gateway's clock, whoever asked
            if not answer.done():
                answer.set_result(gateway_time)

        asking = asyncio.ensure_future(ask())
        answer.add_done_callback(lambda _: asking.cancel())  # failed by reset: stop asking
        return answer

    async def _fresh(self, key: str, start: Callable[[], Awaitable[Any]]) -> Any:
        current = self._in_flight.get(key)
        if current is not None:
            await asyncio.wait([current])  # its outcome is its callers' business
        following = self._in_flight.get(key)
        if following is None or following is current:
            following = self._bounded(key, start)
            self._in_flight[key] = following
            following.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(following)

    def _bounded(self, key: str, start: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        """The request's answer as a plain future (`reset` fails it, which stops the request), failed with
        TimeoutError if IB has not answered within `within` seconds."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        request = asyncio.ensure_future(asyncio.wait_for(start(), self._within))

        def relay(done: asyncio.Future[Any]) -> None:
            if answer.done():
                return
            if done.cancelled():
                answer.cancel()
            elif isinstance(done.exception(), TimeoutError):
                answer.set_exception(TimeoutError(f"IB did not answer {key} in {self._within:g} s"))
            elif done.exception() is not None:
                answer.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                answer.set_result(done.result())

        request.add_done_callback(relay)
        answer.add_done_callback(lambda _: request.cancel())
        return answer

    def reset(self, reason: str = "the connection to the gateway was reset") -> None:
        """Fails what is in flight. Called on every (re)connect: ib_insync forgets its pending requests when the
        connection goes, and a future it forgot would otherwise keep every later caller waiting."""
        in_flight, self._in_flight = self._in_flight, {}
        for future in in_flight.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))

    def _forget(self, key: str, done: asyncio.Future[Any]) -> None:
        if self._in_flight.get(key) is done:
            del self._in_flight[key]
        if not done.cancelled():
            done.exception()  # retrieved: a failure is raised to every caller, not logged as "never retrieved"
