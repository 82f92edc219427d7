"""Carrying target books into the account: shared by allocation and close-all.

books in step with the broker (book missed fills, close finished orders)
legs: per instrument, each strategy's target - holding - what its working orders will still add, netted
our working orders in the way: all of the closed strategies' (close-all), or those on an instrument whose new
  order would go against one of them (never stack opposite orders); the legs are sized as if they were gone
market open?  (unless dry run or ignoreMarketHours; one opening within a minute is waited for)
cancel those orders, wait for IB to finish each (Cancelled, or Filled when a fill raced the cancel), book what
  filled, close them in the books, and size the legs again from the holdings
transfers for legs that net to zero; write-ahead of every order; place all; wait for each; record
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from consumer.broker.broker import Broker, OrderSnapshot
from consumer.broker.instruments import Instrument
from consumer.broker.model import Account, BrokerOrder, Fate, Quote, is_done
from consumer.broker.orders import ConnectionRecord, LegOrder, Outcome, discard
from consumer.errors import IntentError, Rejected, Transient
from consumer.forex import currency_lines, drawn_currencies, unbacked
from consumer.intents.base import IntentContext
from consumer.logs import get_logger
from consumer.portfolio import EPSILON, Leg, net_legs
from consumer.store.books import PendingOrder

log = get_logger(__name__)

# A market that opens within this many seconds is waited for rather than refused: a job scheduled for the open may
# reach the gateway's clock a moment before it (its clock read to the second, hence the margin).
OPEN_GRACE_SECONDS = 60.0
OPEN_MARGIN_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class WorkingOrder:
    """An order of ours still working at the broker: its open-order document joined to the live trade."""

    order_ref: str
    request_id: str
    con_id: int
    symbol: str
    quantity: float  # signed, the whole order
    shares: frozenset[str]  # every strategy with a part in it
    remaining: dict[str, float]  # per strategy: what it will still add when the order fills
    order: BrokerOrder  # as the broker reported it

    def view(self) -> dict[str, Any]:
        return {
            "orderRef": self.order_ref,
            "instrument": self.symbol,
            "conId": self.con_id,
            "quantity": self.quantity,
            "filled": self.order.filled,
            "remaining": self.order.remaining,
        }


@dataclass
class InTheWay:
    """Working orders a rebalance finds on its instruments: those to cancel before placing (by orderRef), kept ones
    that oppose the new order (not sized against), and the kept ones as the reply lists them.
    """

    cancel: dict[str, WorkingOrder] = field(default_factory=dict)  # by orderRef
    aside: set[str] = field(default_factory=set)  # kept orderRefs that oppose the new order: not sized against
    kept: list[dict[str, Any]] = field(default_factory=list)  # for the reply


@dataclass
class Rebalance:
    """One trading intent's view of the books and the orders it sends."""

    ctx: IntentContext
    account: Account
    scope: list[str] | None  # the strategies this intent trades for (None: every one)
    holdings: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    orders: list[WorkingOrder] = field(default_factory=list)
    others: list[BrokerOrder] = field(default_factory=list)  # working at the broker, not ours: never touched
    sweep: dict[str, Any] = field(default_factory=dict)
    # The broker's orders and executions, asked for when the intent started, or a first run's connection record
    # (IntentContext.orders_to_look_up); read when the legs are looked up before placing.
    asked: OrderSnapshot | None = None
    # Quotes taken to size the orders (LMT): their limits are priced from them too, unless a cancel came between.
    quotes: dict[int, Quote] = field(default_factory=dict)

    @classmethod
    async def open(
        cls, ctx: IntentContext, strategies: list[str] | None, asked: OrderSnapshot | None = None
    ) -> Rebalance:
        """Brings the books in step with the broker first: every later number depends on them."""
        services = ctx.services
        sweep = await services.bookkeeper.reconcile(ctx.connection_record())
        account = await ctx.broker.account(services.account)
        rebalance = cls(ctx=ctx, account=account, scope=strategies, sweep=sweep, asked=asked)
        await rebalance._reload()
        return rebalance

    async def _reload(self) -> None:
        """The books and our working orders, read so that a fill landing meanwhile is counted once.

        IB's working orders are read first, then the holdings and our open orders together (a fill is booked into
        both at once). An open order of ours IB no longer lists, but the connection saw finish, finished after the
        opening sweep, and its fills may not be booked yet: in neither the holdings nor the working orders, it would
        be bought again. A fresh sweep books them (and closes it) before the books are read again. One the
        connection never saw (an earlier day's, left open for reconcile: decision 44) costs no sweep."""
        services = self.ctx.services
        live = [o for o in await self.ctx.broker.open_orders() if o.is_for(self.account.id)]
        holdings, open_docs = await services.books.holdings_and_open_orders(self.scope)
        listed = {o.order_ref for o in live}
        if await self._finished_meanwhile({d["orderRef"] for d in open_docs} - listed):
            await services.bookkeeper.reconcile()
            holdings, open_docs = await services.books.holdings_and_open_orders(self.scope)
        self.holdings = holdings
        self.orders, self.others = _working(live, open_docs)

    async def _finished_meanwhile(self, refs: set[str]) -> bool:
        """Whether any of these orders IB no longer lists finished on this connection (its record knows it, at no
        message); without the record (a reconnect since the intent started), whether IB knows any of them."""
        if not refs:
            return False
        record = self.ctx.connection_record()
        return bool(await self.ctx.broker.find_orders(refs, record=record, account=self.account.id))

    def only(self, strategies: list[str]) -> None:
        """Keeps the books of these strategies only: one that was skipped must not be read as target zero."""
        self.scope = list(strategies)
        self.holdings = {s: h for s, h in self.holdings.items() if s in strategies}

    @property
    def with_working_orders(self) -> set[str]:
        return {s for o in self.orders for s, q in o.remaining.items() if abs(q) > EPSILON}

    def current(self) -> dict[str, dict[int, float]]:
        return {s: {c: float(p["quantity"]) for c, p in positions.items()} for s, positions in self.holdings.items()}

    def working(self, without: set[str] | frozenset[str] = frozenset()) -> dict[str, dict[int, float]]:
        """Per strategy in scope and instrument: what its working orders (but those `without`) will still add."""
        working: dict[str, dict[int, float]] = {}
        for order in self.orders:
            if order.order_ref in without:
                continue
            for strategy, remaining in order.remaining.items():
                if self._in_scope(strategy) and abs(remaining) > EPSILON:
                    by_instrument = working.setdefault(strategy, {})
                    by_instrument[order.con_id] = by_instrument.get(order.con_id, 0.0) + remaining
        return working

    def _in_scope(self, strategy: str) -> bool:
        return self.scope is None or strategy in self.scope

    def in_the_way(
        self, targets: Mapping[str, Mapping[int, float]], close: bool, spare: frozenset[int] = frozenset()
    ) -> InTheWay:
        """Our working orders to cancel before placing, those to leave out of the sizing, and those kept.

        close-all cancels every working order of the closed strategies. Otherwise, where the new order on an
        instrument would go against one of our working orders there, all of ours on it are cancelled and the
        order is sized from the holdings alone: stacking opposite orders is how an account ends up short.
        Kept, and reported: an order that also carries a strategy outside this request, or placed by another
        client id (an orderId is only ours to cancel on our own client id); one of those that opposes the new
        order is left out of the sizing, so nothing is placed to offset it before it fills. Orders an earlier
        delivery of this request placed are its own legs, not in the way. Orders that are not ours at all
        (manual, another client's: no document of ours) are never cancelled, only reported. Orders on `spare`
        instruments (a closed market a partial close leaves as it is) are neither.
        """
        legs = net_legs(targets, self.current(), self.working())

        def opposes(con_id: int, signed: float) -> bool:
            leg = legs.get(con_id)
            return leg is not None and signed * leg.quantity < -EPSILON

        mine = [
            o for o in self.orders if self._touches(o) and o.request_id != self.ctx.request_id and o.con_id not in spare
        ]
        opposed = {o.con_id for o in mine if opposes(o.con_id, o.quantity)}
        # Being cancelled (a run that gave up waiting for IB's answer): it may fill or not, and sizing must not guess
        # which. Waited for like a cancel of ours (no second cancel is sent).
        opposed |= {o.con_id for o in mine if o.order.status == "PendingCancel" and o.con_id in legs}
        way = InTheWay()
        for order in mine:
            if not (close or order.con_id in opposed):
                continue
            reason = self._why_kept(order)
            if not reason:
                way.cancel[order.order_ref] = order
                continue
            if order.order.status == "PendingCancel" and order.con_id in legs:
                # Ours to wait for, whoever placed it (no cancel is sent), not to size on a guess.
                raise Transient(
                    "cancel_unconfirmed",
                    f"order {order.order_ref} ({reason}) is being cancelled at IB; its instrument is sized once IB "
                    "has finished it; nothing was placed or cancelled",
                )
            way.kept.append({**order.view(), "reason": reason})
            if opposes(order.con_id, order.quantity):
                way.aside.add(order.order_ref)
        for other in self.others:
            if other.con_id in legs and other.con_id not in spare and (close or opposes(other.con_id, other.quantity)):
                way.kept.append(
                    {
                        "orderRef": other.order_ref,
                        "instrument": other.symbol,
                        "conId": other.con_id,
                        "quantity": other.quantity,
                        "filled": other.filled,
                        "remaining": other.remaining,
                        "reason": f"not an order of this consumer (client id {other.client_id}, no order "
                        "document of ours): never cancelled",
                    }
                )
        return way

    def _touches(self, order: WorkingOrder) -> bool:
        return any(self._in_scope(s) for s in order.shares)

    def _why_kept(self, order: WorkingOrder) -> str:
        outside = sorted(s for s in order.shares if not self._in_scope(s))
        if outside:
            return f"also carries {', '.join(outside)}, which this request does not trade for"
        if order.order.client_id != self.ctx.broker.client_id:
            return f"placed by client id {order.order.client_id}; only that client can cancel it"
        return ""

    async def cancel(self, orders: Mapping[str, WorkingOrder], reason: str) -> list[dict[str, Any]]:
        """Cancels these orders, books what they filled, closes them in the books and reloads the holdings.

        Raises Transient when IB has not finished one of them in time: nothing may be sized or placed while an
        order of ours might still fill.
        """
        ctx = self.ctx
        services = ctx.services
        timeout = ctx.config.order_defaults.timeout_seconds or services.settings.order_timeout
        outcomes = await ctx.broker.cancel([o.order for o in orders.values()], within=timeout)
        # Whatever filled before the cancel took effect is booked now, so the holdings below include it.
        await services.bookkeeper.reconcile()
        report = []
        for ref, order in orders.items():
            outcome = outcomes[ref]
            if is_done(outcome.status):
                await services.books.close_order(ref, outcome.status, outcome.filled)
            ctx.log.info("working order cancelled", orderRef=ref, status=outcome.status, filled=outcome.filled)
            report.append(
                {
                    "orderRef": ref,
                    "instrument": order.symbol,
                    "conId": order.con_id,
                    "quantity": order.quantity,
                    "status": outcome.status,
                    "filled": outcome.filled,
                    "reason": reason,
                }
            )
        unfinished = sorted(ref for ref, o in outcomes.items() if not is_done(o.status))
        if unfinished:
            raise Transient(
                "cancel_unconfirmed",
                f"IB has not confirmed the cancellation of {', '.join(unfinished)}; nothing was placed",
            )
        await self._reload()
        return report

    async def check_books(self, con_ids: set[int]) -> None:
        """Refuses to trade an instrument whose books (every strategy and unallocated) differ from the broker's
        position by more than its executions not booked yet explain: sizing from books that lost data (a
        Firestore restore, deleted documents) is how every order gets placed twice.

        Positions and executions are two snapshots; a fill landing between them can make them disagree for a
        moment, so a difference is looked at twice before it is final. The first look reads the connection's
        record (decision 14); a difference is looked at again from fresh downloads after a fresh sweep, so a
        refusal never rests on the record alone (a position update and its execution arrive as separate messages).
        """
        if not con_ids:
            return
        differences = await self._book_differences(con_ids, self.ctx.connection_record())
        if differences:
            await self.ctx.services.bookkeeper.reconcile()
            differences = await self._book_differences(con_ids, None)
        if differences:
            raise _books_disagree("the books differ from the broker's positions", "instrument", differences)

    async def check_cash(self, trading: Mapping[int, tuple[Instrument, float]]) -> None:
        """Refuses a forex order that pays out a currency the books claim more of than the account holds: the
        stock positions' check for cash (IDEALPRO trades are balances, no position). Selling a strategy's euros
        the account no longer has (a withdrawal, a conversion in TWS) leaves it short them, a margin loan.
        IB's balances follow a fill by a moment (decision 27): a difference is looked at again after a sweep
        and once the account values count every fill so far."""
        base = self.account.base_currency
        drawn = {
            currency
            for inst, quantity in trading.values()
            if inst.sec_type == "CASH"
            for currency in drawn_currencies(inst.symbol, inst.currency, quantity, base)
        }
        if not drawn:
            return
        short = await self._unbacked(drawn, look_again=False)
        if short:
            await self.ctx.services.bookkeeper.reconcile()
            short = await self._unbacked(drawn, look_again=True)
        if short:
            raise _books_disagree("the books claim more cash than the account holds", "currency", short)

    async def _unbacked(self, drawn: set[str], look_again: bool) -> list[dict[str, Any]]:
        ctx = self.ctx
        if look_again:
            await ctx.broker.account(ctx.services.account)  # once IB's values count every fill so far
        holdings = await ctx.services.books.holdings(None)
        lines = currency_lines(holdings, ctx.broker.cash_balances(self.account.id), self.account.base_currency)
        return unbacked(lines, drawn)

    async def _book_differences(self, con_ids: set[int], record: ConnectionRecord | None) -> list[dict[str, Any]]:
        ctx = self.ctx
        positions = await ctx.broker.positions(record)
        fills = await ctx.broker.executions(record)
        account = self.account.id
        broker: dict[int, float] = {}
        names: dict[int, str] = {}
        for p in positions:
            if p.account == account and p.con_id in con_ids and p.sec_type != "CASH":
                broker[p.con_id] = broker.get(p.con_id, 0.0) + p.quantity
                names[p.con_id] = p.symbol
        ours = [f for f in fills if f.account == account and f.con_id in con_ids and f.sec_type != "CASH"]
        booked = await ctx.services.books.booked_exec_ids({f.exec_id for f in ours})
        expected: dict[int, float] = {}
        for positions_of in (await ctx.services.books.holdings(None)).values():
            for con_id, position in positions_of.items():
                if con_id in con_ids and position.get("secType") != "CASH":
                    expected[con_id] = expected.get(con_id, 0.0) + float(position["quantity"])
                    names.setdefault(con_id, position.get("symbol", str(con_id)))
        for f in ours:
            if f.exec_id not in booked:
                expected[f.con_id] = expected.get(f.con_id, 0.0) + f.signed
        return [
            {
                "instrument": names.get(c, str(c)),
                "conId": c,
                "books": expected.get(c, 0.0),
                "broker": broker.get(c, 0.0),
            }
            for c in sorted(con_ids)
            if abs(expected.get(c, 0.0) - broker.get(c, 0.0)) > EPSILON and (c in broker or c in expected)
        ]

    def closed(self, touched: Mapping[int, Instrument], cancelling: set[int], now: datetime) -> list[Instrument]:
        """The touched instruments whose market is closed at `now`; an order IB takes while closed (the message's
        orderProperties: OPG, goodAfterTime, outsideRth) does not count, a cancel does."""
        ctx = self.ctx
        properties = ctx.request.envelope.params.get("orderProperties", {}) if ctx.request.envelope else {}
        order_type = ctx.config.order_defaults.order_type
        return [
            inst
            for c, inst in touched.items()
            if not inst.open_at(now) and (c in cancelling or not inst.takes_while_closed(now, properties, order_type))
        ]

    async def refuse_closed(
        self, touched: Mapping[int, Instrument], cancelling: set[int], partial: bool = False, open_besides: int = 0
    ) -> list[Instrument]:
        """Rejects the intent while a touched market is closed, unless every one opens within OPEN_GRACE_SECONDS:
        that is waited out. A scheduled 09:30 allocation the gateway's clock saw a moment before the open was
        rejected, and its slot's key answered every retry with the rejection: no trade that day. `partial`
        (close-all, risk-check's reduce): the closed markets are returned, to be left as they are, while another
        is open; rejected only when every one is closed. `open_besides`: open markets the run keeps as they are
        (close-all's `closingWithin`): with them, the closed ones are a partial close, not a rejection."""
        now = self.ctx.market_now()
        shut = self.closed(touched, cancelling, now)
        waits = [inst.seconds_to_open(now) for inst in shut]
        if shut and all(w is not None and w <= OPEN_GRACE_SECONDS for w in waits):
            wait = max(w for w in waits if w is not None) + OPEN_MARGIN_SECONDS
            log.info("a market opens in moments: waiting for it", seconds=round(wait, 1))
            await asyncio.sleep(wait)  # a wait for a time of day, not for a broker state
            # A minute is long: the message may have expired or trading been turned off meanwhile, and the quotes
            # the legs were sized and would be priced with are from before the open.
            await self.ctx.still_allowed()
            self.quotes = {}
            now = self.ctx.market_now()
            shut = self.closed(touched, cancelling, now)
        if shut and partial and len(shut) < len(touched) + open_besides:
            return shut
        if shut:
            raise Rejected(
                "market_closed",
                f"the market is closed for {', '.join(sorted(i.closed_at(now) for i in shut))}; nothing was placed "
                "or cancelled (set ignoreMarketHours to trade anyway, or orderProperties IB takes while closed: "
                "tif OPG, goodAfterTime)",
            )
        return []

    async def _closed_markets(
        self, touched: set[int], instruments: Mapping[int, Instrument], way: InTheWay, partial: bool, kept: int = 0
    ) -> list[Instrument]:
        """The market-hours check of a run that places or cancels (see `refuse_closed`): none for a dry run or a
        message that set ignoreMarketHours."""
        envelope = self.ctx.request.envelope
        if not touched or self.ctx.dry_run or (envelope is not None and envelope.ignore_market_hours):
            return []
        cancelling = {o.con_id for o in way.cancel.values()}
        return await self.refuse_closed({c: instruments[c] for c in touched}, cancelling, partial, kept)

    async def _earlier_legs(self, placing: set[str]) -> dict[int, Outcome]:
        """By conId, as IB has them: the orders an earlier attempt of this request wrote that this run does not
        place (its leg nets to zero now: it filled while the gateway was away). The reply names them: it carried
        no leg at all, as if the request had bought nothing. Only on a later run: a first run has none."""
        ctx = self.ctx
        if ctx.first_run:
            return {}
        earlier = await ctx.services.bookkeeper.orders_at_broker(ctx.request_id, besides=placing)
        return {int(doc["conId"]): found for doc, found in earlier if found is not None and doc.get("conId")}

    async def _flat_since(
        self, earlier: Mapping[int, Outcome], legs: Mapping[int, Leg], instruments: Mapping[int, Instrument]
    ) -> list[dict[str, Any]]:
        """Lines for the earlier attempts' orders on instruments that have no leg now (a close-all's sell that filled
        while the gateway was away: the book is flat, and the retry's reply listed no line naming it)."""
        flat = {c for c in earlier if c not in legs or not (legs[c].deltas or any(legs[c].targets.values()))}
        if not flat:
            return []
        found = await instruments_by_con_id(self.ctx.broker, instruments, flat)
        return [
            {
                "instrument": found[c].symbol,
                "conId": c,
                "currency": found[c].currency,
                "order": 0.0,
                "orderRef": earlier[c].order_ref,
                **earlier[c].as_dict(),
            }
            for c in sorted(flat, key=lambda c: found[c].symbol)
        ]

    def _sized(
        self, targets: Mapping[str, Mapping[int, float]], close: bool, spare: frozenset[int]
    ) -> tuple[Mapping[str, Mapping[int, float]], InTheWay, dict[int, Leg]]:
        """The targets with `spare` instruments held as they are, the orders in the way, and the legs, sized as if
        the orders to cancel were gone: what a dry run shows and what the market check covers."""
        targets = self._held_as_they_are(targets, spare) if spare else targets
        way = self.in_the_way(targets, close, spare)
        return targets, way, net_legs(targets, self.current(), self.working(without=set(way.cancel) | way.aside))

    async def _listed(
        self, legs: Mapping[int, Leg], way: InTheWay, instruments: Mapping[int, Instrument]
    ) -> tuple[dict[int, Instrument], dict[int, str]]:
        """`instruments` with every other one the reply lists or a cancel touches (one held at its target, which
        risk-check's reduce keeps, has no delta), and apart, with why, those IB no longer lists."""
        needed = {c for c, leg in legs.items() if leg.deltas or any(leg.targets.values())}
        needed |= {o.con_id for o in way.cancel.values()}
        with self.ctx.timed("contracts"):
            found, unlisted = await self.ctx.broker.listed(needed - set(instruments))
        return {**instruments, **found}, unlisted

    def _unlisted_view(self, unlisted: Mapping[int, str]) -> list[dict[str, Any]]:
        """Each instrument IB no longer lists, named as the books name it, with what each book holds of it."""
        lines = []
        for con_id, why in sorted(unlisted.items()):
            held = {s: p[con_id] for s, p in self.holdings.items() if con_id in p}
            symbol = next((str(p.get("symbol")) for p in held.values() if p.get("symbol")), "")
            lines.append({"instrument": symbol, "conId": con_id,
                          "held": {s: float(p["quantity"]) for s, p in held.items()},
                          "reason": f"{why}; held as it is: its settlement is for a person to book"})  # fmt: skip
        return lines

    def _held_as_they_are(
        self, targets: Mapping[str, Mapping[int, float]], spare: frozenset[int]
    ) -> dict[str, dict[int, float]]:
        """`targets` with each `spare` instrument's target where the books and our working orders take it: no leg."""
        current, working = self.current(), self.working()
        return {
            s: {**t, **{c: current.get(s, {}).get(c, 0.0) + working.get(s, {}).get(c, 0.0) for c in spare}}
            for s, t in targets.items()
        }

    async def carry_out(
        self,
        targets: Mapping[str, Mapping[int, float]],
        instruments: Mapping[int, Instrument],
        close: bool = False,
        partial: bool = False,
        keep: frozenset[int] = frozenset(),
    ) -> dict[str, Any]:
        """Cancels our working orders in the way (see `in_the_way`), then places one netted order per instrument.

        `close` (close-all) cancels every working order of the strategies in scope, not only opposing ones.
        `partial` (close-all, risk-check's reduce: orders that only take risk off) trades the instruments whose
        market is open and leaves those whose market is closed as they are, reported in `closedMarkets` with an
        alert: refused whole, the 15:55 close-all of a strategy that also held a Xetra stock left its US stocks
        open overnight, and the 13:00 reduce could never act while a book held one. `keep`: instruments left as
        they are, their working orders too (close-all's `closingWithin`). An instrument held that IB no longer
        lists (an expired future) is left as it is on every path, reported in `unlisted` with an alert.
        """
        ctx = self.ctx
        services = ctx.services
        closed_markets: list[str] = []
        targets, way, legs = self._sized(targets, close, keep)
        instruments, unlisted = await self._listed(legs, way, instruments)
        spare = keep | frozenset(unlisted)
        if unlisted:  # nothing can trade them: failed whole, the rest could not be closed or reduced either
            targets, way, legs = self._sized(targets, close, spare)
        trading = {c: leg for c, leg in legs.items() if abs(leg.quantity) > EPSILON}
        touched = set(trading) | {o.con_id for o in way.cancel.values()}
        shut = await self._closed_markets(touched, instruments, way, partial, len(spare))
        if shut:
            spare = spare | frozenset(i.con_id for i in shut)
            closed_markets = sorted(i.closed_at(ctx.market_now()) for i in shut)
            targets, way, legs = self._sized(targets, close, spare)
            trading = {c: leg for c, leg in legs.items() if abs(leg.quantity) > EPSILON}
            touched = set(trading) | {o.con_id for o in way.cancel.values()}

        with ctx.timed("books"):
            await self.check_books(touched)
            await self.check_cash({c: (instruments[c], leg.quantity) for c, leg in trading.items()})

        reason = "close-all" if close else "opposes the new order"
        cancelled: list[dict[str, Any]] = []
        if way.cancel and not ctx.dry_run:
            with ctx.timed("books"):
                cancelled = await self.cancel(way.cancel, reason)
            # Sized again from the holdings, now with what the cancelled orders filled booked.
            after = self.in_the_way(targets, close, spare)
            if after.cancel:
                raise Transient(
                    "working_orders_changed",
                    f"orders {', '.join(sorted(after.cancel))} stand in the way after cancelling; nothing was placed",
                )
            legs = net_legs(targets, self.current(), self.working(without=after.aside))
            listed = {c for c, leg in legs.items() if leg.deltas or any(leg.targets.values())} - set(unlisted)
            with ctx.timed("contracts"):
                instruments = await instruments_by_con_id(ctx.broker, instruments, listed)
            trading = {c: leg for c, leg in legs.items() if abs(leg.quantity) > EPSILON}

        intent = ctx.request.intent or "trade"
        orders = {
            c: LegOrder.of_instrument(intent, ctx.request_id, instruments[c], leg.quantity)
            for c, leg in trading.items()
        }
        outcomes: dict[str, Outcome] = {}
        earlier: dict[int, Outcome] = {}
        transfers: list[dict[str, Any]] = []
        if not ctx.dry_run:
            with ctx.timed("orders"):
                moving = [instruments[c] for c, leg in legs.items() if leg.internal_transfer]
                # Transfers move cost at the market price of the moment (consumer.pnl.transfer): one price request,
                # only when something moves between books.
                prices = await ctx.broker.prices(moving) if moving else {}
                rates = ctx.broker.fx_rates(self.account.id)
                for c, leg in legs.items():
                    if leg.internal_transfer:
                        moved = await services.books.transfer(
                            ctx.request_id,
                            instruments[c].describe(),
                            leg.internal_transfer,
                            price=prices.get(c),
                            fx_rate=rates.get(instruments[c].currency),
                        )
                        transfers.append(
                            {"instrument": instruments[c].symbol, "moves": leg.internal_transfer, "booked": moved}
                        )
            asked, self.asked = self.asked, None
            outcomes = await send_orders(
                ctx,
                self.account.id,
                {o.order_ref: o for o in orders.values()},
                {orders[c].order_ref: leg.deltas for c, leg in trading.items()},
                asked=asked,
                quotes=None if way.cancel else self.quotes,  # waiting out cancels can take long: quote afresh
            )
            earlier = await self._earlier_legs({o.order_ref for o in orders.values()})

        report: dict[str, Any] = {
            "account": self.account.id,
            "baseCurrency": self.account.base_currency,
            "netLiquidation": self.account.net_liquidation,
            "instruments": _lines(
                {c: leg for c, leg in legs.items() if c not in unlisted}, instruments, orders, outcomes, earlier
            )
            + await self._flat_since(earlier, legs, instruments),
            "transfers": transfers,
            "orders": _tally({**outcomes, **{o.order_ref: o for o in earlier.values()}}),
            "cancelled": cancelled,
            "kept": way.kept,
            "booksReconciled": {k: len(v) if isinstance(v, list) else v for k, v in self.sweep.items()},
        }
        _flag_left_undone(report, outcomes, closed_markets, self._unlisted_view(unlisted))
        if ctx.dry_run:
            report["wouldCancel"] = [{**o.view(), "reason": reason} for o in way.cancel.values()]
        return report


