"""close-all: flatten what the named strategies hold (all strategies by default), netted per instrument.

With `flatAtClose: true` (the eod-close-all job) it closes the strategies the configuration marks
`flatAtClose: close`, and nothing when none is marked. Positions that no strategy holds (a manual trade, a transfer
in) are never touched, unless `includeUnallocated` asks to flatten the `unallocated` book too (where reconcile puts
what it cannot attribute). The closed strategies' own working orders are cancelled first (and what they filled is
booked), so the closing orders are sized from the holdings alone and nothing is left working against them; manual
and other clients' orders are never cancelled.
"""

from __future__ import annotations

import math
from typing import Any

from consumer.broker.broker import OrderSnapshot
from consumer.broker.instruments import Instrument
from consumer.broker.orders import discard
from consumer.errors import IntentError, clip
from consumer.intents.base import Intent, IntentContext
from consumer.intents.rebalance import Rebalance
from consumer.store.books import UNALLOCATED
from consumer.strategies import discover


async def close_all(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    named: list[str] | None = params.get("strategies")
    if named:
        unknown = [n for n in named if n not in discover() and n != UNALLOCATED]
        if unknown:
            raise IntentError("unknown_strategy", f"unknown strategy {clip(', '.join(map(repr, unknown)))}")
    include_unallocated = bool(params.get("includeUnallocated"))
    if params.get("flatAtClose"):
        # The eod-close-all job: the strategies the config marks `flatAtClose: close` (and any named), never "all".
        named = sorted({*(named or []), *ctx.config.close_at_close})
        if not named and not include_unallocated:
            return {"strategies": [], "instruments": [], "note": "no strategy is marked flatAtClose: close"}
    # None is every strategy: never for the job, whose list may be the unallocated book alone.
    books = (
        [*(named or []), *([UNALLOCATED] if include_unallocated else [])]
        if named or params.get("flatAtClose")
        else None
    )
    asked = ctx.orders_to_look_up()  # read before placing (see allocation)
    try:
        return await _close(ctx, books, include_unallocated, asked, params.get("closingWithin"))
    finally:
        discard(asked)


async def _close(
    ctx: IntentContext,
    books: list[str] | None,
    include_unallocated: bool,
    asked: OrderSnapshot | None,
    closing_within: float | None,
) -> dict[str, Any]:
    with ctx.timed("books"):
        rebalance = await Rebalance.open(ctx, books, asked)
    # A strategy with only a working order (nothing filled yet) is closed too: its order is cancelled.
    held = {*rebalance.holdings, *rebalance.with_working_orders}
    chosen = set(books) if books else {s for s in held if s != UNALLOCATED}
    if include_unallocated:
        chosen.add(UNALLOCATED)
    rebalance.only(sorted(chosen))
    targets: dict[str, dict[int, float]] = {s: {} for s in chosen}
    later = await _closing_later(ctx, rebalance, closing_within) if closing_within is not None else {}
    report = await rebalance.carry_out(targets, later, close=True, partial=True, keep=frozenset(later))
    if later:
        report["notClosing"] = sorted(i.symbol for i in later.values())
    return {**report, "strategies": sorted(chosen), "timings": ctx.phase_timings()}


async def _closing_later(ctx: IntentContext, rebalance: Rebalance, within: float) -> dict[int, Instrument]:
    """The instruments in scope whose market is open and stays open longer than `within` seconds: the eod close-all
    jobs fire before both of NYSE's closes (12:55 for a half day's 13:00, 15:55), and each leaves what closes later
    to the later one. A closed market is not among them: it goes through the closed-market check (and alerts), nor is
    one IB no longer lists (carry_out names it)."""
    con_ids = {c for book in (rebalance.current(), rebalance.working()) for held in book.values() for c in held}
    instruments, _ = await ctx.broker.listed(con_ids)
    now = ctx.market_now()
    return {c: i for c, i in instruments.items() if i.open_at(now) and (i.seconds_to_close(now) or math.inf) > within}


INTENT = Intent(
    name="close-all",
    handler=close_all,
    description="Cancel the named strategies' working orders (default: all), then flatten their holdings.",
    trades=True,
)
