"""risk-check: every limit of config `risk` measured against the account, each with its verdict; breaches act.

account values (NetLiquidation, GrossPositionValue, ExcessLiquidity), positions with market values, our working
orders, the books vs the broker (reconcile's comparison) -> one line per configured limit (value, threshold, verdict)
any breach, or a limit it could not measure whole (holdings without a price): the reply's result says alert=true and
lists the breaches (dispatch repeats it as the reply attribute)
reduce (leverage, concentration): the strategies' holdings scaled down to the limit, one netted order per instrument
halt: tradingEnabled off with haltedReason and haltedAt, in a transaction (a person's later change is not overwritten)
per strategy (config strategies.{id}.drawdown): one line `drawdown:{id}`; its reduce scales only that strategy's book

The start of the trading day (by the gateway's clock in the schedule's time zone) is the previous day's snapshot's
net liquidation, else the first one risk-check saw that day, kept in riskState/{day}: the only thing a check with no
breach may write, and only with a dailyLoss limit and no snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from google.api_core import exceptions as google_exceptions
from google.cloud.firestore import AsyncTransaction, async_transactional
from google.cloud.firestore_v1.base_query import FieldFilter

from consumer.accounts import live_account_refusal
from consumer.errors import Failure, GatewayReadOnly, IntentError, Rejected
from consumer.forex import is_forex
from consumer.intents.base import Intent, IntentContext
from consumer.intents.rebalance import Rebalance
from consumer.intents.reconcile import compare
from consumer.portfolio import EPSILON
from consumer.snapshots import held, marks, snapshots, strategy_pnl, total
from consumer.store.books import UNALLOCATED
from consumer.store.layout import Layout
from consumer.store.trading_config import TradingConfig

REDUCIBLE = {"leverage", "concentration"}
STRATEGY_DRAWDOWN = "drawdown:"  # + the strategy id: the line of a per-strategy drawdown limit


# How a halt of risk-check's own begins its haltedReason (a person's kill switch writes another, or none).
HALT_REASON_PREFIX = "risk-check "


def reducible(limit: str) -> bool:
    return limit in REDUCIBLE or limit.startswith(STRATEGY_DRAWDOWN)


async def risk_check(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    broker = ctx.broker
    limits = ctx.config.risk
    account = await broker.account(services.account)
    base = account.base_currency
    nlv = account.net_liquidation
    if not nlv > 0:
        raise IntentError("no_net_liquidation", f"net liquidation is {nlv}: no ratio can be measured")
    values = broker.account_values(account.id, base)
    now = ctx.market_now()
    day = now.astimezone(ZoneInfo(services.settings.schedule_time_zone)).date().isoformat()

    per_strategy = {f"{STRATEGY_DRAWDOWN}{s}": limit for s, limit in sorted(ctx.config.drawdowns.items())}
    lines = Lines({**limits, **per_strategy})
    await _measure_account(ctx, lines, values, nlv, day, (account.id, base))
    await _measure_positions(ctx, lines, account.id, base, nlv)
    if per_strategy:
        await _measure_strategies(ctx, lines, account.id, base, nlv, day)
    lines_list = lines.entries

    breaches = [entry for entry in lines_list if entry["verdict"] == "breach"]
    reducing = [entry for entry in breaches if entry["action"] == "reduce" and reducible(entry["limit"])]
    # The halt first: a reduce that fails for now (a cancel IB has not confirmed, a lost connection) retries the
    # message, and a halt after it was never applied on any attempt, trading left on past a breached limit.
    halted = None
    halting = [entry for entry in breaches if entry["action"] == "halt"]
    if halting:
        breached = "; ".join(f"{e['limit']} {e['value']:g} breaches {e['threshold']:g}" for e in halting)
        reason = HALT_REASON_PREFIX + breached
        halted = await _halt(ctx, reason, now)
    # One reduce for every such breach: its orderRefs are per request and instrument, so a second one would find
    # the first's orders and add nothing.
    reduced = [await _reduce(ctx, reducing)] if reducing else []
    result: dict[str, Any] = {
        "account": account.id,
        "baseCurrency": base,
        "netLiquidation": nlv,
        "tradingDay": day,
        "limits": lines_list,
        "breaches": breaches,
        # A limit measured without some holdings (no price) may hide a breach: a person should look.
        "alert": bool(breaches) or any(entry.get("unpriced") for entry in lines_list),
    }
    if reduced:
        result["reduced"] = reduced
    if halted is not None:
        result["halted"] = halted
    return result


class Lines:
    """The reply's line per configured limit."""

    def __init__(self, limits: dict[str, dict[str, Any]]) -> None:
        self.limits = limits
        self.entries: list[dict[str, Any]] = []

    def __contains__(self, name: str) -> bool:
        return name in self.limits

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self.limits[name]

    def add(self, name: str, value: float, threshold: float, breach: bool, **extra: Any) -> None:
        action = self.limits[name].get("action", "report")
        self.entries.append({"limit": name, "value": _round(value), "threshold": threshold, "action": action,
                             "verdict": "breach" if breach else "ok", **extra})  # fmt: skip