def _flag_left_undone(
    report: dict[str, Any], outcomes: Mapping[str, Outcome], closed_markets: list[str], unlisted: list[dict[str, Any]]
) -> None:
    """What a run left for a person, named in the report, which then alerts."""
    if any(o.fate in (Fate.REJECTED, Fate.UNCONFIRMED) for o in outcomes.values()):
        # IB refused a leg (margin, the gateway's order precautions, a price) or never answered one (it may be
        # working, or lost on the way: IB's paper server drops some): work left for a person.
        report["alert"] = True
    if closed_markets:
        report["closedMarkets"] = closed_markets  # left as they are: a person, or the next run at their open
        report["alert"] = True
    if unlisted:
        report["unlisted"] = unlisted  # left as they are: a person books the settlement
        report["alert"] = True


def _lines(
    legs: Mapping[int, Leg],
    instruments: Mapping[int, Instrument],
    orders: Mapping[int, LegOrder],
    outcomes: Mapping[str, Outcome],
    earlier: Mapping[int, Outcome],
) -> list[dict[str, Any]]:
    """A line per instrument with a leg: its order placed now, or an earlier attempt's, or none."""
    return [
        _line(instruments[c], leg, orders[c].order_ref, outcomes.get(orders[c].order_ref))
        if c in orders
        else _line(instruments[c], leg, earlier[c].order_ref, earlier[c])
        if c in earlier
        else _line(instruments[c], leg, None, None)
        for c, leg in sorted(legs.items(), key=lambda kv: instruments[kv[0]].symbol)
        if leg.deltas or any(leg.targets.values())
    ]


