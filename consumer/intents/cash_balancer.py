"""cash-balancer: converts free foreign cash beyond a threshold back to the base currency with IDEALPRO orders.

Only free cash is converted: the part of a balance that no book claims (consumer.forex). A strategy's forex
holding is its exposure, and converting it back would undo the strategy's trade behind its books.

Every quantity rounds towards zero, in both directions: a positive balance is never oversold, and a negative
one (a debit in that currency) is never over-bought. Balances worth less than the threshold are left alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from consumer.broker.orders import LegOrder, order_ref
from consumer.errors import Rejected
from consumer.forex import currency_lines
from consumer.intents.base import Intent, IntentContext
from consumer.intents.rebalance import send_orders


def conversion(balance: float, pair_price: float, currency_is_base: bool) -> float:
    """Signed order quantity (in the pair's base currency) that brings `balance` towards zero, never past it."""
    if currency_is_base:  # EUR.USD: the quantity is in EUR; sell what we have, buy back what we owe
        return -math.trunc(balance)
    # USD.JPY with a JPY balance: the quantity is in USD; buying USD spends JPY, selling USD brings JPY in.
    return math.trunc(balance / pair_price)


async def cash_balancer(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    broker = ctx.broker
    services = ctx.services
    account = await broker.account(services.account)
    threshold = float(params.get("threshold", ctx.config.cash_threshold))
    base = account.base_currency
    # The books' claims must include every fill so far, or a strategy's fresh forex trade would look free.
    await services.bookkeeper.reconcile(ctx.connection_record())
    balances = broker.cash_balances(account.id)
    rates = broker.fx_rates(account.id)
    claims = currency_lines(await services.books.holdings(), balances, base)

    lines: list[dict[str, Any]] = []
    orders: dict[str, LegOrder] = {}
    for currency, total in sorted(balances.items()):
        if currency == base:
            continue
        balance = claims[currency].free
        line: dict[str, Any] = {"currency": currency, "cashBalance": total, "claimed": claims[currency].books,
                                "balance": round(balance, 2)}  # fmt: skip
        rate = rates.get(currency)
        if rate is None:
            lines.append({**line, "action": "skipped", "reason": "no exchange rate"})
            continue
        value = balance * rate
        line["baseValue"] = round(value, 2)
        if abs(value) < threshold or balance == 0:
            lines.append({**line, "action": "left", "reason": f"below the threshold of {threshold:g} {base}"})
            continue
        pair, currency_is_base = await broker.fx_pair(currency, base)
        prices = await broker.prices([pair])
        price = prices.get(pair.con_id)
        if price is None:
            lines.append(
                {**line, "action": "skipped", "reason": f"no price for {prices.named(pair.con_id, pair.symbol)}"}
            )
            continue
        quantity = conversion(balance, price, currency_is_base)
        if quantity == 0:
            lines.append({**line, "action": "left", "reason": "less than one unit to convert"})
            continue
        ref = order_ref("cash", ctx.request_id, pair.symbol)
        orders[ref] = LegOrder(ref, pair, quantity)
        lines.append({**line, "action": "convert", "pair": pair.symbol, "order": quantity, "orderRef": ref})

    _refuse_closed(ctx, orders.values())
    outcomes = {} if ctx.dry_run else await send_orders(ctx, account.id, orders, {})
    for line in lines:
        outcome = outcomes.get(line.get("orderRef", ""))
        if outcome is not None:
            line.update(outcome.as_dict())
    result: dict[str, Any] = {"account": account.id, "baseCurrency": base, "threshold": threshold, "balances": lines}
    if any(line["action"] == "skipped" for line in lines):
        result["alert"] = True  # cash over the threshold left unconverted: a person should look
    return result


def _refuse_closed(ctx: IntentContext, orders: Iterable[LegOrder]) -> None:
    """Rejects the request when a pair's market is closed (unless dry run or ignoreMarketHours)."""
    envelope = ctx.request.envelope
    if ctx.dry_run or (envelope and envelope.ignore_market_hours):
        return
    now = ctx.market_now()
    closed = sorted(o.instrument.closed_at(now) for o in orders if not o.instrument.open_at(now))
    if closed:
        raise Rejected("market_closed", f"IDEALPRO is closed for {', '.join(closed)}; nothing was converted")


INTENT = Intent(
    name="cash-balancer",
    handler=cash_balancer,
    description="Convert foreign cash beyond a threshold back to the base currency.",
    trades=True,
)