async def _measure_account(
    ctx: IntentContext, limits: Lines, values: dict[str, float], nlv: float, day: str, owner: tuple[str, str]
) -> None:
    """`owner`: (the account, its base currency)."""
    layout = ctx.services.layout
    if "leverage" in limits:
        # IB's GrossPositionValue counts stocks and options, never futures: their notional is added, as the
        # allocation's leverage cap counts it (an account of futures alone measured 0 at any leverage).
        futures, unpriced = await _futures_notional(ctx, *owner)
        leverage = (values.get("GrossPositionValue", 0.0) + futures) / nlv
        limits.add("leverage", leverage, limits["leverage"]["max"], leverage > limits["leverage"]["max"] + EPSILON,
                   **({"futuresNotional": round(futures, 2)} if futures else {}),
                   **({"unpriced": sorted(unpriced)} if unpriced else {}))  # fmt: skip
    if "marginCushion" in limits:
        excess = values.get("ExcessLiquidity")
        if excess is None:
            raise IntentError("no_excess_liquidity", "the gateway reported no ExcessLiquidity in the base currency")
        cushion = excess / nlv
        limits.add("marginCushion", cushion, limits["marginCushion"]["min"], cushion < limits["marginCushion"]["min"])
    if "dailyLoss" in limits:
        start, source = await _start_of_day(layout, day, nlv)
        loss = (start - nlv) / start if start > 0 else 0.0
        limits.add("dailyLoss", loss, limits["dailyLoss"]["max"], loss > limits["dailyLoss"]["max"] + EPSILON,
                   startOfDay=start, startOfDaySource=source)  # fmt: skip
    if "drawdown" in limits:
        latest = await _latest_snapshot(layout, day, inclusive=True)
        mark = max(float((latest or {}).get("highWaterMark") or 0.0), nlv)
        drawdown = (mark - nlv) / mark
        limits.add("drawdown", drawdown, limits["drawdown"]["max"], drawdown > limits["drawdown"]["max"] + EPSILON,
                   highWaterMark=mark)  # fmt: skip


async def _measure_positions(
    ctx: IntentContext, limits: Lines, account: str, base: str, nlv: float
) -> dict[int, dict[str, Any]]:
    shares: dict[int, dict[str, Any]] = {}
    if "concentration" in limits:
        shares, unpriced = await _instrument_shares(ctx, account, base, nlv)
        top = max(shares.values(), key=lambda s: s["share"], default=None)
        over = [s for s in shares.values() if s["share"] > limits["concentration"]["max"] + EPSILON]
        extra: dict[str, Any] = {}
        if unpriced:
            extra["unpriced"] = sorted(unpriced)
            why = {symbol: refusal for symbol, refusal in sorted(unpriced.items()) if refusal}
            if why:
                extra["refused"] = why  # IB's code and text, where IB refused the price
            ctx.log.warning("risk limit unmeasured: holdings without a price", limit="concentration",
                            unpriced=sorted(unpriced), refused=why)  # fmt: skip
        limits.add("concentration", top["share"] if top else 0.0, limits["concentration"]["max"], bool(over),
                   instrument=top["instrument"] if top else None,
                   over=[{k: v for k, v in s.items() if k != "currency"} for s in over], **extra)  # fmt: skip
    if "staleOrders" in limits:
        stale, oldest = await _stale_orders(ctx, account, limits["staleOrders"]["maxMinutes"])
        limits.add("staleOrders", oldest, limits["staleOrders"]["maxMinutes"], bool(stale), orders=stale)
    if "drift" in limits:
        differences = (await compare(ctx)).differences
        limits.add("drift", len(differences), 0, bool(differences), differences=differences)
    return shares


