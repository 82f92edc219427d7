"""The books' safety nets: trade-reconciliation (book what was missed) and reconcile (books vs the broker).

reconcile compares two things: per instrument, the books' holdings with the broker's positions; per currency other
than the base, the books' forex exposures with the broker's cash balances (the rule is in consumer.forex).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumer.broker.model import Fill, Position
from consumer.forex import currency_lines, is_forex, pair_currencies
from consumer.intents.base import Intent, IntentContext
from consumer.portfolio import EPSILON
from consumer.store.books import UNALLOCATED

# IB keeps IDEALPRO trades as cash balances, never positions: forex is compared per currency instead.
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
    fix = bool(params.get("fix")) and not ctx.dry_run
    found = await compare(ctx)
    differences = found.differences
    fixed = await _fix(ctx, differences, found.pairs, found.instruments.described) if fix else []
    result = {
        "account": found.account,
        "instruments": len(set(found.instruments.books) | set(found.instruments.broker)),
        "currencies": found.currencies,
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


@dataclass
class Comparison:
    """Books vs broker: what reconcile reports, and what risk-check's drift limit reads."""

    account: str
    instruments: _Instruments
    currencies: list[dict[str, Any]]
    differences: list[dict[str, Any]]
    pairs: dict[str, dict[str, Any]]


async def compare(ctx: IntentContext) -> Comparison:
    """Per instrument and per currency, the books against the broker; changes nothing but booking missed fills.

    Fills the books have not seen yet are not differences: they are booked first, and one landing while the
    broker is read (its position counted, its report not booked yet: IB sends them as separate messages, in no
    promised order) counts on the books' side as an execution not booked yet. Positions and executions are still
    two snapshots, so a difference is looked at again after booking what arrived, as check_books does: a `fix`
    of a fill in flight would be booked to unallocated and then to its strategy, counted twice."""
    await ctx.services.bookkeeper.reconcile()
    found = await _compare_once(ctx)
    if found.differences:
        await ctx.services.bookkeeper.reconcile()
        found = await _compare_once(ctx)
    return found


async def _compare_once(ctx: IntentContext) -> Comparison:
    services = ctx.services
    broker = ctx.broker
    account = await broker.account(services.account)
    positions = [p for p in await broker.positions() if p.account == account.id]
    # Asked after the positions: every execution they count is listed (and some they do not count yet).
    fills = [f for f in await broker.executions() if f.account == account.id and f.sec_type not in NOT_HOLDINGS]
    holdings = await services.books.holdings()
    booked = await services.books.booked_exec_ids({f.exec_id for f in fills})
    unbooked = [f for f in fills if f.exec_id not in booked]

    instruments = _by_instrument(holdings, positions, unbooked)
    differences = instruments.differences()
    currencies = currency_lines(holdings, broker.cash_balances(account.id), account.base_currency)
    pairs = _pairs_by_currency(holdings)
    for currency, cash in sorted(currencies.items()):
        if cash.difference:
            differences.append({**cash.as_dict(), "pair": pairs.get(currency, {}).get("symbol")})
    return Comparison(account.id, instruments, [c.as_dict() for _, c in sorted(currencies.items())], differences, pairs)


@dataclass
class _Instruments:
    """Per instrument (conId): each book's quantity, the broker's, and how to describe it."""

    books: dict[int, dict[str, float]] = field(default_factory=dict)
    broker: dict[int, float] = field(default_factory=dict)
    described: dict[int, dict[str, Any]] = field(default_factory=dict)
    unbooked: dict[int, float] = field(default_factory=dict)  # executions the books are about to book

    def differences(self) -> list[dict[str, Any]]:
        out = []
        every = set(self.books) | set(self.broker) | set(self.unbooked)
        for con_id in sorted(every, key=lambda c: str(self.described[c].get("symbol"))):
            unbooked = self.unbooked.get(con_id, 0.0)
            booked = sum(self.books.get(con_id, {}).values()) + unbooked
            at_broker = self.broker.get(con_id, 0.0)
            gap = at_broker - booked
            if abs(gap) > EPSILON:
                out.append(
                    {
                        "instrument": self.described[con_id].get("symbol"),
                        "conId": con_id,
                        "broker": at_broker,
                        "books": booked,
                        "byStrategy": self.books.get(con_id, {}),
                        **({"unbooked": unbooked} if unbooked else {}),
                        "difference": gap,
                    }
                )
        return out