def _books_disagree(what: str, named_by: str, differences: list[dict[str, Any]]) -> IntentError:
    listed = ", ".join(f"{d[named_by]}: books {d['books']:g}, broker {d['broker']:g}" for d in differences)
    return IntentError(
        "books_disagree",
        f"{what} ({listed}); nothing was placed. Run reconcile, and reconcile with fix=true to book the differences "
        "to unallocated",
        details=differences,
    )


async def send_orders(
    ctx: IntentContext,
    account: str,
    orders: Mapping[str, LegOrder],
    shares: Mapping[str, Mapping[str, float]],
    asked: OrderSnapshot | None = None,
    quotes: Mapping[int, Quote] | None = None,
) -> dict[str, Outcome]:
    """Writes each order ahead, places the ones the broker does not have yet, waits for each, records the result.

    `orders` and `shares` are keyed by orderRef; shares are the strategies' parts of each order (empty for orders
    no strategy owns, such as currency conversions). `asked`: the broker's orders, asked for at the intent's start
    (or a first run's connection record, read if its connection still holds). `quotes`: taken moments ago to size
    the orders; a limit is priced from them, and only the instruments without one are quoted now.
    """
    services = ctx.services
    if not orders:
        discard(asked)
        return {}
    engine = ctx.broker.order_engine(
        ctx.config.order_defaults,
        ctx.request.envelope.params.get("orderProperties", {}) if ctx.request.envelope else {},
        services.settings.order_timeout,
        account,
        progress=lambda done, total: ctx.log.info("orders confirmed", confirmed=done, total=total),
    )
    # An earlier run of this request may have placed any of them. Every leg is looked up at the broker, whatever
    # Firestore says: its data may have been lost, restored or rolled back since. Never send twice.
    with ctx.timed("orders"):
        found = await engine.find(orders.values(), asked=asked)
    to_send = {ref: o for ref, o in orders.items() if ref not in found}
    if engine.limits and to_send:
        taken = dict(quotes or {})
        lacking = [o.instrument for o in to_send.values() if o.instrument.con_id not in taken]
        if lacking:
            with ctx.timed("prices"):
                taken.update(await ctx.broker.quotes(lacking))
        to_send = {o.order_ref: o for o in engine.priced(to_send.values(), taken)}
    with ctx.timed("orders"):
        # Written ahead while the claim is checked still ours (a run whose lease lapsed must not place beside a
        # redelivery that took it over): the same round trip.
        await asyncio.gather(
            services.books.write_pending(
                PendingOrder(
                    order_ref=ref,
                    request_id=ctx.request_id,
                    intent=ctx.request.intent or "",
                    instrument=o.instrument.describe(),
                    quantity=o.quantity,
                    shares=dict(shares.get(ref, {})),
                )
                for ref, o in to_send.items()
            ),
            services.ledger.hold(ctx.request_id),
        )
    outcomes = {**found, **await engine.place(to_send.values())}
    # "orders" ends when the last leg is handed to ib_insync; its pacing of the sends counts as confirmations.
    ctx.add_time("orders", engine.sending_ms)
    ctx.add_time("confirmations", engine.confirming_ms)
    with ctx.timed("confirmations"):
        await services.books.mark_placed(
            {
                ref: {"orderId": o.order_id, "permId": o.perm_id, "clientId": o.client_id, "brokerStatus": o.status}
                for ref, o in outcomes.items()
                if o.order_id is not None and not o.existing
            }
        )
    for ref, o in outcomes.items():
        if not o.existing:
            services.metrics.count("orders", o.fate.value)
            ctx.log.info("order settled", orderRef=ref, outcome=o.fate.value, status=o.status, filled=o.filled)
        if is_done(o.status) and o.filled == 0:
            await services.books.close_order(
                o.order_ref, o.status, 0.0
            )  # rejected or cancelled at once: nothing to book
    return outcomes


