"""close-all: flatten what the named strategies hold (all strategies by default), netted per instrument.

With `flatAtClose: true` (the eod-close-all job) it closes the strategies the configuration marks
`flatAtClose: close`, and nothing when none is marked. Positions that no strategy holds (a manual trade, a transfer
in) are never touched, unless `includeUnallocated` asks to flatten the `unallocated` book too (where reconcile puts
what it cannot attribute). The closed strategies' own working orders are cancelled first (and what they filled is
booked), so the closing orders are sized from the holdings alone and nothing is left working against them; manual
and other clients' orders are never cancelled.
"""

from __future__ import annotations

from typing import Any

from consumer.broker.broker import OrderSnapshot
from consumer.broker.orders import discard
from consumer.errors import IntentError
from consumer.intents.base import Intent, IntentContext
from consumer.intents.rebalance import Rebalance
from consumer.store.books import UNALLOCATED
from consumer.strategies import discover


async def close_all(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    named: list[str] | None = params.get("strategies")
    if named:
        unknown = [n for n in named if n not in discover() and n != UNALLOCATED]
        if unknown:
            raise IntentError("unknown_strategy", f"unknown strategy {', '.join(map(repr, unknown))}")
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
        return await _close(ctx, books, include_unallocated, asked)
    finally:
        discard(asked)


async def _close(
    ctx: IntentContext, books: list[str] | None, include_unallocated: bool, asked: OrderSnapshot | None
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
    report = await rebalance.carry_out(targets, {}, close=True, partial=True)
    return {**report, "strategies": sorted(chosen), "timings": ctx.phase_timings()}


INTENT = Intent(
    name="close-all",
    handler=close_all,
    description="Cancel the named strategies' working orders (default: all), then flatten their holdings.",
    trades=True,
)
