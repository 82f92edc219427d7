"""summary: the account at a glance, gathered concurrently from the gateway."""

from __future__ import annotations

import asyncio
from typing import Any

from consumer.broker import views
from consumer.intents.base import Intent, IntentContext


async def summary(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    ib = ctx.ib
    account_values, positions, open_trades, fills = await asyncio.gather(
        # The first call subscribes; ib_insync keeps the values current from then on (a fresh request each time
        # would open another subscription, and IB allows two).
        ib.accountSummaryAsync(),
        ctx.requests.positions(),
        ctx.requests.open_orders(),
        ctx.requests.executions(),
    )
    # Portfolio (with market values and P&L) has no request/reply form: it is the account-updates subscription
    # ib_insync keeps current since connect.
    portfolio = ib.portfolio()
    return {
        "accounts": ib.managedAccounts(),
        "accountValues": views.account_values(account_values),
        "positions": [views.position(p) for p in positions],
        "portfolio": [views.portfolio_item(p) for p in portfolio],
        "openOrders": [views.trade(t) for t in open_trades],
        "fills": [views.fill(f) for f in fills],
    }


INTENT = Intent(
    name="summary",
    handler=summary,
    description="Account values, positions, portfolio, open orders and today's fills.",
)
