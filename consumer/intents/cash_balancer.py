"""cash-balancer: converts free foreign cash beyond a threshold back to the base currency with IDEALPRO orders.

Only free cash is converted: the part of a balance that no book claims (consumer.forex). A strategy's forex
holding is its exposure, and converting it back would undo the strategy's trade behind its books.

Every quantity rounds towards zero, in both directions: a positive balance is never oversold, and a negative
one (a debit in that currency) is never over-bought. Balances worth less than the threshold are left alone.
"""

from __future__ import annotations

import math
from typing import Any

from consumer.broker.instruments import fx_pair
from consumer.broker.market import fx_rates, snapshot_prices
from consumer.broker.orders import LegOrder, order_ref
from consumer.errors import Rejected
from consumer.forex import currency_lines
from consumer.intents.base import Intent, IntentContext
from consumer.intents.rebalance import account_snapshot, send_orders


def cash_balances(values: Any, account: str) -> dict[str, float]:
    return {
        v.currency: float(v.value)
        for v in values
        if v.account == account and v.tag == "CashBalance" and v.currency and v.currency != "BASE"
    }


def conversion(balance: float, pair_price: float, currency_is_base: bool) -> float:
    """Signed order quantity (in the pair's base currency) that brings `balance` towards zero, never past it."""
    if currency_is_base:  # EUR.USD: the quantity is in EUR; sell what we have, buy back what we owe
        return -math.trunc(balance)
    # USD.JPY with a JPY balance: the quantity is in USD; buying USD spends JPY, selling USD brings JPY in.
    return math.trunc(balance / pair_price)


async def cash_balancer(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    ib = ctx.ib
    services = ctx.services
    account = await account_snapshot(ib, services.settings.ib_account)
    threshold = float(params.get("threshold", ctx.config.cash_threshold))
    base = account.base_currency
    # The books' claims must include every fill so far, or a strategy's fresh forex trade would look free.
    await services.bookkeeper.reconcile()
    balances = cash_balances(ib.accountValues(account.id), account.id)
    rates = fx_rates(ib, account.id)
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
        pair, currency_is_base = await fx_pair(services.instruments, currency, base)
        price = (await snapshot_prices(ib, [pair])).get(pair.con_id)
        if price is None:
            lines.append({**line, "action": "skipped", "reason": f"no price for {pair.symbol}"})
            continue
        quantity = conversion(balance, price, currency_is_base)
        if quantity == 0:
            lines.append({**line, "action": "left", "reason": "less than one unit to convert"})
            continue
        ref = order_ref("cash", ctx.request_id, pair.symbol)
        orders[ref] = LegOrder(ref, pair, quantity)
        lines.append({**line, "action": "convert", "pair": pair.symbol, "order": quantity, "orderRef": ref})

    envelope = ctx.request.envelope
    if orders and not ctx.dry_run and not (envelope and envelope.ignore_market_hours):
        now = ctx.market_now()
        closed = sorted(o.instrument.symbol for o in orders.values() if not o.instrument.open_at(now))
        if closed:
            raise Rejected("market_closed", f"IDEALPRO is closed for {', '.join(closed)}; nothing was converted")
    outcomes = {} if ctx.dry_run else await send_orders(ctx, account.id, orders, {})
    for line in lines:
        outcome = outcomes.get(line.get("orderRef", ""))
        if outcome is not None:
            line.update(outcome.as_dict())
    return {"account": account.id, "baseCurrency": base, "threshold": threshold, "balances": lines}


INTENT = Intent(
    name="cash-balancer",
    handler=cash_balancer,
    description="Convert foreign cash beyond a threshold back to the base currency.",
    trades=True,
)
