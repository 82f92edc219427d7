"""cash-balancer: converts free foreign cash beyond a threshold back to the base currency with IDEALPRO orders.

Only free cash is converted: the part of a balance that no book claims (consumer.forex). A strategy's forex
holding is its exposure, and converting it back would undo the strategy's trade behind its books.

Every quantity rounds towards zero, in both directions: a positive balance is never oversold, and a negative
one (a debit in that currency) is never over-bought. Balances worth less than the threshold are left alone.

A conversion of an earlier cash-balancer still working at IB (a market closed for the weekend, fills held, a
partial fill) is already converting its remaining amount: the free balance is counted as it will be once those
fill, and only what is left beyond them is converted. Working conversions that would take a balance past zero by
more than the threshold are not offset by a new order the other way: the line is skipped, for a person to look.
Orders of strategies (an allocation's forex legs) move their books' claims with the balance. One still open in the
books may have filled into the balance before its execution reached the books (IB sends them in no promised
order): the free balance is then somewhere between the balance less what such orders may still add to the claims
and the balance plus what they may still take from them. Only what is free at both ends is converted: a positive
free balance down to the lower end, a debit up to the upper end, nothing when the range holds zero (a purchase
that filled was sold back as free cash; a sale that filled was bought back as a debit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from consumer.broker.model import BrokerOrder
from consumer.broker.orders import LegOrder, order_ref
from consumer.errors import Rejected
from consumer.forex import CurrencyLine, currency_lines
from consumer.intents.base import Intent, IntentContext
from consumer.intents.rebalance import send_orders


def conversion(balance: float, pair_price: float, currency_is_base: bool) -> float:
    """Signed order quantity (in the pair's base currency) that brings `balance` towards zero, never past it."""
    if currency_is_base:  # EUR.USD: the quantity is in EUR; sell what we have, buy back what we owe
        return -math.trunc(balance)
    # USD.JPY with a JPY balance: the quantity is in USD; buying USD spends JPY, selling USD brings JPY in.
    return math.trunc(balance / pair_price)


# order_ref("cash", request id, pair): the orderRef of every conversion a cash-balancer places.
REF_INTENT = "cash"
_CONVERSION_REF = re.compile(r"cash-[0-9a-f]{12}-.+")


@dataclass(frozen=True, slots=True)
class WorkingConversion:
    """A conversion of an earlier cash-balancer still working at IB: what it will still move, per currency."""

    order: BrokerOrder
    moves: dict[str, float]  # per currency other than the account's base: signed amount its remaining will move

    def view(self, currency: str) -> dict[str, Any]:
        o = self.order
        return {
            "orderRef": o.order_ref,
            "pair": o.symbol,
            "quantity": o.quantity,
            "status": o.status,
            "filled": o.filled,
            "remaining": o.remaining,
            "converts": round(self.moves.get(currency, 0.0), 2),
        }


def working_conversions(
    orders: Iterable[BrokerOrder], account: str, base: str, rates: Mapping[str, float], request_id: str
) -> list[WorkingConversion]:
    """The account's cash-balancer conversions working at IB (known by their orderRef, whichever request or client
    placed them), but this request's own: an earlier run of it placed those, and they are found by orderRef and
    reported as its legs, never placed twice. Only the remaining quantity counts; what filled is in the balance.

    On pair BASE.QUOTE a remaining signed quantity q moves BASE by q and QUOTE by about -q x the pair's price, taken
    from the account's exchange rates (the base currency's is 1).
    """
    own = order_ref(REF_INTENT, request_id, "")
    found = []
    for o in orders:
        if (
            not o.is_for(account)
            or o.contract.get("secType") != "CASH"
            or not _CONVERSION_REF.fullmatch(o.order_ref)
            or o.order_ref.startswith(own)
        ):
            continue
        remaining = math.copysign(o.remaining, o.quantity)
        pair_base, quote = o.symbol.split(".")[0], str(o.contract.get("currency", ""))
        moves = {pair_base: remaining}
        price = _rate(pair_base, base, rates) / _rate(quote, base, rates)
        if not math.isnan(price):
            moves[quote] = -remaining * price
        found.append(WorkingConversion(o, {c: q for c, q in moves.items() if c != base and q}))
    return found


@dataclass(frozen=True, slots=True)
class Pending:
    """What the strategies' forex orders open in the books may still move in one currency's claims."""

    adds: float = 0.0  # a purchase's remaining BASE, a sale's QUOTE proceeds
    takes: float = 0.0  # a sale's remaining BASE, a purchase's QUOTE cost

    def bounded(self, free: float) -> float:
        """The free balance that is free however much of the pending orders has already reached the balance."""
        lower, upper = free - self.adds, free + self.takes
        return lower if lower > 0 else upper if upper < 0 else 0.0


def pending_strategy_orders(
    open_orders: Iterable[Mapping[str, Any]], base: str, rates: Mapping[str, float]
) -> dict[str, Pending]:
    """Per currency other than `base`: what the strategies' forex orders open in the books may still add to and
    take from its claims (in QUOTE at the account's rates)."""
    moves: dict[str, list[float]] = {}
    for doc in open_orders:
        if doc.get("secType") != "CASH" or _CONVERSION_REF.fullmatch(str(doc.get("orderRef", ""))):
            continue
        quantity = float(doc.get("quantity", 0.0))
        remaining = math.copysign(max(0.0, abs(quantity) - abs(float(doc.get("filled", 0.0)))), quantity)
        pair_base, quote = str(doc.get("symbol", "")).split(".")[0], str(doc.get("currency", ""))
        price = _rate(pair_base, base, rates) / _rate(quote, base, rates)
        for currency, amount in ((pair_base, remaining), (quote, -remaining * price)):
            if currency != base and amount and not math.isnan(amount):
                moves.setdefault(currency, [0.0, 0.0])[0 if amount > 0 else 1] += abs(amount)
    return {currency: Pending(adds, takes) for currency, (adds, takes) in moves.items()}


def _rate(currency: str, base: str, rates: Mapping[str, float]) -> float:
    return 1.0 if currency == base else (rates.get(currency) or math.nan)


async def cash_balancer(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    broker = ctx.broker
    services = ctx.services
    account = await broker.account(services.account)
    threshold = float(params.get("threshold", ctx.config.cash_threshold))
    base = account.base_currency
    # The books' claims must include every fill so far, or a strategy's fresh forex trade would look free.
    await services.bookkeeper.reconcile(ctx.connection_record())
    # IB's working orders, then the books' claims, then the balances once IB's account values count every fill
    # so far: a fill between two reads is then counted twice (less is converted, the next run converts the rest),
    # never missed. The balances follow a fill's status by a moment (decision 27): read without waiting again, a
    # conversion that filled while IB listed its working orders was in neither, and its cash was sold twice; a
    # strategy's forex sale booked before the claims were read looked like free cash.
    at_broker = await broker.open_orders()
    holdings, open_orders = await services.books.holdings_and_open_orders()
    await broker.account(services.account)
    balances = broker.cash_balances(account.id)
    rates = broker.fx_rates(account.id)
    working = working_conversions(at_broker, account.id, base, rates, ctx.request_id)
    claims = currency_lines(holdings, balances, base)
    pending = pending_strategy_orders(open_orders, base, rates)

    lines: list[dict[str, Any]] = []
    orders: dict[str, LegOrder] = {}
    for currency, total in sorted(balances.items()):
        if currency == base:
            continue
        claim, moving = claims[currency], pending.get(currency, Pending())
        line, order = await _balance(ctx, claim, moving, total, rates.get(currency), working, threshold, base)
        lines.append(line)
        if order is not None:
            orders[order.order_ref] = order

    _refuse_closed(ctx, orders.values())
    outcomes = {} if ctx.dry_run else await send_orders(ctx, account.id, orders, {})
    for line in lines:
        outcome = outcomes.get(line.get("orderRef", ""))
        if outcome is not None:
            line.update(outcome.as_dict())
    if not ctx.dry_run:
        await _name_earlier_conversions(ctx, lines, set(orders), base)
    result: dict[str, Any] = {"account": account.id, "baseCurrency": base, "threshold": threshold, "balances": lines}
    if any(line["action"] == "skipped" for line in lines):
        result["alert"] = True  # cash over the threshold left unconverted: a person should look
    return result


async def _balance(
    ctx: IntentContext,
    claim: CurrencyLine,
    pending: Pending,
    total: float,
    rate: float | None,
    working: list[WorkingConversion],
    threshold: float,
    base: str,
) -> tuple[dict[str, Any], LegOrder | None]:
    """One currency's line of the reply, and the conversion to place for it (None: nothing to place)."""
    currency, balance = claim.currency, pending.bounded(claim.free)
    line: dict[str, Any] = {"currency": currency, "cashBalance": total, "claimed": claim.books,
                            "balance": round(balance, 2)}  # fmt: skip
    if pending.adds or pending.takes:
        line["strategyOrders"] = {"mayAdd": round(pending.adds, 2), "mayTake": round(pending.takes, 2)}
    converting_by = [w for w in working if w.moves.get(currency)]
    converting = sum(w.moves[currency] for w in converting_by)
    left = balance + converting  # the free balance once our working conversions have filled
    if converting_by:
        line.update(
            working=[w.view(currency) for w in converting_by], converting=round(converting, 2), left=round(left, 2)
        )
    if rate is None:
        return {**line, "action": "skipped", "reason": "no exchange rate"}, None
    value = left * rate
    line["baseValue"] = round(value, 2)
    refs = ", ".join(w.order.order_ref for w in converting_by)
    if converting_by and left * converting > 0 and abs(value) >= threshold:
        # Past zero: never stack a conversion the other way on working ones (spread and commission twice).
        over = f"our working conversions ({refs}) would convert {abs(left):.2f} {currency} more than the free balance"
        reason = f"{over}; nothing was placed against them: cancel them, or let them fill and convert back"
        return {**line, "action": "skipped", "reason": reason}, None
    if abs(value) < threshold or left == 0:
        if converting_by:
            reason = f"converted by our working conversions ({refs}); what they leave is below the threshold"
            return {**line, "action": "working", "reason": f"{reason} of {threshold:g} {base}"}, None
        return {**line, "action": "left", "reason": f"below the threshold of {threshold:g} {base}"}, None
    broker = ctx.broker
    pair, currency_is_base = await broker.fx_pair(currency, base)
    prices = await broker.prices([pair])
    price = prices.get(pair.con_id)
    if price is None:
        return {**line, "action": "skipped", "reason": f"no price for {prices.named(pair.con_id, pair.symbol)}"}, None
    quantity = conversion(left, price, currency_is_base)
    if quantity == 0:
        return {**line, "action": "left", "reason": "less than one unit to convert"}, None
    ref = order_ref(REF_INTENT, ctx.request_id, pair.symbol)
    return {**line, "action": "convert", "pair": pair.symbol, "order": quantity, "orderRef": ref}, LegOrder(
        ref, pair, quantity
    )


async def _name_earlier_conversions(
    ctx: IntentContext, lines: list[dict[str, Any]], placing: set[str], base: str
) -> None:
    """On a later run, each conversion an earlier attempt of this request placed and this run does not, as IB has
    it, on its currency's line (`action: converted`): one that filled while the gateway was away left nothing to
    convert, and the line said `left`, as if the request had converted nothing (decision 70)."""
    if ctx.first_run:
        return
    by_currency = {line["currency"]: line for line in lines}
    for doc, found in await ctx.services.bookkeeper.orders_at_broker(ctx.request_id, besides=placing):
        if found is None:
            continue
        pair_base, quote = str(doc.get("symbol", "")).split(".")[0], str(doc.get("currency", ""))
        currency = quote if pair_base == base else pair_base
        line = by_currency.get(currency)
        if line is None:  # IB no longer lists the currency's balance
            line = by_currency[currency] = {"currency": currency}
            lines.append(line)
        if "orderRef" in line:
            continue
        if line.get("action", "left") == "left":  # a skipped line keeps its reason, and its alert
            line.update(action="converted", reason="converted by an earlier attempt of this request")
        line.update(pair=doc.get("symbol"), **found.as_dict())


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