async def _measure_strategies(ctx: IntentContext, limits: Lines, account: str, base: str, nlv: float, day: str) -> None:
    """Per strategy with a drawdown limit: (high-water mark - P&L since inception now) / its capital.

    Capital: start-of-day net liquidation x exposure.overall x the strategy's share. The mark is the highest of its
    P&L since inception in every snapshot, now, and 0 (inception): a strategy that has only lost is down from 0."""
    services = ctx.services
    config = ctx.config
    ledgers = await services.books.ledgers()
    current = strategy_pnl(ledgers, await marks(ctx.broker, account, base, held(ledgers), ask=True))
    history = await snapshots(services.layout)
    start, source = await _start_of_day_read_only(services.layout, day, nlv)
    for strategy, limit in sorted(config.drawdowns.items()):
        now = total(current.get(strategy, {}))
        marks_seen = [total(s.get("strategies", {})[strategy]) for s in history if strategy in s.get("strategies", {})]
        mark = max([0.0, now, *marks_seen])
        capital = start * config.capital_share(strategy)
        fall = mark - now
        # Without capital (no share) any fall from the mark is a full drawdown: nothing to measure it against.
        drawdown = fall / capital if capital > 0 else (1.0 if fall > 0.005 else 0.0)
        limits.add(f"{STRATEGY_DRAWDOWN}{strategy}", drawdown, limit["max"], drawdown > limit["max"] + EPSILON,
                   strategy=strategy, pnlSinceInception=round(now, 2), highWaterMark=round(mark, 2),
                   capital=round(capital, 2), startOfDaySource=source)  # fmt: skip


async def _start_of_day_read_only(layout: Layout, day: str, nlv: float) -> tuple[float, str]:
    """As _start_of_day, but never writes: the value a dailyLoss check stored today, else net liquidation now."""
    previous = await _previous_close(layout, day)
    if previous is not None:
        return float(previous["netLiquidation"]), f"snapshot {previous.get('date')}"
    stored = await layout.risk_state(day).get()
    if stored.exists and (stored.to_dict() or {}).get("startNetLiquidation"):
        return float((stored.to_dict() or {})["startNetLiquidation"]), "first risk-check of the day"
    return nlv, "net liquidation now"


def _round(value: float) -> float:
    return round(value, 6) if math.isfinite(value) else value


async def _latest_snapshot(layout: Layout, day: str, inclusive: bool) -> dict[str, Any] | None:
    """The newest daily snapshot dated before `day` (or on it, `inclusive`); written by the close's eod-check."""
    before = FieldFilter("date", "<=" if inclusive else "<", day)
    query = layout.snapshots().where(filter=before).order_by("date", direction="DESCENDING")
    async for snapshot in query.limit(1).stream():
        return snapshot.to_dict()
    return None


async def _previous_close(layout: Layout, day: str) -> dict[str, Any] | None:
    """The snapshot written after the last weekday's close before `day` (eod-check writes one every weekday,
    holidays too), or None. An older one, its eod-check missed, would measure today from further back: a day's
    gain before it hid today's loss from dailyLoss (or a day's loss halted trading the next day)."""
    previous = await _latest_snapshot(layout, day, inclusive=False)
    last_weekday = date.fromisoformat(day) - timedelta(days=1)
    while last_weekday.weekday() >= 5:
        last_weekday -= timedelta(days=1)
    if previous and previous.get("netLiquidation") and str(previous.get("date")) >= last_weekday.isoformat():
        return previous
    return None


async def _start_of_day(layout: Layout, day: str, nlv: float) -> tuple[float, str]:
    previous = await _previous_close(layout, day)
    if previous is not None:
        return float(previous["netLiquidation"]), f"snapshot {previous.get('date')}"
    ref = layout.risk_state(day)
    try:
        # The first check of the day sets it; every later one, and a racing twin, reads that one.
        await ref.create({"date": day, "startNetLiquidation": nlv, "at": datetime.now(UTC)})
        return nlv, "first risk-check of the day"
    except google_exceptions.AlreadyExists:
        stored = (await ref.get()).to_dict() or {}
        return float(stored.get("startNetLiquidation", nlv)), "first risk-check of the day"


