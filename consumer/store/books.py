"""Books and records: open orders, fills and each strategy's holdings, kept exact in Firestore.

Every execution is booked in a transaction: the fill document (keyed by IB's execId), the strategies' shares
of it, their holdings, and the order's progress are written together or not at all, so an execution is applied
once however often it is seen, and a crash between steps leaves nothing half-applied. A burst of executions (the
fills of a big rebalance) is booked a batch per transaction (`book_all`): applied one by one in memory, each
document read once and written once, the whole batch or nothing.

Transactions are serialised in-process (one booking at a time): bookings touch the same order and holdings
documents, and contention only turns into retries. Nothing with an outside effect happens inside a transaction
function, because Firestore re-runs it on contention.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from google.cloud.firestore import AsyncTransaction, async_transactional
from google.cloud.firestore_v1.base_query import FieldFilter

from consumer.logs import get_logger
from consumer.pnl import Lot, late_commission, trade
from consumer.portfolio import EPSILON, attribute, scale_parts
from consumer.store.layout import Layout

UNALLOCATED = "unallocated"
# Executions (or closes) per booking transaction: each costs at most three writes (its fill, its order moved from
# open to closed), well inside Firestore's 500 writes per commit with the strategies' holdings documents.
BATCH = 100

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Execution:
    """One execution as the books need it (built from the broker's Fill by consumer.bookkeeper)."""

    exec_id: str
    order_ref: str
    perm_id: int
    con_id: int
    symbol: str
    sec_type: str
    currency: str
    exchange: str
    multiplier: float
    side: str  # BOT / SLD
    shares: float
    price: float
    time: str
    commission: float | None = None
    commission_currency: str | None = None
    account: str = ""
    synthetic: bool = False  # made up by a sweep for fills IB does not report (bookkeeper, decisions 34 and 44)
    # Units of base currency per unit of the instrument's / the commission's currency, as the consumer knows them
    # when it books (the account's ExchangeRate values; None when the account reports none for that currency).
    fx_rate: float | None = None
    commission_fx_rate: float | None = None

    def local_commission(self, commission: float) -> float:
        """The commission in the instrument's currency (what its P&L is kept in)."""
        if self.commission_currency in (None, "", self.currency):
            return commission
        if self.fx_rate and self.commission_fx_rate:
            return commission * self.commission_fx_rate / self.fx_rate
        return commission  # no rate known for one of them: booked at par rather than not at all

    @property
    def signed(self) -> float:
        return self.shares if self.side == "BOT" else -self.shares


@dataclass(frozen=True, slots=True)
class PendingOrder:
    """An order about to be placed, written before it is sent so a crash cannot orphan it."""

    order_ref: str
    request_id: str
    intent: str
    instrument: dict[str, Any]
    quantity: float
    shares: dict[str, float]


class Books:
    """The strategies' books in Firestore: order documents, fills (keyed by execId) and holdings per strategy.

    An order is written ahead of placement (`write_pending`), marked placed with IB's ids (`mark_placed`),
    advanced by each execution (`book`: once per execId, split among the order's strategies by
    consumer.portfolio.attribute) and closed once IB has finished it and every unit it filled is booked
    (`close_order`). An execution of no order of ours is real and booked to `unallocated`. `transfer` and
    `adjust` move holdings without an order (a netted-out leg; a reconcile fix), once per record id. Every
    write of the books happens under `lock`, one at a time.
    """

    def __init__(self, layout: Layout, lock: asyncio.Lock | None = None) -> None:
        self._layout = layout
        self._lock = lock or asyncio.Lock()

    @property
    def lock(self) -> asyncio.Lock:
        return self._lock

    # -- reading -------------------------------------------------------------------------------------------------

    async def holdings(self, strategies: Iterable[str] | None = None) -> dict[str, dict[int, dict[str, Any]]]:
        """{strategy: {conId: position}} for the given strategies (all when None)."""
        if strategies is None:
            snapshots = [s async for s in self._layout.holdings().stream()]
        else:
            refs = [self._layout.holdings().document(s) for s in strategies]
            snapshots = [s async for s in self._layout.db.get_all(refs)] if refs else []
        return _holdings_of(snapshots)

    async def ledgers(self) -> dict[str, dict[str, Any]]:
        """{strategy: holdings document}: open positions (with `avgCost`) and the cumulative `realized` map, which
        outlives the positions it came from."""
        out = {}
        async for snapshot in self._layout.holdings().stream():
            document = snapshot.to_dict() or {}
            positions = {k: v for k, v in document.get("positions", {}).items() if _nonzero(v)}
            out[snapshot.id] = {"positions": positions, "realized": document.get("realized", {})}
        return out

    async def open_orders(self) -> list[dict[str, Any]]:
        return [s.to_dict() or {} async for s in self._layout.open_orders().stream()]

    async def holdings_and_open_orders(
        self, strategies: Iterable[str] | None = None
    ) -> tuple[dict[str, dict[int, dict[str, Any]]], list[dict[str, Any]]]:
        """`holdings` and `open_orders` as of one moment (a read-only transaction): a fill is booked into both at
        once, and one booked between two separate reads is in one and not the other, so sizing counted it twice
        (a sale of what had just filled) or not at all (a second buy)."""
        return await _read_together(self._layout.db.transaction(read_only=True), self._layout, strategies)

    async def fills(self, exec_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The booked fill documents of these executions, by execId (an unbooked one is absent)."""
        refs = [self._layout.fills().document(e) for e in set(exec_ids)]
        return {s.id: s.to_dict() or {} async for s in self._layout.db.get_all(refs) if s.exists} if refs else {}

    async def booked_exec_ids(self, exec_ids: Iterable[str]) -> set[str]:
        """Which of these executions are booked."""
        refs = [self._layout.fills().document(e) for e in set(exec_ids)]
        return {s.id async for s in self._layout.db.get_all(refs) if s.exists} if refs else set()

    async def booked_commissions(self, exec_ids: Iterable[str]) -> dict[str, bool]:
        """Of these executions, the booked ones and whether their commission is booked too: one batched read, so a
        sweep skips what is done without a transaction per fill of the day."""
        refs = [self._layout.fills().document(e) for e in set(exec_ids)]
        if not refs:
            return {}
        return {
            s.id: (s.to_dict() or {}).get("commission") is not None
            async for s in self._layout.db.get_all(refs)
            if s.exists
        }

    # -- orders ----------------------------------------------------------------------------------------------------

    async def orders_of(self, request_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(open, closed) order documents a request wrote."""
        by_request = FieldFilter("requestId", "==", request_id)
        open_ = [s.to_dict() or {} async for s in self._layout.open_orders().where(filter=by_request).stream()]
        closed = [s.to_dict() or {} async for s in self._layout.orders().where(filter=by_request).stream()]
        return open_, closed

    async def write_pending(self, orders: Iterable[PendingOrder]) -> None:
        """Write-ahead of placement, so an order sent just before a crash is still attributed to its strategies.

        An order still `pending` (written by an earlier run that died before sending it) is rewritten with this
        run's quantities; one that was placed is left alone (the caller does not send it again).
        """
        orders = list(orders)
        if not orders:
            return
        refs = [self._layout.open_orders().document(o.order_ref) for o in orders]
        existing = {s.id: (s.to_dict() or {}) async for s in self._layout.db.get_all(refs) if s.exists}
        batch = self._layout.db.batch()
        now = datetime.now(UTC)
        for order, ref in zip(orders, refs, strict=True):
            if existing.get(order.order_ref, {}).get("state", "pending") != "pending":
                continue
            batch.set(
                ref,
                {
                    "orderRef": order.order_ref,
                    "requestId": order.request_id,
                    "intent": order.intent,
                    **order.instrument,
                    "quantity": order.quantity,
                    "action": "BUY" if order.quantity > 0 else "SELL",
                    "shares": order.shares,
                    "booked": {},
                    "filled": 0.0,
                    "execIds": [],
                    "state": "pending",
                    "createdAt": now,
                    "updatedAt": now,
                },
            )
        await batch.commit()

    async def mark_placed(self, updates: Mapping[str, Mapping[str, Any]]) -> None:
        """orderRef -> {orderId, permId, clientId, brokerStatus}, once the broker has answered.

        A fast order can be filled and booked (moved to `orders`) before this runs; under the booking lock the
        ids go to wherever the order document is now.
        """
        if not updates:
            return
        async with self._lock:
            refs = [c.document(r) for r in updates for c in (self._layout.open_orders(), self._layout.orders())]
            present = {(s.reference.parent.id, s.id) async for s in self._layout.db.get_all(refs) if s.exists}
            batch = self._layout.db.batch()
            now = datetime.now(UTC)
            for order_ref, fields in updates.items():
                if (self._layout.open_orders().id, order_ref) in present:
                    batch.update(
                        self._layout.open_orders().document(order_ref), {**fields, "state": "placed", "updatedAt": now}
                    )
                elif (self._layout.orders().id, order_ref) in present:
                    batch.update(self._layout.orders().document(order_ref), {**fields, "updatedAt": now})
            await batch.commit()

    async def close_order(self, order_ref: str, final_state: str, broker_filled: float | None) -> bool:
        """Moves a finished order to `orders`, once every unit the broker filled is booked. False if not yet."""
        _, closed = await self.book_all([], [Close(order_ref, final_state, broker_filled)])
        return closed[0]

    # -- fills -------------------------------------------------------------------------------------------------------

    async def book(self, execution: Execution) -> str:
        """'applied', 'known' (already booked), or 'commission' (known, and its late commission now added)."""
        results, _ = await self.book_all([execution])
        return results[0]

    async def book_all(
        self, executions: Sequence[Execution], closes: Sequence[Close] = ()
    ) -> tuple[list[str], list[bool]]:
        """Books the executions in their order (each as `book` would), then closes the finished orders (each as
        `close_order` would): a transaction per `BATCH` of them, so a burst of fills costs a few transactions, not
        one each, and each holdings or order document is written once per transaction. All-or-nothing per
        transaction. Returns `book`'s result per execution and `close_order`'s per close."""
        results: list[str] = []
        closed: list[bool] = []
        items = [*executions, *closes]  # the closes after every execution, so each order's fills come first
        async with self._lock:
            for i in range(0, len(items), BATCH):
                chunk = items[i : i + BATCH]
                booked, done = await _book_batch(
                    self._layout.db.transaction(),
                    self._layout,
                    [e for e in chunk if isinstance(e, Execution)],
                    [c for c in chunk if isinstance(c, Close)],
                )
                results.extend(booked)
                closed.extend(done)
        return results, closed

    # -- holdings without an order -----------------------------------------------------------------------------------

    async def transfer(
        self,
        request_id: str,
        instrument: dict[str, Any],
        moves: Mapping[str, float],
        price: float | None = None,
        fx_rate: float | None = None,
    ) -> bool:
        """Moves a position between strategies' books (a netted-out trade needs no order). Once per request.

        At the market `price` of the moment the giver realizes what it earned on what it gives and the receiver
        opens at `price` (consumer.pnl.transfer), so the books' total P&L is unchanged. Without a price (none
        could be had) the quantities move and each book keeps its `avgCost`; a book that held nothing gets none,
        so its cost is unknown (see `_write_holdings`) rather than made up.
        """
        key = hashlib.sha256(f"{request_id}:{instrument['conId']}".encode()).hexdigest()
        async with self._lock:
            return await _adjust(
                self._layout.db.transaction(),
                self._layout,
                self._layout.transfers().document(key),
                instrument,
                moves,
                {"requestId": request_id, "kind": "transfer", "price": price, "fxRate": fx_rate},
                priced=Priced(price, {}, fx_rate) if price is not None else None,
            )

    async def adjust(
        self,
        record_id: str,
        instrument: dict[str, Any],
        moves: Mapping[str, float],
        why: str,
        quote_moves: Mapping[str, float] | None = None,
    ) -> bool:
        """A correction (reconcile --fix), recorded under `record_id` so it is applied once.

        `quote_moves` (forex only) change the books' quote-currency amounts; without them a forex move carries
        none, so it changes the claim on the pair's base currency alone.
        """
        async with self._lock:
            return await _adjust(
                self._layout.db.transaction(),
                self._layout,
                self._layout.adjustments().document(record_id),
                instrument,
                moves,
                {"kind": "adjustment", "reason": why},
                quote_moves=quote_moves or {},
            )


# What a holdings position says of its instrument (besides quantity, avgCost and a pair's quoteAmount).
INSTRUMENT_FIELDS = ("conId", "symbol", "secType", "currency", "exchange", "multiplier")

# -- transaction functions (re-run by Firestore on contention: reads first, no outside effects) --------------------


@dataclass(frozen=True, slots=True)
class Close:
    """An order IB has finished: moved to `orders` once every unit the broker filled is booked."""

    order_ref: str
    final_state: str
    broker_filled: float | None


class _Ledger:
    """The documents one booking transaction reads and writes, kept in memory: each is read once (batched) and
    written once at the end, however many executions of the batch touch it. Firestore wants every read of a
    transaction before its writes; writing only at the end allows the odd read on demand (`holdings_of`)."""

    def __init__(self, transaction: AsyncTransaction, layout: Layout) -> None:
        self._transaction = transaction
        self._layout = layout
        self.fills: dict[str, dict[str, Any]] = {}
        self.changed_fills: dict[str, bool] = {}  # execId -> True when new (created), False when updated
        self.orders: dict[str, tuple[str, dict[str, Any]]] = {}  # orderRef -> (collection id, document)
        self._order_home: dict[str, str] = {}  # where each order was when read
        self.changed_orders: set[str] = set()
        self.holdings: dict[str, dict[str, Any]] = {}
        self.changed_holdings: set[str] = set()

    async def _get_all(self, refs: list[Any]) -> list[Any]:
        if not refs:
            return []
        # The client's get_all in the transaction: AsyncTransaction.get_all awaits an async generator (a library bug).
        return [s async for s in self._layout.db.get_all(refs, transaction=self._transaction)]

    async def load(self, executions: Sequence[Execution], closes: Sequence[Close]) -> None:
        layout = self._layout
        # With each execution, the earlier versions a correction of it replaces (IB: same execId but the digits
        # after its final period, ".01" -> ".02"), and the next version, in case its correction came first.
        ids = {i for e in executions for i in (e.exec_id, *earlier_versions(e.exec_id), later_version(e.exec_id))}
        for s in await self._get_all([layout.fills().document(i) for i in ids if i]):
            if s.exists:
                self.fills[s.id] = s.to_dict() or {}
        refs = {e.order_ref for e in executions if e.order_ref} | {c.order_ref for c in closes}
        collections = (layout.open_orders(), layout.orders())
        for s in await self._get_all([c.document(r) for r in refs for c in collections]):
            # An order is in one of the two; were it in both, the open document is the live one.
            if s.exists and (s.id not in self.orders or s.reference.parent.id == layout.open_orders().id):
                self.orders[s.id] = (s.reference.parent.id, s.to_dict() or {})
                self._order_home[s.id] = s.reference.parent.id
        strategies = {s for _, o in self.orders.values() for s in o.get("shares", {})}
        strategies |= {s for f in self.fills.values() for s in (f.get("strategies") or {})}
        if any(e.order_ref not in self.orders for e in executions):
            strategies.add(UNALLOCATED)
        await self.holdings_of(strategies)

    async def holdings_of(self, strategies: Iterable[str]) -> dict[str, dict[str, Any]]:
        missing = [s for s in set(strategies) if s not in self.holdings]
        for s in await self._get_all([self._layout.holdings().document(m) for m in missing]):
            self.holdings[s.id] = (s.to_dict() or {}) if s.exists else {}
        return self.holdings

    def write(self) -> None:
        t, layout = self._transaction, self._layout
        for strategy in self.changed_holdings:
            t.set(layout.holdings().document(strategy), self.holdings[strategy])
        for order_ref in self.changed_orders:
            where, order = self.orders[order_ref]
            collection = layout.open_orders() if where == layout.open_orders().id else layout.orders()
            t.set(collection.document(order_ref), order)
            if self._order_home[order_ref] != where:
                t.delete(layout.open_orders().document(order_ref))
        for exec_id, new in self.changed_fills.items():
            if new:
                t.create(layout.fills().document(exec_id), self.fills[exec_id])
            else:
                fill = self.fills[exec_id]
                fields = {"commission": fill["commission"], "commissionCurrency": fill["commissionCurrency"]}
                if "correctedBy" in fill:
                    fields["correctedBy"] = fill["correctedBy"]
                t.update(layout.fills().document(exec_id), fields)


@async_transactional
async def _read_together(
    transaction: AsyncTransaction, layout: Layout, strategies: Iterable[str] | None
) -> tuple[dict[str, dict[int, dict[str, Any]]], list[dict[str, Any]]]:
    db = layout.db
    # The async collection's stream takes the async transaction; its type hint names the sync one (a library slip).
    if strategies is None:
        held = [s async for s in layout.holdings().stream(transaction=transaction)]  # type: ignore[arg-type]
    else:
        refs = [layout.holdings().document(s) for s in strategies]
        held = [s async for s in db.get_all(refs, transaction=transaction)] if refs else []
    orders = [s.to_dict() or {} async for s in layout.open_orders().stream(transaction=transaction)]  # type: ignore[arg-type]
    return _holdings_of(held), orders


def _holdings_of(snapshots: Iterable[Any]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for snapshot in snapshots:
        if snapshot.exists:
            positions = (snapshot.to_dict() or {}).get("positions", {})
            out[snapshot.id] = {int(k): v for k, v in positions.items() if _nonzero(v)}
    return out


@async_transactional
async def _book_batch(
    transaction: AsyncTransaction, layout: Layout, executions: Sequence[Execution], closes: Sequence[Close]
) -> tuple[list[str], list[bool]]:
    """Books the executions in order, then closes the finished orders, all in one transaction."""
    ledger = _Ledger(transaction, layout)
    await ledger.load(executions, closes)
    now = datetime.now(UTC)
    results = [await _book(ledger, layout, e, now) for e in executions]
    closed = [_close(ledger, layout, c, now) for c in closes]
    ledger.write()
    return results, closed


async def _book(ledger: _Ledger, layout: Layout, e: Execution, now: datetime) -> str:
    fill = ledger.fills.get(e.exec_id)
    if fill is not None:
        if e.commission is not None and fill.get("commission") is None:
            # Its P&L: each strategy's share of it goes to the cost of what the fill opened or to realized.
            shares = {s: float(q) for s, q in (fill.get("strategies") or {}).items()}
            holdings = await ledger.holdings_of(shares)
            # A correction's report repeats what the execution it replaced was charged: only the difference is new.
            # A replaced execution's own late report is in its correction's already.
            charged = float(fill.get("commissionBefore") or 0.0)
            if not fill.get("correctedBy"):
                _late_commission(holdings, fill, shares, replace(e, commission=e.commission - charged), now)
            ledger.changed_holdings.update(shares)
            fill["commission"], fill["commissionCurrency"] = e.commission, e.commission_currency
            ledger.changed_fills.setdefault(e.exec_id, False)
            return "commission"
        return "known"

    later = later_version(e.exec_id)
    if later is not None and later in ledger.fills:
        # Its correction arrived first and was booked whole: this version is out of date. Kept, marked, so that a
        # sweep or eod-check finds it booked, and applied to nothing.
        ledger.fills[e.exec_id] = {
            "execId": e.exec_id, "orderRef": e.order_ref, "permId": e.perm_id, "conId": e.con_id, "symbol": e.symbol,
            "side": e.side, "shares": e.shares, "quantity": e.signed, "price": e.price, "time": e.time,
            "account": e.account, "commission": e.commission, "commissionCurrency": e.commission_currency,
            "strategies": {}, "correctedBy": later, "bookedAt": now,
        }  # fmt: skip
        ledger.changed_fills[e.exec_id] = True
        return "known"
    corrected = next((ledger.fills[i] for i in reversed(earlier_versions(e.exec_id)) if i in ledger.fills), None)
    if corrected is not None:
        if corrected.get("correctedBy"):
            return "known"  # a later correction of it is booked already: this one is out of date
        await _book_correction(ledger, layout, e, corrected, now)
        return "applied"

    # Its order: still open, or already closed (a late report for a cancelled, partly filled order).
    where, order = _order_of(ledger, e)

    if order is not None:
        shares, booked_after, filled_after, within = _order_shares(order, e)
    else:
        # Not an order of ours (a manual trade, another client): it is real, so it is booked, but to no strategy.
        shares = {UNALLOCATED: e.signed}
        booked_after, filled_after, within = {}, 0.0, 0.0

    holdings = await ledger.holdings_of(shares)
    # Forex: the quote currency the fill moved, per book (see consumer.forex).
    quotes = {s: -q * e.price for s, q in shares.items()} if e.sec_type == "CASH" else {}
    instrument = {
        "conId": e.con_id,
        "symbol": e.symbol,
        "secType": e.sec_type,
        "currency": e.currency,
        "exchange": e.exchange,
        "multiplier": e.multiplier,
    }
    commissions = _commission_shares(shares, e.local_commission(e.commission or 0.0))
    ledger.changed_holdings.update(
        _write_holdings(holdings, instrument, shares, now, quotes, Priced(e.price, commissions, e.fx_rate))
    )

    if order is not None and where is not None:
        progress = {
            "booked": booked_after,
            "filled": filled_after,
            "execIds": [*order.get("execIds", []), e.exec_id],
            "updatedAt": now,
        }
        still_open = where == layout.open_orders().id
        if still_open and abs(within - order["quantity"]) < EPSILON:
            ledger.orders[e.order_ref] = (layout.orders().id, {**order, **progress, "state": "Filled", "closedAt": now})
        else:
            ledger.orders[e.order_ref] = (where, {**order, **progress})
        ledger.changed_orders.add(e.order_ref)

    ledger.fills[e.exec_id] = {
        "execId": e.exec_id,
        "orderRef": e.order_ref,
        "permId": e.perm_id,
        **instrument,
        "side": e.side,
        "shares": e.shares,
        "quantity": e.signed,
        "price": e.price,
        "time": e.time,
        "account": e.account,
        "commission": e.commission,
        "commissionCurrency": e.commission_currency,
        "fxRate": e.fx_rate,
        "strategies": shares,
        "matched": order is not None,
        "synthetic": e.synthetic,
        "bookedAt": now,
    }
    ledger.changed_fills[e.exec_id] = True
    return "applied"


def earlier_versions(exec_id: str) -> list[str]:
    """The execIds a correction replaces, oldest first: IB's correction differs only in the digits after the final
    period ("0000e0d5.65a1b2c3.01.02" corrects "...01.01"). None for a first version or an id of another shape."""
    base, dot, version = exec_id.rpartition(".")
    if not dot or not version.isdigit() or int(version) <= 1:
        return []
    return [f"{base}.{n:0{len(version)}d}" for n in range(1, int(version))]


def later_version(exec_id: str) -> str | None:
    """The execId IB's next correction of this execution would have ("...01.01" -> "...01.02"), or None."""
    base, dot, version = exec_id.rpartition(".")
    if not dot or not version.isdigit():
        return None
    return f"{base}.{int(version) + 1:0{len(version)}d}"


async def _book_correction(
    ledger: _Ledger, layout: Layout, e: Execution, corrected: dict[str, Any], now: datetime
) -> None:
    """Books IB's correction `e` of a booked execution in its place, so that each book ends as if only `e` had
    happened: split among the books as its order splits a fill (beyond the order's quantity: unallocated), or, for
    an execution of no order of ours, its parts scaled to the corrected shares (consumer.portfolio.scale_parts).
    The price difference on the shares kept goes where that execution's cost went, as a late commission does (to
    the cost of what it opened, else to realized); shares added trade at the corrected price, shares taken away
    leave at the booked one; the commission counts only what it adds. The corrected fill keeps its document, marked
    `correctedBy`; the order's progress moves by the difference."""
    before = {s: float(q) for s, q in (corrected.get("strategies") or {}).items()}
    where, order = ledger.orders.get(e.order_ref, (None, None)) if e.order_ref else (None, None)
    if order is not None:
        # Split as the order splits its fills, as if the corrected execution had never been booked: its own parts
        # scaled on their own put a book past its share (2 split 1/1, corrected to 3: 1/2), and shares beyond the
        # order's quantity go to unallocated (decision 43).
        without = {k: float(v) - before.get(k, 0.0) for k, v in order.get("booked", {}).items()}
        unwound = {**order, "booked": without, "filled": float(order.get("filled", 0.0)) - float(corrected["quantity"])}
        after, booked_after, filled_after, within = _order_shares(unwound, e)
    else:
        # Whole shares, as the corrected execution alone would have been attributed: scaled in proportion, the
        # books of an order two strategies share held fractions of a share.
        after = scale_parts(before, e.signed)
    for s in {*before, *after}:
        before.setdefault(s, 0.0)
        after.setdefault(s, 0.0)
    moves = {s: after[s] - q for s, q in before.items() if abs(after[s] - q) > EPSILON}
    holdings = await ledger.holdings_of(before)
    instrument = {k: corrected[k] for k in INSTRUMENT_FIELDS}
    multiplier = float(instrument.get("multiplier") or 1.0)
    fx_rate = e.fx_rate if e.fx_rate is not None else corrected.get("fxRate")
    change = e.price - float(corrected["price"])
    kept = {s: (q if abs(after[s]) >= abs(q) else after[s]) for s, q in before.items()}
    if abs(change) > EPSILON:
        repriced = {**instrument, "fxRate": fx_rate}
        for s, q in kept.items():
            if abs(q) <= EPSILON:
                continue
            late = replace(e, commission=change * q * multiplier, commission_currency=e.currency)
            _late_commission(holdings, repriced, {s: q}, late, now)
    charged = corrected.get("commission")
    extra = (e.commission - float(charged or 0.0)) if e.commission is not None else 0.0
    # Shares added were bought (sold) at the corrected price; shares taken away were never traded, so they leave at
    # the price they were booked at, which leaves each book's P&L as if the corrected execution alone had happened.
    moved_at = e.price if e.shares > float(corrected["shares"]) else float(corrected["price"])
    quotes = {s: -moves.get(s, 0.0) * moved_at - change * kept[s] for s in before} if e.sec_type == "CASH" else {}
    _write_holdings(holdings, instrument, moves, now, quotes, Priced(moved_at, {}, fx_rate))
    after = {s: q for s, q in after.items() if abs(q) > EPSILON}
    if abs(extra) > EPSILON:
        _late_commission(holdings, corrected, after, replace(e, commission=extra), now)
    ledger.changed_holdings.update(before)

    if order is not None and where is not None:
        progress = {"booked": dict(booked_after), "filled": filled_after,
                    "execIds": [*order.get("execIds", []), e.exec_id], "updatedAt": now}  # fmt: skip
        if where == layout.open_orders().id and abs(within - float(order["quantity"])) < EPSILON:
            # Complete now, as a fill completing it closes it (a correction downwards leaves a closed order closed).
            ledger.orders[e.order_ref] = (layout.orders().id, {**order, **progress, "state": "Filled", "closedAt": now})
        else:
            ledger.orders[e.order_ref] = (where, {**order, **progress})
        ledger.changed_orders.add(e.order_ref)

    corrected["correctedBy"] = e.exec_id
    ledger.changed_fills.setdefault(corrected["execId"], False)
    ledger.fills[e.exec_id] = {
        **corrected,
        "execId": e.exec_id,
        "shares": e.shares,
        "quantity": e.signed,
        "price": e.price,
        "time": e.time,
        "commission": e.commission,
        "commissionCurrency": e.commission_currency or corrected.get("commissionCurrency"),
        # What the replaced execution was charged: a commission report of the correction that comes later
        # repeats it, so only the difference is booked then.
        "commissionBefore": charged if e.commission is None else None,
        "fxRate": fx_rate,
        "strategies": after,
        "corrects": corrected["execId"],
        "correctedBy": None,
        "bookedAt": now,
    }
    ledger.changed_fills[e.exec_id] = True


def _close(ledger: _Ledger, layout: Layout, c: Close, now: datetime) -> bool:
    where, order = ledger.orders.get(c.order_ref, (None, None))
    if order is None or where != layout.open_orders().id:
        return False
    booked = abs(float(order.get("filled", 0.0)))
    if c.broker_filled is not None and booked + EPSILON < abs(c.broker_filled):
        return False  # fills still to book; closing now would lose them
    closed = {**order, "state": c.final_state, "brokerFilled": c.broker_filled, "closedAt": now, "updatedAt": now}
    ledger.orders[c.order_ref] = (layout.orders().id, closed)
    ledger.changed_orders.add(c.order_ref)
    return True


@async_transactional
async def _adjust(
    transaction: AsyncTransaction,
    layout: Layout,
    record_ref: Any,
    instrument: dict[str, Any],
    moves: Mapping[str, float],
    record: dict[str, Any],
    quote_moves: Mapping[str, float] | None = None,
    priced: Priced | None = None,
) -> bool:
    if (await record_ref.get(transaction=transaction)).exists:
        return False
    holdings = await _read_holdings(transaction, layout, {*moves, *(quote_moves or {})})
    if quote_moves is None and instrument.get("secType") == "CASH":
        quote_moves = _transfer_quotes(holdings, str(instrument["conId"]), moves)
    now = datetime.now(UTC)
    for strategy in _write_holdings(holdings, instrument, moves, now, quote_moves or {}, priced):
        transaction.set(layout.holdings().document(strategy), holdings[strategy])
    extra = {"quoteMoves": dict(quote_moves)} if quote_moves else {}
    transaction.create(record_ref, {**record, "instrument": instrument, "moves": dict(moves), **extra, "at": now})
    return True


def _transfer_quotes(
    holdings: Mapping[str, Mapping[str, Any]], key: str, moves: Mapping[str, float]
) -> dict[str, float]:
    """A forex transfer between books moves quote amounts at the books' average price, so their sum is unchanged."""
    weight, total = 0.0, 0.0
    for strategy in moves:
        position = holdings.get(strategy, {}).get("positions", {}).get(key, {})
        quantity = float(position.get("quantity", 0.0))
        if abs(quantity) > EPSILON:
            weight += abs(quantity)
            total += abs(quantity) * float(position.get("quoteAmount", 0.0)) / quantity
    per_unit = total / weight if weight else 0.0
    return {s: per_unit * q for s, q in moves.items()}


def _nonzero(position: Mapping[str, Any]) -> bool:
    return abs(float(position.get("quantity", 0.0))) > EPSILON or abs(float(position.get("quoteAmount", 0.0))) > EPSILON


async def _read_holdings(
    transaction: AsyncTransaction, layout: Layout, strategies: Iterable[str]
) -> dict[str, dict[str, Any]]:
    out = {}
    for strategy in strategies:
        snapshot = await layout.holdings().document(strategy).get(transaction=transaction)
        out[strategy] = (snapshot.to_dict() or {}) if snapshot.exists else {}
    return out


@dataclass(frozen=True, slots=True)
class Priced:
    """What a move of holdings costs: the price per unit, each book's commission (instrument currency) and the
    rate to base currency (None: not known, so realizedPnlBase is not advanced and the entry says so)."""

    price: float
    commissions: Mapping[str, float]
    fx_rate: float | None


def _order_of(ledger: _Ledger, e: Execution) -> tuple[str | None, dict[str, Any] | None]:
    """(its collection, the order document) of an execution's order of ours, or (None, None). Under the order's ref
    it is the order's own only on its instrument, and with its permId once IB gave it one: a person copying our
    order in TWS, or another client id, can carry the same orderRef, and its fills were split among our order's
    strategies (10 QQQ booked to dummy under the ref of its SPY buy)."""
    where, order = ledger.orders.get(e.order_ref, (None, None)) if e.order_ref else (None, None)
    if order is None:
        return None, None
    if order.get("conId") and int(order["conId"]) != e.con_id:
        return None, None
    if order.get("permId") and e.perm_id and int(order["permId"]) != e.perm_id:
        return None, None
    return where, order


def _order_shares(order: Mapping[str, Any], e: Execution) -> tuple[dict[str, float], Mapping[str, float], float, float]:
    """An execution of our order, split among its strategies: (each book's move, the order's parts booked after
    it, its filled after it, the part of that within the order's quantity).

    What goes beyond the order's quantity was not the strategies' order (another client id placed under our
    orderRef, a leg sent twice): it goes to unallocated, as any execution not of ours, for reconcile to show.
    Attributed to the strategies, it overfilled their books, or could not be split in whole shares and raised in
    the booking transaction, on every sweep from then on."""
    booked_before = {k: float(v) for k, v in order.get("booked", {}).items()}
    quantity = float(order["quantity"])
    filled_before = float(order.get("filled", 0.0))
    filled_after = filled_before + e.signed
    within = filled_after - _beyond(quantity, filled_after)
    booked_after = attribute(order["shares"], quantity, within, booked_before)
    shares = {s: q - booked_before.get(s, 0.0) for s, q in booked_after.items()}
    beyond = _beyond(quantity, filled_after) - _beyond(quantity, filled_before)
    if abs(beyond) > EPSILON:
        log.warning("an execution beyond its order's quantity booked to unallocated", orderRef=e.order_ref,
                    execId=e.exec_id, quantity=quantity, filled=filled_after)  # fmt: skip
        shares[UNALLOCATED] = shares.get(UNALLOCATED, 0.0) + beyond
    return {s: q for s, q in shares.items() if abs(q) > EPSILON}, booked_after, filled_after, within


def _beyond(quantity: float, filled: float) -> float:
    """The part of an order's `filled` outside 0..`quantity` (past it, or the other way): not the order's."""
    low, high = sorted((0.0, quantity))
    return filled - min(max(filled, low), high)


def _commission_shares(shares: Mapping[str, float], commission: float) -> dict[str, float]:
    """The commission split among the books in proportion to their shares of the fill."""
    total = sum(abs(q) for q in shares.values())
    return {s: commission * abs(q) / total for s, q in shares.items()} if total > EPSILON else {}


def _lot(position: Mapping[str, Any]) -> Lot:
    return Lot(float(position.get("quantity", 0.0)), float(position.get("avgCost", 0.0)))


def _realize(
    document: Mapping[str, Any], key: str, instrument: Mapping[str, Any], amount: float, fx_rate: float | None
) -> dict[str, Any]:
    """The holdings document's `realized` map with `amount` (instrument currency) added for the instrument.

    Kept apart from `positions` because it outlives the position: a position traded to zero is removed.
    """
    realized = dict(document.get("realized", {}))
    entry = dict(realized.get(key, {"symbol": instrument.get("symbol"), "currency": instrument.get("currency")}))
    entry["realizedPnl"] = float(entry.get("realizedPnl", 0.0)) + amount
    if fx_rate is None:
        entry["baseIncomplete"] = abs(amount) > EPSILON or bool(entry.get("baseIncomplete", False))
        entry.setdefault("realizedPnlBase", 0.0)
    else:
        entry["realizedPnlBase"] = float(entry.get("realizedPnlBase", 0.0)) + amount * fx_rate
    realized[key] = entry
    return realized


def _unknown_cost(document: Mapping[str, Any], key: str, instrument: Mapping[str, Any]) -> dict[str, Any]:
    """The `realized` map with the instrument marked `costUnknown`: its P&L to date is incomplete."""
    realized = dict(document.get("realized", {}))
    entry = dict(realized.get(key, {"symbol": instrument.get("symbol"), "currency": instrument.get("currency")}))
    entry.setdefault("realizedPnl", 0.0)
    entry.setdefault("realizedPnlBase", 0.0)
    entry["costUnknown"] = True
    realized[key] = entry
    return realized


def _late_commission(
    holdings: dict[str, dict[str, Any]],
    fill: Mapping[str, Any],
    shares: Mapping[str, float],
    e: Execution,
    now: datetime,
) -> None:
    key = str(fill["conId"])
    multiplier = float(fill.get("multiplier") or 1.0)
    fx_rate = fill.get("fxRate", e.fx_rate)
    for strategy, commission in _commission_shares(shares, e.local_commission(e.commission or 0.0)).items():
        document = holdings.get(strategy, {})
        positions = dict(document.get("positions", {}))
        position = positions.get(key, {})
        if key in positions and "avgCost" not in position:  # unknown cost: the commission is a realized cost
            booking = late_commission(Lot(), shares[strategy], multiplier, commission)
        else:
            booking = late_commission(_lot(position), shares[strategy], multiplier, commission)
        if key in positions and "avgCost" in position:
            positions[key] = {**position, "avgCost": booking.lot.avg_cost}
        realized = _realize(document, key, fill, booking.realized, fx_rate)
        holdings[strategy] = {"strategy": strategy, "positions": positions, "realized": realized, "updatedAt": now}


def _write_holdings(
    holdings: dict[str, dict[str, Any]],
    instrument: dict[str, Any],
    moves: Mapping[str, float],
    now: datetime,
    quote_moves: Mapping[str, float] | None = None,
    priced: Priced | None = None,
) -> set[str]:
    """Applies the moves to the holdings documents in `holdings` (in memory); returns the strategies changed."""
    key = str(instrument["conId"])
    quote_moves = quote_moves or {}
    multiplier = float(instrument.get("multiplier") or 1.0)
    for strategy in {*moves, *quote_moves}:
        document = holdings.get(strategy, {})
        positions = dict(document.get("positions", {}))
        realized = dict(document.get("realized", {}))
        before = positions.get(key, {})
        move = moves.get(strategy, 0.0)
        # The instrument's own fields only: a caller's description may carry another book's avgCost (reconcile's fix
        # describes an instrument by what a strategy holds), which must not become this book's cost.
        described = {k: instrument[k] for k in INSTRUMENT_FIELDS if k in instrument}
        position = {**described, "quantity": float(before.get("quantity", 0.0)) + move}
        held = abs(float(before.get("quantity", 0.0))) > EPSILON
        if held and "avgCost" not in before:
            # Booked before costs were kept (or by a correction): its cost is unknown, so nothing is realized
            # against it until it is flat again; made-up P&L would be worse than none.
            realized = _unknown_cost(document, key, instrument)
        elif priced is not None and abs(move) > EPSILON:
            booking = trade(_lot(before), move, priced.price, multiplier, priced.commissions.get(strategy, 0.0))
            position["avgCost"] = booking.lot.avg_cost
            realized = _realize(document, key, instrument, booking.realized, priced.fx_rate)
        elif "avgCost" in before:
            position["avgCost"] = before["avgCost"]  # a move without a price (a correction) keeps the cost
        if instrument.get("secType") == "CASH":
            position["quoteAmount"] = float(before.get("quoteAmount", 0.0)) + quote_moves.get(strategy, 0.0)
        # A position traded to zero is gone: what quote currency it leaves is realized P&L, free cash. Only a
        # quote-only correction (reconcile fix on a quote currency) holds an amount without a quantity.
        quote_only = abs(move) < EPSILON and abs(float(before.get("quantity", 0.0))) < EPSILON
        if abs(position["quantity"]) > EPSILON or (quote_only and _nonzero(position)):
            positions[key] = position
        else:
            positions.pop(key, None)
        holdings[strategy] = {"strategy": strategy, "positions": positions, "realized": realized, "updatedAt": now}
    return {*moves, *quote_moves}
