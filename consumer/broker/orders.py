"""The order engine: place orders concurrently, wait on the broker's own events, report each one's fate.

Every order carries an `orderRef` derived from the request id and the leg, so an order can always be found again:
a re-run of the same request (a redelivery, a crash) places only the legs the broker does not already have, and
an order whose confirmation timed out is looked up, never re-placed blindly.

No sleeps: confirmation is awaited on ib_insync's trade status events, raced against the disconnect event (a
dropped gateway resets ib_insync's trades, so waiting on the old ones would only run out the timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ib_insync import IB, Fill, LimitOrder, MarketOrder, Order, TagValue, Trade

from consumer.broker import views
from consumer.broker.instruments import Instrument
from consumer.broker.model import STATUSES, Fate, Quote, meaning
from consumer.broker.shared import SharedRequests
from consumer.errors import GatewayReadOnly, IntentError
from consumer.store.trading_config import OrderDefaults

# From the one status table (consumer.broker.model.STATUSES). CONFIRMED settles the wait for an order type that
# rests (the broker has accepted, finished or refused it); DONE settles it for MKT and LMT.
DONE = {s for s, m in STATUSES.items() if m.done}
ACCEPTED = {s for s, m in STATUSES.items() if m.accepted}
CONFIRMED = ACCEPTED | DONE
# IB sends a rejection's error message right behind its Inactive status: a protocol detail, not a setting.
INACTIVE_GRACE = 1.0


def limit_price(quantity: float, reference: float, offset_bps: float, tick: float) -> float:
    """A marketable limit: `offset_bps` through the quote on the order's side, rounded to the tick towards the passive
    side (down for a buy, up for a sell), so the price never goes further than the offset allows."""
    buying = quantity > 0
    target = reference * (1 + offset_bps / 10_000) if buying else reference * (1 - offset_bps / 10_000)
    if tick <= 0:
        return target
    ticks = target / tick
    # A price already on the tick must stay there despite binary fractions (520.53 / 0.01 = 52052.99999...).
    whole = math.floor(ticks + 1e-9) if buying else math.ceil(ticks - 1e-9)
    decimals = max(0, -math.floor(math.log10(tick)) + 2)
    return round(whole * tick, decimals)


def order_ref(intent: str, request_id: str, leg: str) -> str:
    """Stable per (request, leg): the key that finds an order again after a crash or a redelivery."""
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:12]
    return f"{intent[:5]}-{digest}-{re.sub(r'[^A-Za-z0-9.]', '_', leg)[:20]}"


@dataclass(frozen=True, slots=True)
class LegOrder:
    """One order to place: signed quantity on an instrument, under its orderRef (and, for LMT, its price).
    `former_ref`: the orderRef the same leg had before refs carried the conId (decision 38), under which an order
    placed before that upgrade is still found, on this instrument only."""

    order_ref: str
    instrument: Instrument
    quantity: float  # signed
    limit_price: float | None = None
    former_ref: str = ""

    @classmethod
    def of_instrument(cls, intent: str, request_id: str, instrument: Instrument, quantity: float) -> LegOrder:
        """A leg per (request, instrument): the conId tells apart the listings one symbol has (SAP on IBIS and on
        NYSE, SHOP on TSX and on NYSE), which one request may well trade together (a strategy moving from one to
        the other, two strategies, a close-all). Under the symbol alone they shared one orderRef: one leg was found
        as the other's order and never placed, or one's working order was never cancelled."""
        symbol_ref = order_ref(intent, request_id, instrument.symbol)
        return cls(f"{symbol_ref}-{instrument.con_id}", instrument, quantity, former_ref=symbol_ref)


@dataclass(slots=True)
class Outcome:
    """One order's fate as a reply reports it: placed now, or found at the broker (`existing`)."""

    order_ref: str
    fate: Fate
    status: str = ""
    order_id: int | None = None
    perm_id: int | None = None
    client_id: int | None = None
    filled: float = 0.0
    remaining: float | None = None
    avg_fill_price: float | None = None
    error: dict[str, Any] | None = None
    existing: bool = False  # found at the broker from an earlier run, not placed now
    order_type: str = ""
    limit_price: float | None = None
    tif: str = ""
    held: dict[str, Any] | None = None  # IB holds it (399: for the session; 404: for a locate): code, text, until
    notes: list[dict[str, Any]] | None = None  # IB's notes that hold nothing (399: a forex odd lot): code, text
    con_id: int = 0  # the instrument's, as the broker gave it (0: not given)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "orderRef": self.order_ref,
            "outcome": self.fate.value,
            "status": self.status,
            "orderId": self.order_id,
            "permId": self.perm_id,
            "filled": self.filled,
            "remaining": self.remaining,
            "avgFillPrice": self.avg_fill_price,
            "existing": self.existing,
        }
        if self.order_type:
            out.update(orderType=self.order_type, limitPrice=self.limit_price, tif=self.tif)
        if self.error:
            out["error"] = self.error
        if self.held:
            out["held"] = self.held
        if self.notes:
            out["notes"] = self.notes
        return out


