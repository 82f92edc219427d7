"""summary: the account at a glance, gathered concurrently from the gateway."""

from __future__ import annotations

import asyncio
from typing import Any

from consumer.errors import IntentError
from consumer.intents.base import Intent, IntentContext
from consumer.snapshots import current_pnl


async def summary(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    broker = ctx.broker
    account_values, positions, open_orders, fills = await asyncio.gather(
        broker.account_summary(),
        broker.positions(),
        broker.open_orders(),
        broker.executions(),
    )
    services = ctx.services
    # The same P&L block as the pnl intent, from the marks the portfolio subscription already holds: no request.
    pnl: dict[str, Any]
    try:
        report = await current_pnl(broker, services.books, services.layout, services.account, ask=False)
        pnl = report["pnl"]
    except IntentError as e:  # e.g. a login with several accounts and no IB_ACCOUNT: the rest still answers
        pnl = {"error": e.code, "message": e.message}
    return {
        "accounts": broker.managed_accounts(),
        "pnl": pnl,
        "accountValues": account_values,
        "positions": [p.as_dict() for p in positions],
        "portfolio": broker.portfolio(),
        "openOrders": [o.as_dict() for o in open_orders],
        "fills": [f.as_dict() for f in fills],
    }


INTENT = Intent(
    name="summary",
    handler=summary,
    description="Account values, positions, portfolio, open orders and today's fills.",
)