def _by_instrument(
    holdings: dict[str, dict[int, dict[str, Any]]], positions: list[Position], unbooked: list[Fill]
) -> _Instruments:
    found = _Instruments()
    for strategy, held in holdings.items():
        for con_id, position in held.items():
            if is_forex(position):
                continue
            found.books.setdefault(con_id, {})[strategy] = float(position["quantity"])
            found.described.setdefault(con_id, {k: v for k, v in position.items() if k != "quantity"})
    for p in positions:
        if p.sec_type in NOT_HOLDINGS:
            continue
        found.broker[p.con_id] = found.broker.get(p.con_id, 0.0) + p.quantity
        found.described.setdefault(p.con_id, p.contract)
    for f in unbooked:
        found.unbooked[f.con_id] = found.unbooked.get(f.con_id, 0.0) + f.signed
        found.described.setdefault(f.con_id, f.contract)
    return found


async def _fix(
    ctx: IntentContext,
    differences: list[dict[str, Any]],
    pairs: dict[str, dict[str, Any]],
    described: dict[int, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Books every difference to `unallocated`, each once per request (a redelivery applies nothing twice)."""
    books = ctx.services.books
    fixed = []
    for diff in [d for d in differences if "currency" in d]:
        pair = pairs.get(diff["currency"])
        if pair is None:
            continue
        record = hashlib.sha256(f"{ctx.request_id}:cash:{diff['currency']}".encode()).hexdigest()
        # A shortfall in the pair's base currency is a quantity; in its quote currency (USD.JPY's JPY) an amount.
        in_base = pair_currencies(pair)[0] == diff["currency"]
        applied = await books.adjust(
            record,
            pair,
            {UNALLOCATED: diff["difference"] if in_base else 0.0},
            f"reconcile {ctx.request_id}: {diff['currency']} cash {diff['broker']:g} backs "
            f"{diff['books']:g} of the books' claims",
            quote_moves={} if in_base else {UNALLOCATED: diff["difference"]},
        )
        fixed.append({"instrument": pair["symbol"], "currency": diff["currency"], "bookedTo": UNALLOCATED,
                      "quantity": diff["difference"] if in_base else 0.0,
                      "quoteAmount": 0.0 if in_base else diff["difference"], "applied": applied})  # fmt: skip
    for diff in [d for d in differences if "conId" in d]:
        record = hashlib.sha256(f"{ctx.request_id}:{diff['conId']}".encode()).hexdigest()
        applied = await books.adjust(
            record,
            described[diff["conId"]],
            {UNALLOCATED: diff["difference"]},
            f"reconcile {ctx.request_id}: broker {diff['broker']:g} vs books {diff['books']:g}",
        )
        fixed.append({"instrument": diff["instrument"], "bookedTo": UNALLOCATED, "quantity": diff["difference"],
                      "applied": applied})  # fmt: skip
    return fixed


TRADE_RECONCILIATION = Intent(
    name="trade-reconciliation",
    handler=trade_reconciliation,
    description="Book executions not booked yet (each once), close finished orders.",
)
RECONCILE = Intent(
    name="reconcile",
    handler=reconcile,
    description="Compare strategy holdings with broker positions; fix=true books differences to unallocated.",
    # Under the trading lock: two fixes side by side (a re-published slow one, the CLI beside another) each
    # compared before either booked, and booked the same difference twice; a comparison beside a trading intent
    # in flight also saw its fills half way.
    exclusive=True,
    reads_config=False,
)


def _pairs_by_currency(holdings: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """For each currency the books claim, a held pair to book a correction on (one with it as BASE first)."""
    found: dict[str, dict[str, Any]] = {}
    for positions in holdings.values():
        for position in positions.values():
            if not is_forex(position):
                continue
            base, quote = pair_currencies(position)
            described = {k: v for k, v in position.items() if k not in ("quantity", "quoteAmount")}
            described["symbol"] = f"{base}.{quote}"
            found[base] = described
            found.setdefault(quote, described)
    return found