def outcome_of(trade: Trade, existing: bool = False) -> Outcome:
    status = views.status(trade)
    filled = views.filled(trade)
    fate = meaning(status).fate
    rejection = _rejection(trade)
    if views.noted_cancel(trade):
        fate = Fate.UNCONFIRMED  # IB's error on an order it had accepted: a note, or its cancel; IB is asked which
    elif fate is Fate.CANCELLED and rejection:
        fate = Fate.REJECTED  # IB refused it (ib_insync marks that Cancelled, with the error)
    refused = fate is Fate.REJECTED
    return Outcome(
        order_ref=trade.order.orderRef,
        fate=fate,
        con_id=trade.contract.conId,
        status=status,
        order_id=trade.order.orderId or None,
        perm_id=trade.order.permId or None,
        client_id=trade.order.clientId,
        filled=filled,
        remaining=trade.orderStatus.remaining,
        # None where IB gives none: a completed order carries no average price
        avg_fill_price=(views.number(trade.orderStatus.avgFillPrice) or None) if filled else None,
        error=rejection if refused else None,
        existing=existing,
        order_type=trade.order.orderType,
        limit_price=views.number(trade.order.lmtPrice) if trade.order.orderType == "LMT" else None,
        tif=trade.order.tif,
        notes=[rejection] if rejection and not refused else None,  # what IB said of an order it kept
    )


# IB's notes on an order that are no refusal: a requested cancel (202), a held order (399: until its session; 404:
# a short sale until shares to borrow are located), delayed data (10167). A 399 holds the order only when it says
# so ("... will not be placed at the exchange until ..."): IB also sends 399 for a forex order it routes as an odd
# lot ("Your order size is below the USD 25000 IdealPro minimum ..."), which fills.
_HOLDS = {399, 404}
_ORDER_NOTES = {202, 10167} | _HOLDS
_HOLDS_UNTIL = re.compile(r"will not be placed at the exchange until", re.IGNORECASE)
# A 202 with a reason is IB cancelling an order by itself ("Order Canceled - reason:The order price is outside of the
# allowable price limits"); the cancel a client asks for is "Order Canceled - reason:" with none.
_IB_CANCELLED = re.compile(r"reason:\s*\S")


def cancelled_by_ib(code: int, message: str) -> bool:
    return code == 202 and _IB_CANCELLED.search(message) is not None


def holds(code: int, message: str) -> bool:
    """Whether IB's message holds the order (a closed session, a locate) rather than noting something about it."""
    return code == 404 or (code == 399 and _HOLDS_UNTIL.search(message) is not None)


# ib_insync logs an order's error as "Error 201, reqId 16: <IB's text>"; the reply carries IB's text as IB sent it.
_IB_INSYNC_PREFIX = re.compile(r"^Error -?\d+, reqId -?\d+: ")


# "Order Message: ... Warning: your order will not be placed at the exchange until 2026-12-07 09:30:00 US/Eastern"
_HELD_UNTIL = re.compile(r"until (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) ([A-Za-z_/+-]+)")


def held_note(code: int, message: str) -> dict[str, Any]:
    """IB's 399 or 404 as a reply reports it: the text as IB sent it and, when the text names it, the time IB will
    place the order (ISO 8601; IB's zone names such as US/Eastern are tz database links; a locate names none)."""
    note: dict[str, Any] = {"code": code, "message": message, "until": None}
    found = _HELD_UNTIL.search(message)
    if found:
        with contextlib.suppress(ValueError, ZoneInfoNotFoundError):
            local = dt.datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo(found[2]))
            note["until"] = local.isoformat()
    return note