async def _instrument_shares(
    ctx: IntentContext, account: str, base: str, nlv: float, only: set[int] | None = None
) -> tuple[dict[int, dict[str, Any]], dict[str, str | None]]:
    """Per instrument the account holds (forex cash aside): its absolute market value in base currency over net
    liquidation; and the instruments no price (or rate) was found for, which no share can be measured of, each
    with IB's refusal of its price when IB gave one.

    The positions are IB's position stream, which covers every account of the login. Prices are IB's own marks
    from the portfolio where ib_insync holds them, which is for one account per connection: a login's other
    accounts are priced with a snapshot each. Read from the portfolio alone, they held nothing, and no
    concentration limit of theirs could trip."""
    broker = ctx.broker
    held = {
        p.con_id: p
        for p in await broker.positions(ctx.connection_record())
        if p.account == account
        and p.sec_type != "CASH"
        and abs(p.quantity) > EPSILON
        and (only is None or p.con_id in only)
    }
    prices = {c: mark for c, mark in broker.portfolio_marks(account).items() if c in held}
    listed, refused = await broker.listed(c for c in held if c not in prices)
    unmarked = [listed[c] for c in sorted(listed)]
    if unmarked:
        snapshots = await broker.prices(unmarked)
        prices.update(snapshots)
        refused.update(snapshots.refused)
    rates = {**broker.fx_rates(account), base: 1.0}
    unrated = {str(p.contract["currency"]) for p in held.values()} - set(rates)
    if unrated:
        rates.update(await broker.market_fx_rates(unrated, base))
    shares: dict[int, dict[str, Any]] = {}
    unpriced: dict[str, str | None] = {}
    for con_id, position in held.items():
        currency = str(position.contract["currency"])
        price, rate = prices.get(con_id), rates.get(currency)
        if price is None or rate is None:
            unpriced[position.symbol] = refused.get(con_id) if price is None else None
            continue
        multiplier = float(position.contract.get("multiplier") or 1.0)
        value = abs(position.quantity * price * multiplier) * rate
        shares[con_id] = {
            "instrument": position.symbol,
            "conId": con_id,
            "currency": currency,
            "marketValue": round(value, 2),
            "share": _round(value / nlv),
        }
    return shares, unpriced


async def _futures_notional(ctx: IntentContext, account: str, base: str) -> tuple[float, list[str]]:
    """The account's futures at their notional in base currency (|quantity x mark x multiplier x rate|), and the
    ones no price or rate was found for."""
    held = [p for p in await ctx.broker.positions(ctx.connection_record())
            if p.account == account and p.sec_type == "FUT" and abs(p.quantity) > EPSILON]  # fmt: skip
    if not held:
        return 0.0, []
    shares, unpriced = await _instrument_shares(ctx, account, base, 1.0, only={p.con_id for p in held})
    return sum(s["marketValue"] for s in shares.values()), list(unpriced)


async def _stale_orders(ctx: IntentContext, account: str, max_minutes: float) -> tuple[list[dict[str, Any]], float]:
    """Our orders still working at the broker and written more than max_minutes ago (a duration: wall clock).

    A read-only gateway is refused the broker's list: then every order still open in the books counts."""
    working: set[str] | None
    try:
        working = {o.order_ref for o in await ctx.broker.open_orders() if o.is_for(account)}
    except GatewayReadOnly:
        working = None
    now = datetime.now(UTC)
    stale = []
    oldest = 0.0
    for doc in await ctx.services.books.open_orders():
        created = doc.get("createdAt")
        if (working is not None and doc.get("orderRef") not in working) or not isinstance(created, datetime):
            continue
        minutes = (now - created).total_seconds() / 60
        oldest = max(oldest, minutes)
        if minutes > max_minutes:
            stale.append({"orderRef": doc["orderRef"], "instrument": doc.get("symbol"), "minutes": round(minutes, 1)})
    return stale, oldest


def _why_no_reduce(ctx: IntentContext, config: TradingConfig) -> str | None:
    """Why no order may be placed now (None: it may). Trading turned off by this very request's halt is no reason:
    a reduce that failed for now after its halt was skipped on every redelivery, its breach never acted on."""
    if not config.trading_enabled and not _own_halt(ctx, config):
        return f"trading is disabled ({ctx.services.layout.config().path} tradingEnabled=false)"
    if ctx.services.settings.trading_mode == "live" and not (ctx.services.settings.allow_live and config.allow_live):
        return "live trading is not allowed"
    if ctx.broker.read_only:
        return GatewayReadOnly().message
    live = live_account_refusal(ctx.services.settings.trading_mode, ctx.services.account, ctx.broker.managed_accounts())
    if live is not None:
        return live
    # A check delivered past its sender's expiresAt or maxAgeSeconds still measures, reports and halts; it does not
    # sell on a sender's behalf later than the sender allowed (it did: held through a gateway outage, say).
    stale = ctx.request.staleness(ctx.services.settings.trading_max_age, datetime.now(UTC))
    return stale[1] if stale is not None else None


