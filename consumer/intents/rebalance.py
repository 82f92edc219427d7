"""Carrying target books into the account: shared by allocation and close-all.

books in step with the broker (book missed fills, close finished orders)
legs: per instrument, each strategy's target - holding - what its working orders will still add, netted
market open?  (unless dry run or ignoreMarketHours)
transfers for legs that net to zero; write-ahead of every order; place all; wait for each; record
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ib_insync import IB

from consumer.broker.instruments import Instrument
from consumer.broker.market import snapshot_quotes
from consumer.broker.orders import DONE, LegOrder, OrderEngine, Outcome, order_ref
from consumer.broker.shared import SharedRequests
from consumer.errors import IntentError, Rejected
from consumer.intents.base import IntentContext
from consumer.portfolio import EPSILON, Leg, net_legs
from consumer.store.books import PendingOrder


@dataclass
class Account:
    id: str
    base_currency: str
    net_liquidation: float


async def account_snapshot(ib: IB, configured: str) -> Account:
    accounts = ib.managedAccounts()
    if configured:
        if configured not in accounts:
            raise IntentError("unknown_account", f"IB_ACCOUNT {configured} is not managed by this login ({accounts})")
        account = configured
    elif len(accounts) == 1:
        account = accounts[0]
    else:
        raise IntentError("ambiguous_account", f"this login manages {accounts}; set IB_ACCOUNT to pick one")
    # The account-updates subscription ib_insync starts at connect keeps these current; the summary is the fallback.
    values = ib.accountValues(account) or await ib.accountSummaryAsync(account)
    for value in values:
        if value.account == account and value.tag == "NetLiquidation" and value.currency not in ("", "BASE"):
            return Account(account, value.currency, float(value.value))
    raise IntentError("no_net_liquidation", f"the gateway reported no NetLiquidation for {account}")


@dataclass
class Rebalance:
    """One trading intent's view of the books and the orders it sends."""

    ctx: IntentContext
    account: Account
    holdings: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    working: dict[str, dict[int, float]] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def open(cls, ctx: IntentContext, strategies: list[str] | None) -> Rebalance:
        """Brings the books in step with the broker first: every later number depends on them."""
        ib = ctx.ib
        services = ctx.services
        sweep = await services.bookkeeper.reconcile()
        account = await account_snapshot(ib, services.settings.ib_account)
        holdings = await services.books.holdings(strategies)
        working = await _working(ctx.requests, await services.books.open_orders(), strategies)
        return cls(ctx=ctx, account=account, holdings=holdings, working=working, sweep=sweep)

    def only(self, strategies: list[str]) -> None:
        """Keeps the books of these strategies only: one that was skipped must not be read as target zero."""
        self.holdings = {s: h for s, h in self.holdings.items() if s in strategies}
        self.working = {s: w for s, w in self.working.items() if s in strategies}

    def current(self) -> dict[str, dict[int, float]]:
        return {s: {c: float(p["quantity"]) for c, p in positions.items()} for s, positions in self.holdings.items()}

    async def carry_out(
        self, targets: Mapping[str, Mapping[int, float]], instruments: Mapping[int, Instrument]
    ) -> dict[str, Any]:
        ctx = self.ctx
        services = ctx.services
        legs = net_legs(targets, self.current(), self.working)
        missing = [c for c, leg in legs.items() if leg.deltas and c not in instruments]
        for con_id in missing:  # held or working, not targeted: found by conId
            instruments = {**instruments, con_id: await services.instruments.by_con_id(con_id)}
        trading = {c: leg for c, leg in legs.items() if abs(leg.quantity) > EPSILON}
        if trading and not ctx.dry_run and not (ctx.request.envelope and ctx.request.envelope.ignore_market_hours):
            now = ctx.market_now()
            closed = sorted(instruments[c].symbol for c in trading if not instruments[c].open_at(now))
            if closed:
                raise Rejected(
                    "market_closed",
                    f"the market is closed for {', '.join(closed)}; nothing was placed "
                    "(set ignoreMarketHours to trade anyway)",
                )

        intent = ctx.request.intent or "trade"
        orders = {
            c: LegOrder(order_ref(intent, ctx.request_id, instruments[c].symbol), instruments[c], leg.quantity)
            for c, leg in trading.items()
        }
        outcomes: dict[str, Outcome] = {}
        transfers: list[dict[str, Any]] = []
        if not ctx.dry_run:
            for c, leg in legs.items():
                if leg.internal_transfer:
                    moved = await services.books.transfer(
                        ctx.request_id, instruments[c].describe(), leg.internal_transfer
                    )
                    transfers.append(
                        {"instrument": instruments[c].symbol, "moves": leg.internal_transfer, "booked": moved}
                    )
            outcomes = await send_orders(
                ctx,
                self.account.id,
                {o.order_ref: o for o in orders.values()},
                {orders[c].order_ref: leg.deltas for c, leg in trading.items()},
            )

        return {
            "account": self.account.id,
            "baseCurrency": self.account.base_currency,
            "netLiquidation": self.account.net_liquidation,
            "instruments": [
                _line(instruments[c], leg, orders.get(c), outcomes.get(orders[c].order_ref) if c in orders else None)
                for c, leg in sorted(legs.items(), key=lambda kv: instruments[kv[0]].symbol)
                if leg.deltas or any(leg.targets.values())
            ],
            "transfers": transfers,
            "orders": _tally(outcomes),
            "booksReconciled": {k: len(v) if isinstance(v, list) else v for k, v in self.sweep.items()},
        }