# IB's refusals of a cancel: not cancellable now (161: the exchange has a cancel already), already finished
# (10148), not found (10147). ib_insync marks the order Cancelled on any of them; what became of it is asked.
_CANCEL_REFUSALS = {161, 10147, 10148}


def _refused_cancel(trade: Trade) -> bool:
    """The order's Cancelled is ib_insync's reading of IB's refusal to cancel it, not IB's own status."""
    last = trade.log[-1] if trade.log else None
    return bool(last and last.status == "Cancelled" and last.errorCode in _CANCEL_REFUSALS)


def with_zone(good_after_time: str, time_zone: str) -> str:
    """A goodAfterTime that names its zone: without one, IB reads it in the login's time zone (set at login), but
    the closed-market check, and the schema's documentation, read it in the instrument's (consumer.broker.hours)."""
    return f"{good_after_time} {time_zone}" if len(good_after_time.split()) == 2 and time_zone else good_after_time


def _rejection(trade: Trade) -> dict[str, Any] | None:
    for entry in reversed(trade.log):
        if entry.errorCode and entry.errorCode not in {202}:  # 202 is IB's note on a requested cancel
            return {"code": entry.errorCode, "message": _IB_INSYNC_PREFIX.sub("", entry.message, count=1)}
    return None


class _OrderMessages:
    """IB's messages on the orders being placed, by orderId.

    ib_insync files some of IB's refusals among its warnings (110: price off the tick grid) and leaves them out of
    the trade's log; they are caught here so that a refused leg still carries IB's code and text. An order IB holds
    (PreSubmitted + 399 until its session opens, + 404 until shares to sell short are located) is working: waiting
    for it to fill would only run out the timeout, so the hold settles its wait at once (`held_future`) and the
    reply says it is held, with IB's text.
    """

    def __init__(self) -> None:
        self.errors: dict[int, dict[str, Any]] = {}
        self.notes: dict[int, list[dict[str, Any]]] = {}
        self._held: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def held_future(self, trade: Trade) -> asyncio.Future[dict[str, Any]]:
        return self._held.setdefault(trade.order.orderId, asyncio.get_running_loop().create_future())

    def on_error(self, req_id: int, code: int, message: str, contract: Any) -> None:
        if holds(code, message):
            future = self._held.setdefault(req_id, asyncio.get_running_loop().create_future())
            if not future.done():
                future.set_result(held_note(code, message))
        elif code in _HOLDS:
            self.notes.setdefault(req_id, []).append({"code": code, "message": message})
        elif (code not in _ORDER_NOTES and code < 2100) or cancelled_by_ib(code, message):
            self.errors[req_id] = {"code": code, "message": message}

    def held_note(self, trade: Trade) -> dict[str, Any] | None:
        future = self._held.get(trade.order.orderId)
        return future.result() if future is not None and future.done() and not future.cancelled() else None

    def close(self) -> None:
        for future in self._held.values():
            if not future.done():
                future.cancel()


def _resolved(sent: Outcome, found: Outcome) -> Outcome:
    """What the broker's lists say of a leg sent now and left unconfirmed: sent now (the reply counts it sent and
    the books record its ids), with what IB said of it; one IB cancelled after an error it sent was refused."""
    said = sent.notes or found.notes
    if found.fate is Fate.CANCELLED and said:
        return replace(found, existing=False, fate=Fate.REJECTED, error=said[-1], notes=None)
    return replace(found, existing=False, notes=said, held=sent.held or found.held)


LOOKUP_TIMEOUT = 60.0  # the default of ORDER_LOOKUP_TIMEOUT_SECONDS (Settings)