async def instruments_by_con_id(
    broker: Broker, instruments: Mapping[int, Instrument], con_ids: set[int]
) -> Mapping[int, Instrument]:
    """`instruments` and those of `con_ids` it lacks (held or working, not targeted), found by conId: asked
    for together (ib_insync paces them), not one round trip after another."""
    lacking = sorted(con_ids - set(instruments))
    found = await asyncio.gather(*(broker.by_con_id(con_id) for con_id in lacking))
    return {**instruments, **dict(zip(lacking, found, strict=True))}


def _working(
    account_orders: list[BrokerOrder], open_orders: list[dict[str, Any]]
) -> tuple[list[WorkingOrder], list[BrokerOrder]]:
    """Our orders still working at the broker (an open-order document of ours and a live order), and the rest of
    the account's. Only this account's live orders are given: a login's other accounts' orders, even under one of
    our orderRefs (one request id runs per account), are none of its business."""
    docs = {doc["orderRef"]: doc for doc in open_orders}
    ours: list[WorkingOrder] = []
    others: list[BrokerOrder] = []
    for live in account_orders:
        doc = docs.get(live.order_ref) if live.order_ref else None
        if doc is None or not _is_its_order(doc, live):
            others.append(live)
            continue
        booked = doc.get("booked", {})
        shares = doc.get("shares", {})
        ours.append(
            WorkingOrder(
                order_ref=doc["orderRef"],
                request_id=doc.get("requestId", ""),
                con_id=int(doc["conId"]),
                symbol=doc.get("symbol", "") or live.symbol,
                quantity=float(doc["quantity"]),
                shares=frozenset(shares),
                remaining={s: float(q) - float(booked.get(s, 0.0)) for s, q in shares.items()},
                order=live,
            )
        )
    return ours, others


