"""summary: the account at a glance, gathered concurrently from the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from consumer.errors import GatewayReadOnly, IntentError
from consumer.intents.base import Intent, IntentContext
from consumer.snapshots import current_pnl


async def summary(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    broker = ctx.broker
    services = ctx.services

    async def pnl_block() -> dict[str, Any]:
        """The same P&L block as the pnl intent, from the marks the portfolio subscription already holds (a
        snapshot only for what they do not price: a login's other accounts), so its Firestore reads run while the
        gateway answers the rest."""
        try:
            report = await current_pnl(broker, services.books, services.layout, services.account, ask=False)
        except IntentError as e:  # e.g. a login with several accounts and no IB_ACCOUNT: the rest still answers
            return {"error": e.code, "message": e.message}
        pnl: dict[str, Any] = report["pnl"]
        return pnl

    async def as_dicts(ask: Callable[[], Awaitable[Sequence[Any]]]) -> list[dict[str, Any]]:
        """Each answer turned into JSON as it arrives, while the slowest (the executions) is still coming. Asked
        here, not by the caller: a summary cancelled before it starts (its claim lost to a duplicate) leaves no
        request coroutine unawaited."""
        return [item.as_dict() for item in await ask()]

    async def open_orders_or_none() -> list[dict[str, Any]] | None:
        """None when the gateway's API is read-only: IB refuses it the list, and an empty one would say "none"."""
        try:
            return await as_dicts(broker.open_orders)
        except GatewayReadOnly as e:
            unavailable["openOrders"] = e.message
            return None

    unavailable: dict[str, str] = {}
    account_values, positions, open_orders, fills, pnl = await asyncio.gather(
        broker.account_summary(),
        as_dicts(broker.positions),
        open_orders_or_none(),
        as_dicts(broker.executions),
        pnl_block(),
    )
    return {
        "accounts": broker.managed_accounts(),
        "pnl": pnl,
        "accountValues": account_values,
        "positions": positions,
        "portfolio": broker.portfolio(),
        "openOrders": open_orders,
        "fills": fills,
        **({"unavailable": unavailable} if unavailable else {}),
    }


INTENT = Intent(
    name="summary",
    handler=summary,
    description="Account values, positions, portfolio, open orders and today's fills.",
)
