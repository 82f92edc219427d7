"""Keeps the books in step with the broker: every execution booked as it happens, and a sweep after reconnects.

The consumer is connected all day, so executions are booked the moment the gateway reports them (the broker's
execution and commission events, on the broker loop). The sweep (`reconcile`, also the trade-reconciliation
intent) catches whatever was missed while the consumer was down, and closes orders the broker has finished.
The gateway reports only the current day's executions and completed orders, so an order that finished on an
earlier day is booked from what the account's position says it filled, marked synthetic (decision 44): nothing
depends on the sweep running on the day of the fill.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import compress
from typing import Any

from consumer.broker.broker import Broker
from consumer.broker.gateway import State
from consumer.broker.model import NOT_PLACED, BrokerOrder, Fate, Fill, is_done
from consumer.broker.orders import ConnectionRecord, Outcome
from consumer.errors import GatewayReadOnly, reraise_if_cancelled
from consumer.logs import get_logger
from consumer.portfolio import EPSILON
from consumer.store.books import BATCH, Books, Close, Execution

log = get_logger(__name__)

# How long a sweep waits on the snapshots that price fills read off the position: past IB's 11 s snapshot end, so
# an instrument with a close and no quote (after hours, delayed-frozen data) is priced too. Once booked, a fill is
# not priced again, so this is paid once per such order, not by every sweep before a trade.
SWEEP_PRICE_SECONDS = 15.0


def execution_of(fill: Fill, rates: dict[str, float] | None = None) -> Execution:
    """`rates`: units of base currency per unit of currency, the account's ExchangeRate values at booking time
    (the rate IB itself converts the day's P&L at; the base currency's is 1.0). A fill's realized P&L in base
    currency is converted at them."""
    c = fill.contract
    rates = rates or {}
    return Execution(
        exec_id=fill.exec_id,
        order_ref=fill.order_ref,
        perm_id=fill.perm_id,
        con_id=fill.con_id,
        symbol=c["symbol"],
        sec_type=c["secType"],
        currency=c["currency"],
        exchange=c["exchange"],
        multiplier=c["multiplier"],
        side=fill.side,
        shares=fill.shares,
        price=fill.price,
        time=fill.time,
        commission=fill.commission,
        commission_currency=fill.commission_currency,
        account=fill.account,
        fx_rate=rates.get(c["currency"]),
        commission_fx_rate=rates.get(fill.commission_currency or ""),
    )


@dataclass(frozen=True, slots=True)
class Booked:
    """An execution (or its commission) reported live: booked once, however often it is reported."""

    fill: Fill


@dataclass(frozen=True, slots=True)
class Finished:
    """An order of ours IB has finished: closed in the books once its fills are booked."""

    order: BrokerOrder


@dataclass(frozen=True, slots=True)
class Sweep:
    """The gateway (re)connected: reconcile whatever was missed while it was away."""


Event = Booked | Finished | Sweep


class Bookkeeper:
    """Books the broker's executions into Firestore (consumer.store.books) and closes the orders IB finished.

    `start` hooks the broker's live events; a single worker books them in arrival order, what arrived while the
    last booking was in flight together (executions first, then the orders they finished; see Books.book_all).
    `reconcile` is the sweep: it runs after every connect, before every trading intent, and as the
    trade-reconciliation intent; it books what live booking missed and closes finished orders, booking a
    synthetic fill for what a finished order filled beyond the executions IB reports, and for what an earlier
    day's order IB no longer lists filled, read off the position (IB lists today's orders and fills only).
    An order IB never had is closed as NotPlaced after `stale_pending_after` seconds: written ahead and never sent
    (its intent died), or sent and never acknowledged (IB's paper server loses some orders without a word).
    """

    def __init__(self, broker: Broker, books: Books, stale_pending_after: float, account: str | None = None) -> None:
        self._broker = broker
        # One login may manage several accounts, each with its own books: this bookkeeper books only its own.
        self.account = account
        self._books = books
        self.stale_pending_after = stale_pending_after
        self._stale_pending = timedelta(seconds=stale_pending_after)
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._catch_up: asyncio.TimerHandle | None = None
        self._catch_up_in = CATCH_UP_FIRST

    def start(self) -> None:
        """Hooks the broker's events (hooked once: they hold across reconnects)."""
        self._broker.on_fill(self._on_fill)
        self._broker.on_order_done(self._on_order_done)
        self._broker.add_listener(self._on_gateway)
        self._worker = asyncio.create_task(self._work(), name="bookkeeper")

    def _on_fill(self, fill: Fill) -> None:
        # While connecting, the gateway replays the day's commission reports: the sweep queued once it is connected
        # books them all, and booking each now only failed (no account values yet) with a warning per reconnect.
        if self._ours(fill) and self._broker.ready:
            self._queue.put_nowait(Booked(fill))

    def _on_order_done(self, order: BrokerOrder) -> None:
        # A login's accounts share orderRefs (one request id runs once per account): another account's order
        # finishing says nothing of ours under the same ref, which may well be working still.
        if self.account is None or order.is_for(self.account):
            self._queue.put_nowait(Finished(order))

    def _ours(self, fill: Fill) -> bool:
        return self.account is None or fill.account == self.account

    def _session_fills(self) -> list[Fill]:
        """This connection's executions of this bookkeeper's account (a login's connection sees all its accounts')."""
        return [f for f in self._broker.session_fills() if self._ours(f)]

    async def stop(self) -> None:
        if self._queue.qsize():
            log.info("stopping with events not booked yet; the next sweep books them", pending=self._queue.qsize())
        if self._catch_up is not None:
            self._catch_up.cancel()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def _on_gateway(self, state: State) -> None:
        if state is State.CONNECTED:
            self._queue.put_nowait(Sweep())

    async def _work(self) -> None:
        while True:
            # What arrived while the last booking was in flight is booked together: a burst of fills (a big
            # rebalance) costs a transaction per batch instead of one per execution and per commission report.
            events = [await self._queue.get()]
            while len(events) < BATCH and not self._queue.empty() and not isinstance(events[-1], Sweep):
                events.append(self._queue.get_nowait())
            live = [e for e in events if not isinstance(e, Sweep)]
            try:
                if live and not await self._book_live(live):
                    self._catch_up_later()  # a failure of one, or of the batch and then of one of its events
                if isinstance(events[-1], Sweep):  # swept even if the live bookings before it failed
                    try:
                        log.info("books reconciled", **_counts(await self.reconcile()))
                        self._catch_up_in = CATCH_UP_FIRST
                    except Exception as e:
                        _warn_unless_stopping(e, ["Sweep"])
                        self._catch_up_later()
            finally:
                for _ in events:
                    self._queue.task_done()

    def _catch_up_later(self) -> None:
        """A sweep after a backoff, until one succeeds: a booking that failed (Firestore kept a killed process's
        transaction locks for 60 s) was left for "the next reconciliation", which came at the next reconnect or
        trading intent, hours later, while summary, pnl and risk-check read books short of IB's fills. While the
        gateway is away its reconnect queues the sweep."""
        if self._catch_up is not None or not self._broker.ready:
            return

        def due() -> None:
            self._catch_up = None
            self._queue.put_nowait(Sweep())

        self._catch_up = asyncio.get_running_loop().call_later(self._catch_up_in, due)
        self._catch_up_in = min(CATCH_UP_MAX, self._catch_up_in * 2)

    async def _book_live(self, events: list[Booked | Finished]) -> bool:
        """Books the events together, else one at a time (each failure logged); whether all of them were booked."""
        executions = [execution_of(e.fill, self._rates(e.fill)) for e in events if isinstance(e, Booked)]
        closes = [Close(e.order.order_ref, e.order.status, e.order.filled) for e in events if isinstance(e, Finished)]
        try:
            await self._books.book_all(executions, closes)
            return True
        except Exception as e:
            _warn_unless_stopping(e, ["batch" if len(events) > 1 else type(events[0]).__name__])
            if len(events) == 1:
                return False
        # One bad execution must not hold the others back until the next sweep: book the batch one at a time.
        booked = True
        for execution in executions:
            try:
                await self._books.book(execution)
            except Exception as e:
                _warn_unless_stopping(e, ["Booked"])
                booked = False
        for close in closes:
            try:
                await self._books.close_order(close.order_ref, close.final_state, close.broker_filled)
            except Exception as e:
                _warn_unless_stopping(e, ["Finished"])
                booked = False
        return booked

    def _account_rates(self) -> dict[str, float]:
        return self._broker.fx_rates(self.account) if self.account else {}

    def _rates(self, fill: Fill) -> dict[str, float]:
        accounts = self._broker.managed_accounts()
        account = fill.account or (accounts[0] if len(accounts) == 1 else "")
        return self._broker.fx_rates(account) if account else {}

    async def reconcile(self, record: ConnectionRecord | None = None) -> dict[str, Any]:
        """Books every execution the gateway reports that is not booked yet, and closes finished orders.

        `record`: a trading intent's connection record (decision 14): while its connection holds, executions and
        orders are read from it instead of asked for; the sweep after a connect and the reconcile intents ask.
        """
        reported = await self._broker.executions(record)
        fills = {f.exec_id: f for f in [*self._broker.session_fills(), *reported] if self._ours(f)}
        applied, commissions, known = [], [], 0
        # Every fill of the day is reported on every sweep: those already booked (with their commission, when the
        # report has one) are skipped on one batched read; a transaction each made a sweep grow with the day.
        booked = await self._books.booked_commissions(fills)
        todo: list[tuple[Fill, Execution]] = []
        for fill in sorted(fills.values(), key=lambda f: (f.time, f.exec_id)):
            execution = execution_of(fill, self._rates(fill))
            if fill.exec_id in booked and (booked[fill.exec_id] or execution.commission is None):
                known += 1
            else:
                todo.append((fill, execution))
        results, _ = await self._books.book_all([e for _, e in todo])
        for (fill, _), result in zip(todo, results, strict=True):
            if result == "applied":
                applied.append(fill.as_dict())
            elif result == "commission":
                commissions.append(fill.exec_id)
            else:
                known += 1
        closed, still_open, synthetic = await self._close_finished(list(fills.values()), record)
        return {
            "fillsApplied": applied,
            "fillsKnown": known,
            "commissionsAdded": commissions,
            "syntheticFills": synthetic,
            "ordersClosed": closed,
            "ordersOpen": still_open,
        }

    async def _close_finished(
        self, reported: list[Fill], record: ConnectionRecord | None
    ) -> tuple[list[dict[str, Any]], int, list[str]]:
        docs = await self._books.open_orders()
        try:
            at_broker = await self._broker.find_orders(
                {d["orderRef"] for d in docs}, record=record, account=self.account, perm_ids=perm_ids(docs)
            )
        except GatewayReadOnly:
            # IB refuses a read-only API the order lists: what became of these is unknown, so they stay open.
            log.warning("open orders in the books left open: the gateway's API is read-only", orders=len(docs))
            return [], len(docs), []
        closed, synthetic, still_open = [], [], 0
        fresh: list[list[Fill]] = []  # executions asked again, once, before any fill is made up
        now = datetime.now(UTC)
        flags = [self._unlisted(d, at_broker, record, now) for d in docs]
        listed = list(compress(docs, (not f for f in flags)))
        unlisted = list(compress(docs, flags))
        await self._record_placed(listed, at_broker)
        for doc in listed:
            ref = doc["orderRef"]
            found = at_broker.get(ref)
            if found is None or _never_acknowledged(found):
                # Never at IB: written ahead of a placement that never happened (its intent died and was not
                # re-run), or sent and lost before IB acknowledged it; IB lists it nowhere after all this time.
                if self._stale(doc, now) and await self._books.close_order(ref, NOT_PLACED, None):
                    closed.append({"orderRef": ref, "state": NOT_PLACED, "filled": doc.get("filled", 0.0)})
                    continue
                still_open += 1
                continue
            if not is_done(found.status):
                made_up, _ = await self._book_unreported(doc, found, reported, fresh, working=True)
                synthetic += [made_up] if made_up is not None else []
                still_open += 1
                continue
            done, made_up = await self._settle_finished(doc, found, reported, fresh)
            synthetic += [made_up] if made_up is not None else []
            if done:
                closed.append({"orderRef": ref, "state": found.status, "filled": found.filled})
            else:
                still_open += 1
        gone, inferred = await self.close_unlisted(unlisted, _instruments_open(listed, closed))
        return closed + gone, still_open + len(unlisted) - len(gone), synthetic + inferred

    async def _settle_finished(
        self, doc: dict[str, Any], found: Outcome, reported: list[Fill], fresh: list[list[Fill]]
    ) -> tuple[bool, str | None]:
        """Books what an order IB has finished filled beyond its booked executions and closes it: (closed, the
        synthetic fill's execId if one was made up). `fresh`: the executions asked again, once per sweep."""
        made_up, covered = await self._book_unreported(doc, found, reported, fresh)
        if covered is None:
            return False, None  # no price to book it at yet: open for a later sweep
        # Not covered: closed with what is booked, the books hold the rest elsewhere.
        return await self._books.close_order(doc["orderRef"], found.status, found.filled if covered else None), made_up

    async def _book_unreported(
        self, doc: dict[str, Any], found: Outcome, reported: list[Fill], fresh: list[list[Fill]], working: bool = False
    ) -> tuple[str | None, bool | None]:
        """What IB says the order filled beyond its booked executions, booked (see `_fill_in`); (None, True) when
        nothing is missing, or executions the gateway still knows are being booked (live or by this sweep).

        For a working order too: a GTC order's part filled on an earlier day while no consumer ran is in no
        execution IB reports today, and the order may work for days; unbooked meanwhile, every intent trading the
        instrument was refused books_disagree, and reconcile's fix put the part in unallocated. A working order's part
        is made up only up to what it had filled when this connection began: a part filled since may have its
        execution still on the way (IB promises no order between a status and its execution), and was booked twice
        when it came."""
        known = [*reported, *self._session_fills()]
        booked = abs(float(doc.get("filled", 0.0)))
        missing = found.filled - booked
        if working and missing > EPSILON:  # rare: the scan of the session's fills only then
            missing = self._beyond_status_only(doc, found) - booked
        unbooked = {f.exec_id for f in known if _of_order(f, doc)} - set(doc.get("execIds", []))
        if missing <= EPSILON or unbooked:
            return None, True
        if not fresh:
            fresh.append([f for f in await self._broker.executions() if self._ours(f)])
        return await self._fill_in(doc, found, missing, fresh[0])

    def _beyond_status_only(self, doc: dict[str, Any], found: Outcome) -> float:
        """What a working order filled, less any part this connection knows only from a live status: what it had
        filled at connect, plus its executions heard since and booked (a corrected one once: its latest version,
        none of a family the start-up download already had). Another client id's order is exempt: its statuses
        are not heard live, so none runs ahead of its execution here, and it is not in `filled_at_connect`."""
        if found.client_id is not None and found.client_id != self._broker.client_id:
            return found.filled
        booked_ids = set(doc.get("execIds", []))
        latest: dict[str, tuple[str, float]] = {}
        at_connect: set[str] = set()
        for f in self._session_fills():
            if f.order_ref != doc["orderRef"] or f.exec_id not in booked_ids:
                continue
            family = _execution_family(f.exec_id)
            if not self._broker.reported_since_connect(f.exec_id):
                at_connect.add(family)
            elif family not in latest or f.exec_id > latest[family][0]:
                latest[family] = (f.exec_id, abs(f.shares))
        heard = sum(shares for family, (_, shares) in latest.items() if family not in at_connect)
        return min(found.filled, self._broker.filled_at_connect(found.perm_id) + heard)

    async def orders_at_broker(
        self, request_id: str, besides: Collection[str] = ()
    ) -> list[tuple[dict[str, Any], Outcome | None]]:
        """A request's order documents (but `besides`), each with what IB says of it by orderRef and permId (None
        where IB lists it nowhere): what a later run of the request reports its earlier attempts placed."""
        open_docs, closed_docs = await self._books.orders_of(request_id)
        # Read one collection after the other, an order closed in between is in both: once, as closed.
        docs = {d["orderRef"]: d for d in (*open_docs, *closed_docs) if d["orderRef"] not in besides}
        if not docs:
            return []
        found = await self._broker.find_orders(set(docs), account=self.account, perm_ids=perm_ids(docs.values()))
        return [(doc, found.get(ref)) for ref, doc in sorted(docs.items())]

    async def _record_placed(self, docs: list[dict[str, Any]], at_broker: dict[str, Outcome]) -> None:
        """IB's ids on orders written ahead whose run died before it recorded them. The redelivery counts such an
        order as working and places nothing, so nothing else would: without a permId an order reads as one IB may
        never have had (closed NotPlaced once stale, read off the position only on a whole fill: decision 44)."""
        ids = {}
        for doc in docs:
            found = at_broker.get(doc["orderRef"])
            if not doc.get("permId") and found is not None and found.perm_id:
                ids[doc["orderRef"]] = {"orderId": found.order_id, "permId": found.perm_id,
                                        "clientId": found.client_id, "brokerStatus": found.status}  # fmt: skip
        await self._books.mark_placed(ids)

    def _unlisted(
        self, doc: dict[str, Any], at_broker: dict[str, Outcome], record: ConnectionRecord | None, now: datetime
    ) -> bool:
        """Asked afresh, IB lists it nowhere, and it is not a placement under way: IB took it (a permId), so it
        finished on an earlier day (IB lists the current day's completed orders and executions only; every open
        order is listed), or it was written ahead long ago (`_stale`). A connection's record is not asked: it
        misses another client id's orders still working."""
        if doc["orderRef"] in at_broker or (record is not None and record.holds):
            return False
        return bool(doc.get("permId")) or self._stale(doc, now)

    def _stale(self, doc: dict[str, Any], now: datetime) -> bool:
        created = doc.get("createdAt")
        return (
            not doc.get("permId")
            and doc.get("state") in ("pending", "placed")
            and created is not None
            and now - created > self._stale_pending
        )

    async def _gap(self) -> dict[int, float]:
        """{conId: the account's position beyond what the books hold}, over every strategy's book."""
        out: dict[int, float] = {}
        for p in await self._broker.positions():
            if self.account is None or p.account == self.account:
                out[p.con_id] = out.get(p.con_id, 0.0) + p.quantity
        for held in (await self._books.holdings()).values():
            for con_id, position in held.items():
                out[con_id] = out.get(con_id, 0.0) - float(position.get("quantity", 0.0))
        return out

    async def _unexplained(self, docs: list[dict[str, Any]], busy: set[int]) -> tuple[dict[int, float], set[int]]:
        """The position's gap to the books, and the conIds where something else may be moving it: any other order of
        ours open (written ahead before it is sent), an execution not booked yet, or a gap that changed between two
        reads around those (a fill landing, or booked, while the sweep read). Such an instrument waits for a later
        sweep (decision 44). Another client's fill whose position update comes before IB reports its execution is
        the one case this cannot see."""
        before = await self._gap()
        names = {d["orderRef"] for d in docs}
        busy = busy | {int(d["conId"]) for d in await self._books.open_orders() if d["orderRef"] not in names}
        fills = [f for f in await self._broker.executions() if self._ours(f)]
        booked = await self._books.booked_exec_ids(f.exec_id for f in fills)
        busy |= {f.con_id for f in fills if f.exec_id not in booked}
        after = await self._gap()
        busy |= {c for c in before.keys() | after.keys() if abs(before.get(c, 0.0) - after.get(c, 0.0)) > EPSILON}
        return after, busy

    async def _prices(self, con_ids: set[int]) -> dict[int, float]:
        """IB's marks while the account holds them, else one snapshot each, asked together and briefly (this runs in
        sweeps before trades): a made-up fill is never priced at 0, since its realized P&L feeds risk-check."""
        marks = self._broker.portfolio_marks(self.account) if self.account else {}
        out = {c: marks[c] for c in con_ids if c in marks}
        instruments = []
        for con_id in sorted(con_ids - out.keys()):
            try:
                instruments.append(await self._broker.by_con_id(con_id))
            except Exception as e:  # no contract any more (an expired future): that order waits, the rest go on
                log.warning("no contract to price a fill read off the position", conId=con_id, error=str(e))
        try:
            out.update(await self._broker.prices(instruments, within=SWEEP_PRICE_SECONDS) if instruments else {})
        except Exception as e:  # no market data: those orders wait for a later sweep
            log.warning("no price for fills read off the position", conIds=sorted(con_ids - out.keys()), error=str(e))
        return out

    async def close_unlisted(
        self, docs: list[dict[str, Any]], busy: set[int]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Closes orders IB lists nowhere, with what they filled read off the position: (closed, synthetic execIds).

        For an order IB took (a permId) that is an earlier day's; for one written ahead and never acknowledged (its
        run killed before it recorded IB's answer: consumer.recovery, or the stale ones here), it may also never
        have been sent. Neither the order nor its executions are reported any more, but the account's position is:
        what it holds beyond the books on the order's instrument is what the order filled after the books last
        heard of it (none: it expired, was cancelled, or never got to IB). Only when that is unambiguous: the one
        such order on its instrument (several, all one way, close only when nothing moved), nothing else moving it
        (`_unexplained`), the difference within what the order had left, in its direction, and all of it for an
        order IB never acknowledged; a price to book it at. Anything else stays open and is the reconcile intent's,
        which compares books and positions. Forex is no position at IB (IDEALPRO trades are cash balances): a
        conversion is closed only if never acknowledged and not filled, as any stale write-ahead was.
        """
        if not docs:
            return [], []
        by_con: dict[int, list[dict[str, Any]]] = {}
        for doc in docs:
            by_con.setdefault(int(doc["conId"]), []).append(doc)
        gap, busy = await self._unexplained(docs, busy)
        closed: list[dict[str, Any]] = []
        moved: list[tuple[dict[str, Any], float]] = []
        for con_id, group in by_con.items():
            if await self._closed_unfilled(group, gap.get(con_id, 0.0), con_id in busy, closed):
                continue
            if _fills_its_order(group[0], gap[con_id]):
                moved.append((group[0], gap[con_id]))
            else:
                _left_open(group, con_id)
        prices = await self._prices({int(doc["conId"]) for doc, _ in moved}) if moved else {}
        synthetic: list[str] = []
        for doc, signed in moved:
            price = prices.get(int(doc["conId"]))
            if price is None:
                _left_open([doc], int(doc["conId"]))
                continue
            exec_id, entry = await self._book_moved(doc, signed, price)
            synthetic.append(exec_id)
            if entry is not None:
                closed.append(entry)
        return closed, synthetic

    async def _closed_unfilled(
        self, group: list[dict[str, Any]], gap: float, busy: bool, closed: list[dict[str, Any]]
    ) -> bool:
        """Settles an instrument's unlisted orders that no fill is read for (closed, onto `closed`, or left open):
        False for the one order whose fill the gap may be."""
        con_id = int(group[0]["conId"])
        if group[0].get("secType") == "CASH":
            quiet = [d for d in group if not d.get("permId") and not d.get("filled")]
            closed += [c for d in quiet if (c := await self._close_as_booked(d)) is not None]
            if len(quiet) < len(group):
                _left_open([d for d in group if d not in quiet], con_id)
        elif busy or (len(group) > 1 and (abs(gap) > EPSILON or _both_ways(group))):
            _left_open(group, con_id)
        elif abs(gap) <= EPSILON:
            closed += [c for d in group if (c := await self._close_as_booked(d)) is not None]
        else:
            return False
        return True

    async def _book_moved(self, doc: dict[str, Any], signed: float, price: float) -> tuple[str, dict[str, Any] | None]:
        """Books `signed` (the position's move) as the order's one synthetic fill and closes the order: (execId, the
        closed entry, None if a later sweep closes it)."""
        ordered = abs(float(doc["quantity"]))
        filled = abs(float(doc.get("filled", 0.0))) + abs(signed)
        exec_id = f"synthetic-{doc.get('permId') or doc['orderRef']}-{filled:g}"
        result = await self._books.book(_synthetic(doc, exec_id, abs(signed), price, self._account_rates()))
        state = "Filled" if filled >= ordered - EPSILON else "Cancelled"
        entry = {"orderRef": doc["orderRef"], "state": state, "filled": filled, "unlisted": True}
        # A fill that completes its order closes it as it is booked (Filled): nothing left to close then.
        if (result == "applied" and state == "Filled") or await self._books.close_order(doc["orderRef"], state, filled):
            return exec_id, entry
        return exec_id, None

    async def _close_as_booked(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Closes an order IB lists nowhere with what the books hold of it (nothing more filled)."""
        ordered = abs(float(doc["quantity"]))
        booked = abs(float(doc.get("filled", 0.0)))
        state = "Filled" if booked >= ordered - EPSILON else "Cancelled"
        if booked <= EPSILON and not doc.get("permId"):
            state = NOT_PLACED  # IB never said it took it, and nothing filled
        if await self._books.close_order(doc["orderRef"], state, booked):
            return {"orderRef": doc["orderRef"], "state": state, "filled": booked, "unlisted": True}
        return None

    async def _fill_in(
        self, doc: dict[str, Any], found: Outcome, missing: float, fresh: list[Fill]
    ) -> tuple[str | None, bool | None]:
        """Books what an order filled beyond its booked executions: (the synthetic fill's execId, if made
        up; False when the position says the books hold it already, and the order is to close as booked; None when
        no price is known to book it at, and the order is to stay open).

        The sweep read the executions before the order's status: IB may send a fill's status ahead of its
        execution, and another client id's order may fill in between. `fresh`, asked after the status, is what IB
        still reports: booked as itself. Only what IB does not report is made up from the order, and only while
        the account's position holds it beyond the books: a GTC order's earlier day's part (IB reports today's
        executions only) that reconcile's fix has booked to unallocated was booked a second time.
        """
        booked = set(doc.get("execIds", []))
        late = [f for f in fresh if _of_order(f, doc) and f.exec_id not in booked]
        if late:
            await self._books.book_all([execution_of(f, self._rates(f)) for f in late])
            return None, True
        # Forex is no position at IB (IDEALPRO trades are cash balances; FX positions may be off): not read there.
        forex = doc.get("secType") == "CASH"
        along = 0.0 if forex else (await self._gap()).get(int(doc["conId"]), 0.0) * (1 if doc["quantity"] > 0 else -1)
        if not forex and along < missing - EPSILON:
            log.warning("an order's fill IB no longer reports is not in the position beyond the books; "
                        "closed with what is booked", orderRef=doc["orderRef"], missing=missing, gap=along)  # fmt: skip
            return None, False
        exec_id = f"synthetic-{found.perm_id}-{found.filled:g}"
        # IB's completed orders carry no average price: the limit, else IB's mark or a snapshot now, is the nearest
        # known; never 0, since its realized P&L feeds risk-check.
        con_id = int(doc["conId"])
        price = found.avg_fill_price or found.limit_price or (await self._prices({con_id})).get(con_id)
        if not price:
            log.warning("no price for an order's unreported fill; left open", orderRef=doc["orderRef"])
            return None, None
        await self._books.book(_synthetic(doc, exec_id, missing, price, self._account_rates()))
        return exec_id, True


def _fills_its_order(doc: dict[str, Any], signed: float) -> bool:
    """Whether a position move of `signed` can be what the order filled since the books last heard of it: in its
    direction, within what it had left, and all of it for an order IB never acknowledged (it may never have been
    sent, and a part of it is as likely something else)."""
    along = signed if doc["quantity"] > 0 else -signed
    left = abs(float(doc["quantity"])) - abs(float(doc.get("filled", 0.0)))
    whole = abs(along - left) <= EPSILON
    return EPSILON < along <= left + EPSILON and (whole or bool(doc.get("permId")))


def _both_ways(group: list[dict[str, Any]]) -> bool:
    """Buys and sells among them: fills of theirs can cancel out in the position."""
    return len({d["quantity"] > 0 for d in group}) > 1


def _left_open(group: list[dict[str, Any]], con_id: int) -> None:
    log.warning(
        "an order IB lists nowhere, and the position does not say what it filled; left open for the reconcile intent",
        orders=sorted(d["orderRef"] for d in group),
        conId=con_id,
    )


def _instruments_open(docs: list[dict[str, Any]], closed: list[dict[str, Any]]) -> set[int]:
    """The conIds of these orders that are still open after `closed`."""
    done = {c["orderRef"] for c in closed}
    return {int(d["conId"]) for d in docs if d["orderRef"] not in done}


def _execution_family(exec_id: str) -> str:
    """An execution and IB's corrections of it ("...01.01", "...01.02") share the id before the final period."""
    base, dot, version = exec_id.rpartition(".")
    return base if dot and version.isdigit() else exec_id


def _of_order(fill: Fill, doc: Mapping[str, Any]) -> bool:
    """An execution of the document's order: under its ref, and with its permId once IB numbered it (another
    client's execution under our ref is booked to unallocated, decision 65, never as the order's)."""
    perm = int(doc.get("permId") or 0)
    return fill.order_ref == doc["orderRef"] and (not perm or not fill.perm_id or fill.perm_id == perm)


def perm_ids(docs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """orderRef -> permId of the order documents IB has numbered: the order a ref names at the broker."""
    return {d["orderRef"]: int(d["permId"]) for d in docs if d.get("permId")}


def _never_acknowledged(found: Outcome) -> bool:
    """Known only as this connection's own placement IB never answered: IB gives every order it takes a permId."""
    return found.fate is Fate.UNCONFIRMED and found.perm_id is None and found.status != "PendingCancel"


def _synthetic(doc: dict[str, Any], exec_id: str, quantity: float, price: float, rates: dict[str, float]) -> Execution:
    """A fill read off the position or the order: in base currency at the account's rate now (without one its
    realized P&L would count nowhere: the books mark it base-incomplete)."""
    return Execution(
        exec_id=exec_id,
        order_ref=doc["orderRef"],
        perm_id=int(doc.get("permId") or 0),
        con_id=int(doc["conId"]),
        symbol=doc.get("symbol", ""),
        sec_type=doc.get("secType", ""),
        currency=doc.get("currency", ""),
        exchange=doc.get("exchange", ""),
        multiplier=float(doc.get("multiplier", 1.0)),
        side="BOT" if doc["quantity"] > 0 else "SLD",
        shares=quantity,
        price=price,
        time=datetime.now(UTC).isoformat(),
        synthetic=True,
        fx_rate=rates.get(doc.get("currency", "")),
    )


# The first catch-up sweep after a failed booking, doubling to the cap: past the 60 s for which Firestore holds a dead
# client's transaction locks.
CATCH_UP_FIRST = 2.0
CATCH_UP_MAX = 120.0


def _warn_unless_stopping(e: Exception, kinds: list[str]) -> None:
    """Logs a failed booking, or ends the worker if `stop` cancelled it (a booking cancelled inside its transaction
    fails with the store's own error; see reraise_if_cancelled)."""
    reraise_if_cancelled(e)
    # Firestore's transaction wrapper can mask the real failure with a rollback error; name both.
    cause = e.__context__
    log.warning(
        "live booking failed; the next reconciliation will catch up",
        kind=",".join(sorted(set(kinds))),
        error=str(e),
        cause=repr(cause) if cause else None,
    )


def _counts(report: dict[str, Any]) -> dict[str, int]:
    return {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()}
