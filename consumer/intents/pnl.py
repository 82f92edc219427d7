"""pnl: profit and loss per strategy, today / month to date / since inception (consumer.snapshots)."""

from __future__ import annotations

from typing import Any

from consumer.intents.base import Intent, IntentContext
from consumer.snapshots import current_pnl


async def pnl(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    report = await current_pnl(ctx.broker, services.books, services.layout, services.account, ask=True)
    wanted = params.get("strategies")
    if wanted:
        report["strategies"] = {s: v for s, v in report["strategies"].items() if s in wanted}
        report["pnl"] = {s: v for s, v in report["pnl"].items() if s in wanted}
    return report


INTENT = Intent(
    name="pnl",
    handler=pnl,
    description="P&L per strategy (base currency): today, month to date and since inception, realized and unrealized.",
)