def _is_its_order(doc: Mapping[str, Any], live: BrokerOrder) -> bool:
    """Whether the live order under a document's ref is the document's order: once IB numbered it, only the one
    with its permId (and on its instrument). Another client's order under our ref was sized as a second working
    order of ours carrying the whole remaining quantity (decision 65)."""
    if doc.get("conId") and live.con_id and int(doc["conId"]) != live.con_id:
        return False
    return not (doc.get("permId") and live.perm_id and int(doc["permId"]) != live.perm_id)


def _line(instrument: Instrument, leg: Leg, order_ref: str | None, outcome: Outcome | None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "instrument": instrument.symbol,
        "conId": instrument.con_id,
        "currency": instrument.currency,
        "target": sum(leg.targets.values()),
        "current": sum(leg.current.values()),
        "working": sum(leg.working.values()),
        "order": leg.quantity,
        "strategies": leg.deltas,
    }
    if order_ref is not None:
        line["orderRef"] = order_ref
    if outcome is not None:
        line.update(outcome.as_dict())
    return line


def _tally(outcomes: Mapping[str, Outcome]) -> dict[str, int | bool]:
    """Orders by fate; `partial` when IB refused some legs (margin, price...) while others went on, so a caller
    that reads only the status `ok` still sees that the request got only part of what it asked for."""
    tally: dict[str, int | bool] = {"sent": sum(1 for o in outcomes.values() if not o.existing)}
    for o in outcomes.values():
        tally[o.fate.value] = int(tally.get(o.fate.value, 0)) + 1
    rejected = sum(1 for o in outcomes.values() if o.fate is Fate.REJECTED)
    if 0 < rejected < len(outcomes):
        tally["partial"] = True
    return tally
