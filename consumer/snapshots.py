"""P&L per strategy from the books and the broker's marks, and the daily snapshot that keeps it day by day.

A strategy's P&L to date is its cumulative realized P&L (holdings' `realized`, base currency at each fill's rate)
plus the unrealized P&L of what it holds at today's prices (from each position's `avgCost`). Today's and the
month's P&L are that total minus the same total in the last snapshot before the day / the month (0 without one).

The snapshot (`{root}/snapshots/{YYYY-MM-DD}`, docs/firestore.md, the trading day in New York by the gateway's clock) is
written once per trading day; a re-run that day overwrites it with the same content (only `writtenAt` differs):
nothing in it depends on the wall clock. The risk branch reads its names; keep them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from google.cloud.firestore_v1.base_query import FieldFilter

from consumer.broker.broker import Broker
from consumer.portfolio import EPSILON
from consumer.store.books import Books
from consumer.store.layout import Layout

NEW_YORK = ZoneInfo("America/New_York")


def trading_day(now: datetime) -> date:
    """The trading day an instant belongs to: its date in New York (US exchanges' clock)."""
    return now.astimezone(NEW_YORK).date()


@dataclass(frozen=True, slots=True)
class Marks:
    """Prices by conId (instrument currency) and rates to the base currency, at one moment."""

    prices: Mapping[int, float]
    rates: Mapping[str, float]
    # IB's refusal of a price left out ("IB 354: ..."), so that an unpriced holding says why
    refused: Mapping[int, str] = field(default_factory=dict)


def strategy_pnl(ledgers: Mapping[str, Mapping[str, Any]], marks: Marks) -> dict[str, dict[str, Any]]:
    """Per strategy, base currency: marketValue, unrealizedPnl, grossExposure, netExposure, realizedPnlToDate.

    A position without a price or a rate is left out of the values and named in `unpriced` (with IB's refusal of
    its price in `refused`, when IB gave one), never valued at 0; one without a known cost is valued but has no
    unrealized P&L, and is named in `costUnknown`; one whose realized P&L was booked without a rate to the base
    currency (counted as 0 here) is named in `baseIncomplete`.
    """
    out: dict[str, dict[str, Any]] = {}
    for strategy, ledger in sorted(ledgers.items()):
        market_value = unrealized = gross = 0.0
        unpriced: list[str] = []
        refused: dict[str, str] = {}
        no_cost: list[str] = []  # held without a known cost (booked before costs were kept): no unrealized P&L
        for key, position in sorted(ledger.get("positions", {}).items()):
            quantity = float(position.get("quantity", 0.0))
            if abs(quantity) < EPSILON:
                continue
            price = marks.prices.get(int(key))
            rate = marks.rates.get(str(position.get("currency", "")))
            if price is None or rate is None:
                unpriced.append(str(position.get("symbol", key)))
                if price is None and int(key) in marks.refused:
                    refused[unpriced[-1]] = marks.refused[int(key)]
                continue
            multiplier = float(position.get("multiplier") or 1.0)
            value = quantity * price * multiplier * rate
            market_value += value
            gross += abs(value)
            if "avgCost" in position:
                unrealized += (price - float(position["avgCost"])) * quantity * multiplier * rate
            else:
                no_cost.append(str(position.get("symbol", key)))
        realized = sum(float(r.get("realizedPnlBase", 0.0)) for r in ledger.get("realized", {}).values())
        no_rate = sorted(
            str(r.get("symbol", k)) for k, r in ledger.get("realized", {}).items() if r.get("baseIncomplete")
        )
        line: dict[str, Any] = {
            "marketValue": _cents(market_value),
            "unrealizedPnl": _cents(unrealized),
            "grossExposure": _cents(gross),
            "netExposure": _cents(market_value),
            "realizedPnlToDate": _cents(realized),
        }
        left_out = {"unpriced": unpriced, "refused": refused, "costUnknown": no_cost, "baseIncomplete": no_rate}
        line.update({k: v for k, v in left_out.items() if v})
        out[strategy] = line
    return out


def _cents(x: float) -> float:
    return round(x, 2) + 0.0  # + 0.0: no -0.0 in documents


def total(line: Mapping[str, Any]) -> float:
    """A strategy's P&L to date: realized plus unrealized."""
    return float(line.get("realizedPnlToDate", 0.0)) + float(line.get("unrealizedPnl", 0.0))


def periods(
    current: Mapping[str, Mapping[str, Any]],
    before_today: Mapping[str, Any] | None,
    before_month: Mapping[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """Per strategy: today, monthToDate, sinceInception (base currency), against the snapshots before them; and
    what the figures leave out (`unpriced`, with IB's `refused`; `costUnknown`; `baseIncomplete`), so that a reader
    of these alone sees it."""

    def base(snapshot: Mapping[str, Any] | None, strategy: str) -> float:
        return total((snapshot or {}).get("strategies", {}).get(strategy, {}))

    out = {}
    for strategy, line in current.items():
        now = total(line)
        out[strategy] = {
            "today": _cents(now - base(before_today, strategy)),
            "monthToDate": _cents(now - base(before_month, strategy)),
            "sinceInception": _cents(now),
            "realizedToDate": float(line.get("realizedPnlToDate", 0.0)),
            "unrealized": float(line.get("unrealizedPnl", 0.0)),
            **{k: line[k] for k in ("unpriced", "refused", "costUnknown", "baseIncomplete") if k in line},
        }
    return out


async def last_before(layout: Layout, day: date) -> dict[str, Any] | None:
    """The latest snapshot of a trading day before `day`."""
    query = (
        layout.snapshots()
        .where(filter=FieldFilter("date", "<", day.isoformat()))
        .order_by("date", direction="DESCENDING")
        .limit(1)
    )
    found = [s.to_dict() or {} async for s in query.stream()]
    return found[0] if found else None


async def snapshots(layout: Layout, since: date | None = None) -> list[dict[str, Any]]:
    """The snapshots from `since` on (all when None), oldest first."""
    query = layout.snapshots().order_by("date")
    if since is not None:
        query = layout.snapshots().where(filter=FieldFilter("date", ">=", since.isoformat())).order_by("date")
    return [s.to_dict() or {} async for s in query.stream()]


async def marks(broker: Broker, account: str, base: str, con_ids: Iterable[int], ask: bool) -> Marks:
    """Prices for the instruments held and rates for their currencies.

    The account's portfolio (kept current by the subscription ib_insync holds) prices what the account holds. With
    `ask` every held instrument is priced afresh with a snapshot (the portfolio's marks can lag); without (the
    summary), only what the portfolio does not price: instruments the books hold but the account does not
    (strategies netting to zero), and everything a login's other accounts hold, since ib_insync holds the
    portfolio of one account per connection. Currencies without a rate are asked of the market.
    """
    prices = broker.portfolio_marks(account, forex=True)
    rates = dict(broker.fx_rates(account))
    rates.setdefault(base, 1.0)
    wanted = set(con_ids)
    afresh = wanted if ask else wanted - set(prices)
    refused: dict[int, str] = {}
    if afresh:
        # One IB no longer lists (an expired future) is unpriced with why, not the end of every strategy's P&L.
        listed, refused = await broker.listed(afresh)
        instruments = [listed[c] for c in sorted(listed)]
        fresh = await broker.prices(instruments)
        prices.update(fresh)
        refused.update({c: why for c, why in fresh.refused.items() if c not in prices})
        missing = {i.currency for i in instruments} - set(rates)
        if missing:
            rates.update(await broker.market_fx_rates(missing, base))
    return Marks(prices, rates, refused)


def held(ledgers: Mapping[str, Mapping[str, Any]]) -> set[int]:
    return {
        int(k)
        for ledger in ledgers.values()
        for k, p in ledger.get("positions", {}).items()
        if abs(float(p.get("quantity", 0.0))) > EPSILON
    }


async def current_pnl(
    broker: Broker, books: Books, layout: Layout, account_setting: str, ask: bool, day: date | None = None
) -> dict[str, Any]:
    """P&L per strategy now: today, month to date and since inception, with the values they come from.

    `day`: the trading day, when the caller has asked the gateway already (it answers the time once a second)."""
    account = await broker.account(account_setting)
    # The day by the gateway's clock, asked (it may have moved since the offset was last measured); summary (not
    # `ask`) takes the clock as last measured, which is the same but for a simulated clock that jumps.
    if day is None:
        day = trading_day(await broker.current_time() if ask else broker.now())
    ledgers, before_today, before_month = await asyncio.gather(
        books.ledgers(), last_before(layout, day), last_before(layout, day.replace(day=1))
    )
    current = strategy_pnl(ledgers, await marks(broker, account.id, account.base_currency, held(ledgers), ask))
    return {
        "date": day.isoformat(),
        "baseCurrency": account.base_currency,
        "netLiquidation": account.net_liquidation,
        "strategies": current,
        "pnl": periods(current, before_today, before_month),
        # The closes `today` and `monthToDate` run from: after an eod-check that missed a day, `today` spans two.
        "since": {"today": (before_today or {}).get("date"), "monthToDate": (before_month or {}).get("date")},
    }


async def write_snapshot(
    broker: Broker, books: Books, layout: Layout, account_setting: str, day: date | None = None
) -> dict[str, Any]:
    """Takes and stores the day's snapshot (overwriting the day's earlier one); returns it. `day`: as current_pnl."""
    account = await broker.account(account_setting)
    if day is None:
        day = trading_day(await broker.current_time())  # the gateway's clock, asked: never the wall clock
    ledgers = await books.ledgers()
    current = strategy_pnl(ledgers, await marks(broker, account.id, account.base_currency, held(ledgers), ask=True))
    previous = await last_before(layout, day)
    rates = dict(broker.fx_rates(account.id))
    rates.setdefault(account.base_currency, 1.0)
    cash = sum(amount * rates.get(currency, 0.0) for currency, amount in broker.cash_balances(account.id).items())
    strategies = {}
    for strategy, line in current.items():
        before = float((previous or {}).get("strategies", {}).get(strategy, {}).get("realizedPnlToDate", 0.0))
        strategies[strategy] = {**line, "realizedPnl": _cents(float(line["realizedPnlToDate"]) - before)}
    document = {
        "date": day.isoformat(),
        "baseCurrency": account.base_currency,
        "netLiquidation": account.net_liquidation,
        "cash": _cents(cash),
        "realizedSince": (previous or {}).get("date"),  # each strategy's realizedPnl runs from that close
        "highWaterMark": max(
            float((previous or {}).get("highWaterMark", account.net_liquidation)), account.net_liquidation
        ),
        "strategies": strategies,
        "writtenAt": datetime.now(UTC),
    }
    await layout.snapshots().document(day.isoformat()).set(document)
    return document
