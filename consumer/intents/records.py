"""The books' safety nets: trade-reconciliation (book what was missed) and reconcile (books vs broker positions)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from consumer.broker import views
from consumer.intents.base import Intent, IntentContext
from consumer.intents.rebalance import account_snapshot
from consumer.portfolio import EPSILON
from consumer.store.books import UNALLOCATED

# Cash conversions on IDEALPRO are balances, not holdings: no strategy owns them.
NOT_HOLDINGS = {"CASH"}


async def trade_reconciliation(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    """Every execution the gateway reports that is not booked yet is booked, once; finished orders are closed."""
    report = await ctx.services.bookkeeper.reconcile()
    return {
        **report,
        "ordersClosedCount": len(report["ordersClosed"]),
        "fillsAppliedCount": len(report["fillsApplied"]),
    }


async def reconcile(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    """Sum of strategy holdings vs the broker's positions, per instrument; `fix` books the gap to `unallocated`."""
    services = ctx.services
    ib = ctx.ib
    fix = bool(params.get("fix")) and not ctx.dry_run
    # Fills the books have not seen yet are not differences: book them first.
    await services.bookkeeper.reconcile()
    account = await account_snapshot(ib, services.settings.ib_account)
    positions = [p for p in await ctx.requests.positions() if p.account == account.id]
    holdings = await services.books.holdings()

    books: dict[int, dict[str, float]] = {}
    described: dict[int, dict[str, Any]] = {}
    for strategy, held in holdings.items():
        for con_id, position in held.items():
            books.setdefault(con_id, {})[strategy] = float(position["quantity"])
            described.setdefault(con_id, {k: v for k, v in position.items() if k != "quantity"})
    broker: dict[int, float] = {}
    for p in positions:
        if p.contract.secType in NOT_HOLDINGS:
            continue
        broker[p.contract.conId] = broker.get(p.contract.conId, 0.0) + float(p.position)
        described.setdefault(
            p.contract.conId,
            {
                "conId": p.contract.conId,
                "symbol": p.contract.localSymbol or p.contract.symbol,
                "secType": p.contract.secType,
                "currency": p.contract.currency,
                "exchange": p.contract.exchange or p.contract.primaryExchange,
                "multiplier": views.number(p.contract.multiplier) or 1.0,
            },
        )

    differences: list[dict[str, Any]] = []
    for con_id in sorted(set(books) | set(broker), key=lambda c: str(described[c].get("symbol"))):
        booked = sum(books.get(con_id, {}).values())
        at_broker = broker.get(con_id, 0.0)
        gap = at_broker - booked
        if abs(gap) > EPSILON:
            differences.append(
                {
                    "instrument": described[con_id].get("symbol"),
                    "conId": con_id,
                    "broker": at_broker,
                    "books": booked,
                    "byStrategy": books.get(con_id, {}),
                    "difference": gap,
                }
            )

    fixed = []
    if fix:
        for diff in differences:
            record = hashlib.sha256(f"{ctx.request_id}:{diff['conId']}".encode()).hexdigest()
            applied = await services.books.adjust(
                record,
                described[diff["conId"]],
                {UNALLOCATED: diff["difference"]},
                f"reconcile {ctx.request_id}: broker {diff['broker']:g} vs books {diff['books']:g}",
            )
            fixed.append({"instrument": diff["instrument"], "bookedTo": UNALLOCATED, "quantity": diff["difference"],
                          "applied": applied})  # fmt: skip
    result = {
        "account": account.id,
        "instruments": len(set(books) | set(broker)),
        "differences": differences,
        "consistent": not differences,
        "fixed": fixed,
    }
    if not ctx.dry_run:
        await (
            services.layout.reconciliations()
            .document(hashlib.sha256(ctx.request_id.encode()).hexdigest())
            .set({**result, "requestId": ctx.request_id, "at": datetime.now(UTC)})
        )
    return result


TRADE_RECONCILIATION = Intent(
    name="trade-reconciliation",
    handler=trade_reconciliation,
    description="Book executions not booked yet (each once), close finished orders.",
)
RECONCILE = Intent(
    name="reconcile",
    handler=reconcile,
    description="Compare strategy holdings with broker positions; fix=true books differences to unallocated.",
)