class OrderEngine:
    """Places one request's orders and reports each one's fate; built per request by `Broker.order_engine`.

    `find` first (a leg the broker already has is never sent again), then `priced` (LMT only: a marketable limit
    from each leg's quote), then `place`: every leg is sent at once and awaited on its own status events, up to the
    timeout (the config's orderDefaults.timeoutSeconds, else the service's). A leg still unanswered is looked up by
    orderRef and, if still unknown, reported unconfirmed: it may be live, so it is never placed again.
    """

    def __init__(
        self,
        ib: IB,
        requests: SharedRequests,
        defaults: OrderDefaults,
        properties: Mapping[str, Any],
        timeout: float,
        account: str,
        progress: Callable[[int, int], None] | None = None,
        lookup_timeout: float = LOOKUP_TIMEOUT,
    ) -> None:
        self._ib = ib
        self._lookup_timeout = lookup_timeout
        self._requests = requests
        self._progress = progress
        self._confirmed = 0
        self._defaults = defaults
        self._properties = dict(properties)
        self._timeout = defaults.timeout_seconds or timeout
        self._account = account
        # Of the last `place`: handing the legs to ib_insync, then waiting for every one to settle.
        self.sending_ms = 0.0
        self.confirming_ms = 0.0

    @property
    def limits(self) -> bool:
        return self._defaults.order_type == "LMT"

    def priced(self, legs: Iterable[LegOrder], quotes: Mapping[int, Quote]) -> list[LegOrder]:
        """Legs with their limit prices (LMT config): from the quote on each order's side, plus the offset."""
        out = []
        for leg in legs:
            quote = quotes.get(leg.instrument.con_id)
            reference = quote.side(leg.quantity > 0) if quote else None
            if reference is None:
                why = f" ({quote.refusal})" if quote and quote.refusal else ""
                raise IntentError(
                    "no_quote",
                    f"orderType LMT needs a quote for {leg.instrument.symbol} and the gateway gave none{why}; "
                    "nothing was placed",
                )
            price = limit_price(leg.quantity, reference, self._defaults.limit_offset_bps, leg.instrument.min_tick)
            out.append(replace(leg, limit_price=price))
        return out

    def build(self, leg: LegOrder) -> Order:
        action = "BUY" if leg.quantity > 0 else "SELL"
        quantity = abs(leg.quantity)
        if self.limits:
            if leg.limit_price is None:
                raise ValueError(f"LMT order {leg.order_ref} without a limit price")  # priced() comes first
            order: Order = LimitOrder(action, quantity, leg.limit_price)
        else:
            order = MarketOrder(action, quantity)
        # IB's Adaptive algo works stocks and futures; IDEALPRO forex takes plain orders.
        if self._defaults.algo == "Adaptive" and leg.instrument.contract.secType in {"STK", "FUT"}:
            order.algoStrategy = "Adaptive"
            order.algoParams = [TagValue("adaptivePriority", self._defaults.adaptive_priority)]
        order.tif = self._properties.get("tif", self._defaults.tif)
        if "goodAfterTime" in self._properties:
            order.goodAfterTime = with_zone(self._properties["goodAfterTime"], leg.instrument.time_zone)
        if "outsideRth" in self._properties:
            order.outsideRth = bool(self._properties["outsideRth"])
        order.orderRef = leg.order_ref
        order.account = self._account
        return order

    async def place(self, legs: Iterable[LegOrder]) -> dict[str, Outcome]:
        """Sends every leg at once and waits for each to be confirmed (ib_insync paces the sends at 45/s)."""
        if self._requests.read_only:  # IB would refuse each leg with 321: none is sent
            raise GatewayReadOnly()
        self._confirmed = 0
        notes = _OrderMessages()
        self._ib.errorEvent += notes.on_error
        started = time.perf_counter()
        try:
            trades = [self._ib.placeOrder(leg.instrument.contract, self.build(leg)) for leg in legs]
            sent = time.perf_counter()
            confirmed = await asyncio.gather(
                *(self._confirm_counted(trade, len(trades), notes.held_future(trade)) for trade in trades)
            )
        finally:
            self._ib.errorEvent -= notes.on_error
            notes.close()
        self.sending_ms = (sent - started) * 1000
        errors = notes.errors
        outcomes: dict[str, Outcome] = {}
        for trade, settled in zip(trades, confirmed, strict=True):
            ref = trade.order.orderRef
            outcome = (
                outcome_of(trade)
                if settled
                else Outcome(order_ref=ref, fate=Fate.UNCONFIRMED, order_id=trade.order.orderId)
            )
            if (
                outcome.fate in (Fate.REJECTED, Fate.CANCELLED)
                and outcome.error is None
                and trade.order.orderId in errors
            ):
                # Refused, or cancelled by IB with its reason (ib_insync files 202 among its warnings): a leg that
                # came to nothing for a reason only a person can act on.
                outcome = replace(outcome, fate=Fate.REJECTED, error=errors[trade.order.orderId])
            note = notes.held_note(trade)
            if outcome.fate is Fate.WORKING and note is not None:
                outcome = replace(outcome, held=note)
            if trade.order.orderId in notes.notes:
                outcome = replace(outcome, notes=[*(outcome.notes or []), *notes.notes[trade.order.orderId]])
            outcomes[ref] = outcome
        unconfirmed = {ref for ref, o in outcomes.items() if o.fate is Fate.UNCONFIRMED}
        if unconfirmed:
            # Ambiguous is not failed: the order may well be live. Ask the broker; never place it again.
            try:
                resolved = await find_orders(
                    self._ib, self._requests, unconfirmed, within=self._timeout, account=self._account
                )
            except TimeoutError:
                resolved = {}  # still unknown: reported as unconfirmed, left open in the books for reconciliation
            for ref in unconfirmed & resolved.keys():
                outcomes[ref] = _resolved(outcomes[ref], resolved[ref])
        self.confirming_ms = (time.perf_counter() - sent) * 1000
        return outcomes

    async def find(self, legs: Iterable[LegOrder], asked: Asked | None = None) -> dict[str, Outcome]:
        """The legs the broker already has, by each one's orderRef (or its `former_ref`, on its instrument)."""
        legs = list(legs)
        former = {leg.former_ref: leg for leg in legs if leg.former_ref}
        found = await find_orders(
            self._ib,
            self._requests,
            {leg.order_ref for leg in legs} | set(former),
            self._lookup_timeout,
            asked,
            account=self._account,
        )
        for ref, outcome in list(found.items()):
            leg = former.get(ref)
            if leg is not None:
                del found[ref]
                # An order whose conId the broker did not give is taken for this leg's: never send twice.
                if outcome.con_id in (0, leg.instrument.con_id) and leg.order_ref not in found:
                    found[leg.order_ref] = outcome  # its `order_ref` stays the broker's: the books know it by that
        return found

    async def _confirm_counted(self, trade: Trade, total: int, held: asyncio.Future[Any]) -> bool:
        try:
            return await self._confirm(trade, held)
        finally:
            self._confirmed += 1
            # A long rebalance reports every tenth of the way (on a terminal, that is its progress bar).
            step = max(1, total // 10)
            if self._progress is not None and total >= 10 and (self._confirmed % step == 0 or self._confirmed == total):
                self._progress(self._confirmed, total)

    async def _confirm(self, trade: Trade, held: asyncio.Future[Any]) -> bool:
        """Waits on the trade's status events until it settles, or until IB says it holds the order (`held`:
        399, 404); False on timeout. Raises on disconnect.

        An order settles when it is done (filled, cancelled, rejected): its fills follow within moments. One still
        open at the timeout (a market order filling slowly, a limit order the market has moved away from) or held
        by IB for the open was accepted, so it is reported as working, not unconfirmed; it stays open at the broker
        and in the books, and its fills are booked whenever they come (a DAY order that never fills expires with
        the day).
        """
        settled = DONE if trade.order.orderType in {"MKT", "LMT"} else CONFIRMED
        waiting = asyncio.ensure_future(await_status(self._ib, trade, settled, self._timeout))
        try:
            await asyncio.wait({waiting, held}, return_when="FIRST_COMPLETED")
        finally:  # held first, or this wait cancelled: the status wait goes too
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        if not waiting.cancelled() and waiting.result():  # raises ConnectionError on a disconnect
            return True
        return trade.orderStatus.status in ACCEPTED | {"Inactive"}


async def await_status(ib: IB, trade: Trade, settled: set[str], within: float) -> bool:
    """Waits on the trade's status events until its status is in `settled`; False after `within` seconds.

    Raced against the disconnect event, which raises ConnectionError: a dropped gateway resets ib_insync's trades.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    disconnected = next_emit(ib.disconnectedEvent)
    try:
        while trade.orderStatus.status not in settled - {"Inactive"}:
            if trade.orderStatus.status == "Inactive":
                # IB's rejection comes as Inactive plus an error message; give the error a moment to arrive
                # (ib_insync then marks the order Cancelled with the error in its log).
                deadline = min(deadline, loop.time() + INACTIVE_GRACE)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            changed = next_emit(trade.statusEvent)
            await asyncio.wait({changed, disconnected}, timeout=remaining, return_when="FIRST_COMPLETED")
            changed.cancel()
            if disconnected.done():
                raise ConnectionError(f"gateway disconnected while order {trade.order.orderRef} was in flight")
        return True
    finally:
        disconnected.cancel()


async def cancel_orders(ib: IB, requests: SharedRequests, trades: Iterable[Trade], within: float) -> dict[str, Outcome]:
    """Cancels each of our working trades and waits until the broker has finished it, by orderRef.

    Finished means Cancelled, or Filled when a fill raced the cancel (whatever filled stays filled either way).
    A trade still not finished after `within` seconds is looked up once more and reported as it stands; the caller must
    not trade on the assumption that it is gone. Only this client's orders can be cancelled by orderId: an order
    of another client id would be mistaken for ours with the same id, so it is refused here.
    """
    trades = list(trades)
    if requests.read_only:
        raise GatewayReadOnly()
    own = ib.client.clientId
    foreign = [t.order.orderRef for t in trades if t.order.clientId != own]
    if foreign:
        raise ValueError(f"orders {foreign} belong to another client id than {own}; only that client can cancel them")
    for trade in trades:
        # One cancel per order: while the exchange has it (PendingCancel, ours or an earlier run's) IB refuses a
        # second with 161, and ib_insync would mark the order Cancelled on that error while it can still fill.
        if trade.orderStatus.status not in DONE | {"PendingCancel"}:
            ib.cancelOrder(trade.order)
    finished = await asyncio.gather(*(await_status(ib, t, DONE, within) for t in trades))
    outcomes = {t.order.orderRef: outcome_of(t) for t in trades}
    # A Cancelled that is ib_insync's reading of IB's refusal is no confirmation: until the broker says, the order
    # counts as still being cancelled.
    refused = {t.order.orderRef for t in trades if _refused_cancel(t)}
    for ref in refused:
        outcomes[ref] = replace(outcomes[ref], status="PendingCancel", fate=Fate.UNCONFIRMED)
    late = {t.order.orderRef for t, done in zip(trades, finished, strict=True) if not done} | refused
    if late:
        # A login's accounts share orderRefs (a ref comes from the request id): only these orders' accounts count.
        accounts = {t.order.account for t in trades if t.order.orderRef in late}
        with contextlib.suppress(TimeoutError):
            found = await find_orders(
                ib, requests, late, within=within, account=accounts.pop() if len(accounts) == 1 else None
            )
            outcomes.update({ref: o for ref, o in found.items() if o.status in DONE})
    return outcomes


def next_emit(event: Any) -> asyncio.Future[Any]:
    """A future for the next emit of an eventkit event, subscribed before this returns.

    Awaiting the event inside a new task would subscribe only when that task first runs, and a status update
    already read from the socket in the same loop iteration would be missed.
    """
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_emit(*args: Any) -> None:
        if not future.done():
            future.set_result(args)

    event.connect(on_emit)
    future.add_done_callback(lambda _: event.disconnect(on_emit))
    return future


# What `find_orders` reads: every open order, completed order and execution of the account.
Snapshot = tuple[list[Trade], list[Trade], list[Fill]]


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """A first run's lookup: the connection's own record of our orders and fills, read instead of a fresh download.

    ib_insync downloads open and completed orders and executions at every connect (the gateway refuses a partial
    download: consumer.broker.gateway), keeps them current from the live stream of our client id's orders and resets
    them on a disconnect. While the connection that was synchronised when the intent started still holds
    (`generation`, compared with `current()` at placing), `ib.trades()` + `ib.fills()` is the broker's record of
    every order of this client id, at no message cost. It misses orders another client id placed with our orderRef
    after that connect, and another client id's orders still working at it: a first run is one no earlier delivery
    claimed, so only a lost Firestore and another client id together could make that a double order.
    """

    generation: int
    current: Callable[[], int | None]  # the generation now, None while not connected and synchronised

    @property
    def holds(self) -> bool:
        return self.current() == self.generation


# What a trading intent starts at its beginning and `find_orders` reads before placing: a fresh download under way
# (`ask_orders`), or, for a first run, the connection's record (`ConnectionRecord`).
Asked = asyncio.Future[Snapshot] | ConnectionRecord


def ask_orders(requests: SharedRequests) -> asyncio.Future[Snapshot]:
    """Starts the three requests `find_orders` reads, to be answered while other work goes on.

    A gateway answers completed orders and executions in time growing with the account (seconds for hundreds of
    completed orders), so a trading intent asks at its start and reads the answer when it is about to place.
    That answer still holds every order an earlier run of the same request placed: that run was over before this
    one started.
    """
    return asyncio.ensure_future(
        asyncio.gather(requests.open_orders(), requests.completed_orders(), requests.executions())
    )


def discard(asked: Asked | None) -> None:
    """Drops an answer asked for and not read (a dry run, a refusal before placing)."""
    if asked is None or isinstance(asked, ConnectionRecord):
        return
    if not asked.done():
        asked.cancel()
    elif not asked.cancelled():
        asked.exception()  # retrieved: a failure nobody needs is not logged as "never retrieved"


async def find_orders(
    ib: IB,
    requests: SharedRequests,
    refs: set[str],
    within: float = LOOKUP_TIMEOUT,
    asked: Asked | None = None,
    account: str | None = None,
    perm_ids: Mapping[str, int] | None = None,
) -> dict[str, Outcome]:
    """Orders with these orderRefs at the broker: working, completed, or seen only as executions.

    `account`: only orders and executions of that account (or naming none) are this account's. An orderRef comes
    from the request id, and one request id runs once per account (a scheduled slot's key is the same for every
    account, decision 11): a login managing several accounts sees the others' orders under the same refs.
    `perm_ids`: for a ref whose order IB has numbered, only that order is it (another client id, or a person
    copying the order in TWS, can place under the same ref).

    `asked` is an answer asked for earlier (`ask_orders`) or a first run's `ConnectionRecord`, read as it is if its
    connection still holds; without either (or with a record whose connection dropped since) the broker is asked
    now. Bounded: a gateway that stops answering raises TimeoutError (transient: the request is retried later and
    looks again), rather than hanging the intent.
    """
    if not refs:
        discard(asked)
        return {}
    if isinstance(asked, ConnectionRecord):
        if asked.holds:
            return _match(refs, ib.trades(), ib.fills(), account, perm_ids or {})
        asked = None  # the connection dropped since the intent started: its record may be incomplete
    open_trades, completed, fills = await asyncio.wait_for(
        asked if asked is not None else ask_orders(requests),
        within,
    )
    return _match(refs, [*completed, *open_trades, *ib.trades()], fills, account, perm_ids or {})


def _match(
    refs: set[str], trades: Iterable[Trade], fills: Iterable[Fill], account: str | None, perm_ids: Mapping[str, int]
) -> dict[str, Outcome]:
    def ours(ref: str, perm_id: int) -> bool:
        return not perm_ids.get(ref) or perm_id == perm_ids[ref]

    found: dict[str, Outcome] = {}
    for trade in trades:
        ref = trade.order.orderRef
        mine = ref in refs and ours(ref, trade.order.permId)
        if mine and (account is None or trade.order.account in ("", account)):
            candidate = outcome_of(trade, existing=True)
            if ref not in found or _more_final(candidate, found[ref]):
                found[ref] = candidate
    for fill in fills:
        ref = fill.execution.orderRef
        mine = ref in refs and ref not in found and ours(ref, fill.execution.permId)
        if mine and (account is None or fill.execution.acctNumber in ("", account)):
            found[ref] = Outcome(
                order_ref=ref,
                fate=Fate.WORKING,
                con_id=fill.contract.conId,
                status="Executed",
                order_id=fill.execution.orderId,
                perm_id=fill.execution.permId,
                filled=fill.execution.cumQty,
                existing=True,
            )
    return found


_RANK = {Fate.FILLED: 4, Fate.CANCELLED: 3, Fate.REJECTED: 3, Fate.WORKING: 2, Fate.UNCONFIRMED: 1, Fate.MISSING: 0}


def _more_final(a: Outcome, b: Outcome) -> bool:
    return (_RANK[a.fate], a.filled) > (_RANK[b.fate], b.filled)
