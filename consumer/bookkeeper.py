"""Keeps the books in step with the broker: every execution booked as it happens, and a sweep after reconnects.

The consumer is connected all day, so executions are booked the moment the gateway reports them (ib_insync's
execution and commission events, on the broker loop). The sweep (`reconcile`, also the trade-reconciliation
intent) catches whatever was missed while the consumer was down, and closes orders the broker has finished.
The gateway reports only the current day's executions, so a finished order whose fills it no longer lists is
booked from the order's own filled quantity and average price, marked synthetic: nothing depends on the sweep
running on the day of the fill.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from ib_insync import Fill, Trade

from consumer.broker import views
from consumer.broker.gateway import Gateway, State
from consumer.broker.orders import DONE, find_orders
from consumer.logs import get_logger
from consumer.portfolio import EPSILON
from consumer.store.books import Books, Execution

log = get_logger(__name__)


def execution_of(fill: Fill) -> Execution:
    e, c, r = fill.execution, fill.contract, fill.commissionReport
    has_commission = bool(r and r.execId)
    return Execution(
        exec_id=e.execId,
        order_ref=e.orderRef or "",
        perm_id=e.permId,
        con_id=c.conId,
        symbol=c.localSymbol or c.symbol,
        sec_type=c.secType,
        currency=c.currency,
        exchange=c.exchange or e.exchange,
        multiplier=views.number(c.multiplier) or 1.0,
        side=e.side,
        shares=float(e.shares),
        price=float(e.price),
        time=e.time.isoformat() if isinstance(e.time, datetime) else str(e.time),
        commission=views.number(r.commission) if has_commission else None,
        commission_currency=(r.currency or None) if has_commission else None,
        account=e.acctNumber,
    )


class Bookkeeper:
    def __init__(self, gateway: Gateway, books: Books, stale_pending_after: float) -> None:
        self._gateway = gateway
        self._books = books
        self.stale_pending_after = stale_pending_after
        self._stale_pending = timedelta(seconds=stale_pending_after)
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Hooks the IB object's events (it lives for the whole process, across reconnects)."""
        ib = self._gateway.ib
        ib.execDetailsEvent += lambda trade, fill: self._queue.put_nowait(("fill", fill))
        ib.commissionReportEvent += lambda trade, fill, report: self._queue.put_nowait(("fill", fill))
        ib.orderStatusEvent += self._on_status
        self._gateway.add_listener(self._on_gateway)
        self._worker = asyncio.create_task(self._work(), name="bookkeeper")

    async def stop(self) -> None:
        if self._queue.qsize():
            log.info("stopping with events not booked yet; the next sweep books them", pending=self._queue.qsize())
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def _on_status(self, trade: Trade) -> None:
        if trade.orderStatus.status in DONE and trade.order.orderRef:
            self._queue.put_nowait(("done", trade))

    def _on_gateway(self, state: State) -> None:
        if state is State.CONNECTED:
            self._queue.put_nowait(("sweep", None))

    async def _work(self) -> None:
        while True:
            kind, item = await self._queue.get()
            try:
                if kind == "fill":
                    await self._books.book(execution_of(item))
                elif kind == "done":
                    status = item.orderStatus
                    await self._books.close_order(item.order.orderRef, status.status, status.filled)
                elif kind == "sweep":
                    log.info("books reconciled after connect", **_counts(await self.reconcile()))
            except Exception as e:
                # Firestore's transaction wrapper can mask the real failure with a rollback error; name both.
                cause = e.__context__
                log.warning(
                    "live booking failed; the next reconciliation will catch up",
                    kind=kind,
                    error=str(e),
                    cause=repr(cause) if cause else None,
                )
            finally:
                self._queue.task_done()

    async def reconcile(self) -> dict[str, Any]:
        """Books every execution the gateway reports that is not booked yet, and closes finished orders."""
        ib = self._gateway.require()
        reported = await self._gateway.requests.executions()
        fills = {f.execution.execId: f for f in [*ib.fills(), *reported]}
        applied, commissions, known = [], [], 0
        for fill in sorted(fills.values(), key=lambda f: (str(f.time), f.execution.execId)):
            result = await self._books.book(execution_of(fill))
            if result == "applied":
                applied.append(views.fill(fill))
            elif result == "commission":
                commissions.append(fill.execution.execId)
            else:
                known += 1
        closed, still_open, synthetic = await self._close_finished(list(fills.values()))
        return {
            "fillsApplied": applied,
            "fillsKnown": known,
            "commissionsAdded": commissions,
            "syntheticFills": synthetic,
            "ordersClosed": closed,
            "ordersOpen": still_open,
        }

    async def _close_finished(self, reported: list[Fill]) -> tuple[list[dict[str, Any]], int, list[str]]:
        ib = self._gateway.require()
        docs = await self._books.open_orders()
        at_broker = await find_orders(ib, self._gateway.requests, {d["orderRef"] for d in docs})
        closed, synthetic, still_open = [], [], 0
        now = datetime.now(UTC)
        for doc in docs:
            ref = doc["orderRef"]
            found = at_broker.get(ref)
            if found is None:
                created = doc.get("createdAt")
                stale = doc.get("state") == "pending" and created is not None and now - created > self._stale_pending
                # Written ahead of a placement that never happened (its intent died and was not re-run).
                if stale and await self._books.close_order(ref, "NotPlaced", None):
                    closed.append({"orderRef": ref, "state": "NotPlaced", "filled": doc.get("filled", 0.0)})
                    continue
                still_open += 1
                continue
            if found.status not in DONE:
                still_open += 1
                continue
            booked = abs(float(doc.get("filled", 0.0)))
            missing = found.filled - booked
            # Executions the gateway still knows are booked normally (live or by this sweep); only fills it no
            # longer reports (an earlier day's) are booked from the order itself.
            known = [*reported, *ib.fills()]
            unbooked = {f.execution.execId for f in known if f.execution.orderRef == ref} - set(doc.get("execIds", []))
            if missing > EPSILON and not unbooked:
                exec_id = f"synthetic-{found.perm_id}-{found.filled:g}"
                await self._books.book(_synthetic(doc, exec_id, missing, found.avg_fill_price or 0.0))
                synthetic.append(exec_id)
            if await self._books.close_order(ref, found.status, found.filled):
                closed.append({"orderRef": ref, "state": found.status, "filled": found.filled})
            else:
                still_open += 1
        return closed, still_open, synthetic


def _synthetic(doc: dict[str, Any], exec_id: str, quantity: float, price: float) -> Execution:
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
    )


def _counts(report: dict[str, Any]) -> dict[str, int]:
    return {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()}