def _reduce_still_allowed(ctx: IntentContext) -> Callable[[], Awaitable[None]]:
    """The reduce's policy, asked again after a wait for a market's open (Rebalance.refuse_closed): a person may
    have turned trading off meanwhile, or the message expired. Its Rejected is caught by `_reduce`: skipped."""

    async def still_allowed() -> None:
        reason = _why_no_reduce(ctx, await ctx.services.config_store.load())
        if reason:
            raise Rejected("reduce_refused", f"{reason}; nothing was placed")

    return still_allowed


def _own_halt(ctx: IntentContext, config: TradingConfig) -> bool:
    """Trading is off by this very check's halt, as it wrote it: its request id and a risk-check's reason. A person
    who lifted it and turned trading off again by hand (in Firestore, leaving haltedBy) wrote a reason of their own."""
    return config.halted_by == ctx.request_id and (config.halted_reason or "").startswith(HALT_REASON_PREFIX)


async def _reduce(ctx: IntentContext, breaches: list[dict[str, Any]]) -> dict[str, Any]:
    """Every strategy's holdings scaled by limit / value (leverage: every instrument; concentration: the breaching
    ones; a strategy's drawdown: that strategy's only; several: the smallest factor), rounded towards zero, through
    the allocation's netted order path (dry run, market hours, books check). What no strategy holds (unallocated:
    manual trades) is never touched, as close-all leaves it."""
    names = [b["limit"] for b in breaches]
    skipped = _why_no_reduce(ctx, ctx.config)
    if skipped:
        return {"limits": names, "skipped": skipped}
    ctx.recheck = _reduce_still_allowed(ctx)
    factors: dict[int | None, float] = {}
    by_strategy: dict[str, float] = {}
    for breach in breaches:
        if breach["limit"] == "leverage":
            factors[None] = breach["threshold"] / breach["value"]
        elif breach["limit"].startswith(STRATEGY_DRAWDOWN):
            by_strategy[breach["strategy"]] = breach["threshold"] / breach["value"]
        else:
            factors.update({s["conId"]: breach["threshold"] / s["share"] for s in breach["over"]})
    rebalance = await Rebalance.open(ctx, None)
    strategies = sorted(s for s in rebalance.holdings if s != UNALLOCATED)
    rebalance.only(strategies)
    targets: dict[str, dict[int, float]] = {}
    for strategy in strategies:
        targets[strategy] = {}
        for con_id, position in rebalance.holdings[strategy].items():
            quantity = float(position["quantity"])
            factor = min(factors.get(None, 1.0), factors.get(con_id, 1.0), by_strategy.get(strategy, 1.0))
            if is_forex(position):
                factor = 1.0  # cash, not gross position value
            targets[strategy][con_id] = math.trunc(quantity * factor) if factor < 1.0 else quantity
    try:
        report = await rebalance.carry_out(targets, {}, partial=True)
    except Failure as e:
        # A closed market, books that disagree with the broker: the reduce is refused, the check still answers
        # (and still halts, where a limit says so).
        return {"limits": names, "skipped": f"{e.code}: {e.message}"}
    applied = {str(k or "all"): _round(v) for k, v in factors.items()}
    applied.update({f"strategy:{k}": _round(v) for k, v in by_strategy.items()})
    return {"limits": names, "factors": applied, **report}


async def _halt(ctx: IntentContext, reason: str, now: datetime) -> dict[str, Any]:
    """tradingEnabled off with the reason, unless it already is: a halt a person lifted stays lifted until the
    next breach, and a reason already there is not replaced."""
    layout = ctx.services.layout
    halted_at = now.isoformat()
    if ctx.dry_run:
        return {"reason": reason, "at": halted_at, "tradingEnabled": False, "changed": False, "dryRun": True}

    @async_transactional
    async def apply(transaction: AsyncTransaction) -> bool:
        snapshot = await layout.config().get(transaction=transaction)
        document = snapshot.to_dict() if snapshot.exists else None
        if not document or not document.get("tradingEnabled"):
            return False
        halt = {"tradingEnabled": False, "haltedReason": reason, "haltedAt": halted_at, "haltedBy": ctx.request_id}
        transaction.update(layout.config(), halt)
        return True

    changed = await apply(layout.db.transaction())
    ctx.log.warning("risk limit breached: trading halted", reason=reason, changed=changed, dryRun=ctx.dry_run)
    return {"reason": reason, "at": halted_at, "tradingEnabled": False, "changed": changed}


INTENT = Intent(
    name="risk-check",
    handler=risk_check,
    description="Measure the config's risk limits; a breach alerts, and halts or reduces where configured.",
    exclusive=True,
)