async def send_orders(
    ctx: IntentContext, account: str, orders: Mapping[str, LegOrder], shares: Mapping[str, Mapping[str, float]]
) -> dict[str, Outcome]:
    """Writes each order ahead, places the ones the broker does not have yet, waits for each, records the result.

    `orders` and `shares` are keyed by orderRef; shares are the strategies' parts of each order (empty for orders
    no strategy owns, such as currency conversions).
    """
    services = ctx.services
    if not orders:
        return {}
    engine = OrderEngine(
        ctx.ib,
        ctx.requests,
        ctx.config.order_defaults,
        ctx.request.envelope.params.get("orderProperties", {}) if ctx.request.envelope else {},
        services.settings.order_timeout,
        account,
        progress=lambda done, total: ctx.log.info("orders confirmed", confirmed=done, total=total),
    )
    # Orders written by an earlier run of this request: the broker may already have them. Never send twice.
    earlier = await services.books.known_orders(orders)
    found = await engine.find(set(earlier)) if earlier else {}
    to_send = {ref: o for ref, o in orders.items() if ref not in found}
    if engine.limits and to_send:
        quotes = await snapshot_quotes(ctx.ib, [o.instrument for o in to_send.values()])
        to_send = {o.order_ref: o for o in engine.priced(to_send.values(), quotes)}
    await services.books.write_pending(
        PendingOrder(
            order_ref=ref,
            request_id=ctx.request_id,
            intent=ctx.request.intent or "",
            instrument=o.instrument.describe(),
            quantity=o.quantity,
            shares=dict(shares.get(ref, {})),
        )
        for ref, o in to_send.items()
    )
    outcomes = {**found, **await engine.place(to_send.values())}
    await services.books.mark_placed(
        {
            ref: {"orderId": o.order_id, "permId": o.perm_id, "clientId": o.client_id, "brokerStatus": o.status}
            for ref, o in outcomes.items()
            if o.order_id is not None and not o.existing
        }
    )
    for ref, o in outcomes.items():
        if not o.existing:
            services.metrics.count("orders", o.outcome)
            ctx.log.info("order settled", orderRef=ref, outcome=o.outcome, status=o.status, filled=o.filled)
        if o.status in DONE and o.filled == 0:
            await services.books.close_order(ref, o.status, 0.0)  # rejected or cancelled at once: nothing to book
    return outcomes


async def _working(
    requests: SharedRequests, open_orders: list[dict[str, Any]], strategies: list[str] | None
) -> dict[str, dict[int, float]]:
    """Per strategy and instrument: what its orders still working at the broker will add when they fill."""
    if not open_orders:
        return {}
    live = {
        t.order.orderRef for t in await requests.open_orders() if t.orderStatus.status not in DONE and t.order.orderRef
    }
    working: dict[str, dict[int, float]] = {}
    for doc in open_orders:
        if doc["orderRef"] not in live:
            continue
        booked = doc.get("booked", {})
        for strategy, share in doc.get("shares", {}).items():
            if strategies is not None and strategy not in strategies:
                continue
            remaining = float(share) - float(booked.get(strategy, 0.0))
            if abs(remaining) > EPSILON:
                by_instrument = working.setdefault(strategy, {})
                by_instrument[int(doc["conId"])] = by_instrument.get(int(doc["conId"]), 0.0) + remaining
    return working


def _line(instrument: Instrument, leg: Leg, order: LegOrder | None, outcome: Outcome | None) -> dict[str, Any]:
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
    if order is not None:
        line["orderRef"] = order.order_ref
    if outcome is not None:
        line.update(outcome.as_dict())
    return line


def _tally(outcomes: Mapping[str, Outcome]) -> dict[str, int]:
    tally: dict[str, int] = {"sent": sum(1 for o in outcomes.values() if not o.existing)}
    for o in outcomes.values():
        tally[o.outcome] = tally.get(o.outcome, 0) + 1
    return tally
