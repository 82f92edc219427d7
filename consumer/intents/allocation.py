"""allocation: each strategy's target weights turned into one netted order per instrument.

strategies (config's enabled ones by default) -> each one's params validated by its own schema
books brought in step with the broker; holdings and working orders per strategy
target weights per strategy (a strategy whose signal fails is skipped and reported, never read as zero)
leverage check; weights -> whole contracts with net liquidation, prices, multipliers and FX rates
net across strategies per instrument; place (or, dry run, report) through the order engine
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

from consumer.broker.broker import Broker, OrderSnapshot
from consumer.broker.instruments import Instrument
from consumer.broker.model import Prices
from consumer.broker.orders import discard
from consumer.errors import IntentError, Transient, clip
from consumer.forex import is_forex
from consumer.intents.base import Intent, IntentContext
from consumer.intents.rebalance import Rebalance
from consumer.portfolio import EPSILON, gross_exposure, net_legs, target_quantity
from consumer.store.trading_config import OrderDefaults
from consumer.strategies import discover, naming_problems, param_problems
from consumer.strategies.base import Strategy


def choose_strategies(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Strategy]:
    """The strategies to run, each built with its own validated params; every problem named at once."""
    known = discover()
    config = ctx.config
    names: list[str] = params.get("strategies") or config.enabled_strategies
    strategy_params: dict[str, Any] = params.get("strategyParams", {})
    problems = naming_problems(names, strategy_params, known)
    disabled = [n for n in names if n in known and config.capital_share(n) <= 0]
    if disabled:
        problems.append(
            f"no capital for {', '.join(disabled)}: {ctx.services.layout.config().path} "
            "exposure.strategies gives it no share"
        )
    built: dict[str, Strategy] = {}
    for name in names:
        if name not in known:
            continue
        own = strategy_params.get(name, {})
        errors = param_problems(name, own, known[name])
        problems += errors
        if not errors:
            built[name] = known[name](own)
    if problems:
        raise IntentError("invalid_strategies", "; ".join(problems), details=problems)
    if not built:
        raise IntentError("no_strategies", "no strategy to run: none named and none enabled in the config")
    return built


async def allocation(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    strategies = choose_strategies(ctx, params)
    # Asked now, read before placing: the broker's answer takes seconds on a busy account and needs nothing else (a
    # first run reads the connection's record instead, at no cost: IntentContext.orders_to_look_up).
    asked = ctx.orders_to_look_up()
    try:
        return await _allocation(ctx, strategies, asked)
    finally:
        discard(asked)


def _refuse_named_twice(instruments: dict[str, dict[str, Instrument]]) -> None:
    """One contract under two names in a strategy ('EUR.USD' and 'EUR' in USD): sized one after the other, the
    second weight replaced the first after the leverage check had counted both."""
    twice = []
    for strategy, own in instruments.items():
        names: dict[int, list[str]] = {}
        for symbol, instrument in own.items():
            names.setdefault(instrument.con_id, []).append(symbol)
        twice += [
            f"{strategy} names one instrument (conId {con_id}) {len(symbols)} times: {clip(', '.join(symbols))}"
            for con_id, symbols in names.items()
            if len(symbols) > 1
        ]
    if twice:
        raise IntentError("invalid_strategies", "; ".join(twice) + "; nothing was placed", details=twice)


async def _allocation(
    ctx: IntentContext, strategies: dict[str, Strategy], asked: OrderSnapshot | None
) -> dict[str, Any]:
    broker = ctx.broker
    config = ctx.config

    with ctx.timed("contracts"):
        resolved = await asyncio.gather(*(broker.resolve(s.instruments()) for s in strategies.values()))
    instruments: dict[str, dict[str, Instrument]] = dict(zip(strategies, resolved, strict=True))
    _refuse_named_twice(instruments)
    with ctx.timed("books"):
        rebalance = await Rebalance.open(ctx, list(strategies), asked)

    async def weights_of(name: str, strategy: Strategy) -> dict[str, float] | str:
        try:
            return _finite(await strategy.target_weights(broker.market_data(instruments[name])))
        except Transient:
            raise  # the gateway's, not the strategy's: the intent is retried (e.g. a history pacing violation)
        except Exception as e:
            ctx.log.warning("strategy skipped: no signal", strategy=name, error=str(e))
            return f"{type(e).__name__}: {e}" if not str(e) else str(e)

    with ctx.timed("signals"):
        outcomes = dict(
            zip(strategies, await asyncio.gather(*(weights_of(n, s) for n, s in strategies.items())), strict=True)
        )
    weights = {n: w for n, w in outcomes.items() if isinstance(w, dict)}
    skipped = {n: reason for n, reason in outcomes.items() if isinstance(reason, str)}

    shares = {n: config.capital_share(n) for n in weights}
    gross = gross_exposure(weights, shares)
    elsewhere, now = await _books_gross(ctx, rebalance, set(weights))
    # Past the cap only by what the other books hold, an allocation that takes its own strategies' exposure down
    # still runs: refused, a strategy could not even sell once the others had risen past the cap.
    if gross + elsewhere > config.leverage_cap + 1e-9 and gross > now + 1e-9:
        besides = f", and the books of the strategies it does not run hold {elsewhere:.4g}x more" if elsewhere else ""
        raise IntentError(
            "leverage_exceeded",
            f"the targets add up to {gross:.4g}x net liquidation{besides}, above the leverage cap "
            f"{config.leverage_cap:g} (the lower of leverageCap and the deployment's LEVERAGE_CAP_MAX); "
            "nothing was placed",
        )

    needed = {i.con_id: i for n in weights for i in instruments[n].values()}
    with ctx.timed("prices"):
        prices, marked = await _sizing_prices(broker, config.order_defaults, rebalance, needed)
        rates = {**broker.fx_rates(rebalance.account.id), rebalance.account.base_currency: 1.0}
        unrated = {i.currency for i in needed.values()} - set(rates)
        if unrated:
            rates.update(await broker.market_fx_rates(unrated, rebalance.account.base_currency))
    targets: dict[str, dict[int, float]] = {}
    sizing: dict[str, Any] = {}
    for name, wanted in weights.items():
        capital = rebalance.account.net_liquidation * shares[name]
        unknown = [s for s in wanted if s not in instruments[name]]
        unpriced = [
            s for s, w in wanted.items() if s in instruments[name] and w and instruments[name][s].con_id not in prices
        ]
        no_rate = [
            s for s, w in wanted.items() if s in instruments[name] and w and instruments[name][s].currency not in rates
        ]
        if unknown or unpriced or no_rate:
            skipped[name] = "; ".join(
                part
                for part in (
                    unknown and f"weights for instruments it does not declare: {', '.join(unknown)}",
                    unpriced
                    and f"no price for {', '.join(prices.named(instruments[name][s].con_id, s) for s in unpriced)}",
                    no_rate and f"no exchange rate for {', '.join(no_rate)}",
                )
                if part
            )
            continue
        targets[name] = {}
        for symbol, instrument in instruments[name].items():
            weight = wanted.get(symbol, 0.0)
            targets[name][instrument.con_id] = (
                target_quantity(
                    capital, weight, prices[instrument.con_id], instrument.multiplier, rates[instrument.currency]
                )
                if weight
                else 0
            )
        sizing[name] = {"capital": round(capital, 2), "weights": wanted}

    rebalance.only(list(targets))
    by_con_id = {i.con_id: i for n in targets for i in instruments[n].values()}
    unit_values = {
        c: prices[c] * i.multiplier * rates[i.currency]
        for c, i in by_con_id.items()
        if c in prices and i.currency in rates
    }
    targets, banded = within_bands(
        targets,
        rebalance.current(),
        rebalance.working(),
        unit_values,
        config.order_defaults.min_trade_value,
        config.drift_bands,
    )
    report = await rebalance.carry_out(targets, by_con_id) if targets else {"instruments": [], "orders": {}}
    for entry in banded:
        entry["instrument"] = by_con_id[entry["conId"]].symbol if entry["conId"] in by_con_id else str(entry["conId"])
    return {
        **report,
        # A strategy left untraded for want of a price, a rate or a declaration needs a person: say so on the reply.
        **({"alert": True} if skipped else {}),
        "skippedLegs": banded,
        "strategies": {
            **{n: {"status": "ok", **sizing[n]} for n in targets},
            **{n: {"status": "skipped", "reason": reason} for n, reason in skipped.items()},
        },
        **_priced(report["instruments"], prices, marked, by_con_id),
        "fxRates": rates,
        "timings": ctx.phase_timings(),
    }


async def _books_gross(ctx: IntentContext, rebalance: Rebalance, running: set[str]) -> tuple[float, float]:
    """What the books hold, gross, in x net liquidation (at IB's marks, else their cost): (the strategies this
    allocation does not size, those it does). The cap is the account's: checked on this allocation's strategies
    alone, two allocations each within it took the account past it together (dummy at 1x of its half beside
    another's half). Forex is currency, not a position, and is left out, as IB's gross position value leaves it."""
    account = rebalance.account
    if account.net_liquidation <= 0:
        return 0.0, 0.0
    marks = ctx.broker.portfolio_marks(account.id)
    rates = {**ctx.broker.fx_rates(account.id), account.base_currency: 1.0}
    elsewhere = here = 0.0
    for strategy, held in (await ctx.services.books.holdings()).items():
        for con_id, position in held.items():
            rate = rates.get(str(position.get("currency") or account.base_currency))
            price = marks.get(con_id) or float(position.get("avgCost") or 0.0)
            if is_forex(position) or rate is None:
                continue
            value = abs(float(position["quantity"])) * price * float(position.get("multiplier") or 1.0) * rate
            if strategy in running:
                here += value
            else:
                elsewhere += value
    return elsewhere / account.net_liquidation, here / account.net_liquidation


def _finite(weights: dict[str, float]) -> dict[str, float]:
    """A strategy's weights, or ValueError (the strategy is skipped) for one that is not a finite number: NaN passed
    the leverage cap (NaN > cap is False) and failed the sizing, and every strategy of the request was retried to
    its dead letter for one strategy's bad number."""
    odd = sorted(symbol for symbol, w in weights.items() if not math.isfinite(w))
    if odd:
        raise ValueError(f"weights that are not finite numbers for {', '.join(odd)}")
    return weights


async def _sizing_prices(
    broker: Broker, defaults: OrderDefaults, rebalance: Rebalance, needed: Mapping[int, Instrument]
) -> tuple[Prices, set[int]]:
    """The prices the orders are sized at, and the conIds priced at IB's marks.

    What the account holds is priced in the window its net liquidation (the capital) comes from, at no message: a
    snapshot each would double the messages of a rebalance of held instruments (decision 31). The rest get a
    snapshot each; under LMT that is the quote the limit is priced from too (kept on the rebalance)."""
    marks = broker.portfolio_marks(rebalance.account.id) if defaults.sizing_prices == "marks" else {}
    marked = {c: marks[c] for c in needed if c in marks}
    unmarked = [i for c, i in needed.items() if c not in marked]
    if defaults.order_type == "LMT":
        rebalance.quotes = await broker.quotes(unmarked)
        prices = Prices.of_quotes(rebalance.quotes)
    else:
        prices = await broker.prices(unmarked)
    prices.update(marked)
    return prices, set(marked)


def within_bands(
    targets: dict[str, dict[int, float]],
    current: dict[str, dict[int, float]],
    working: dict[str, dict[int, float]],
    unit_values: dict[int, float],
    min_trade_value: float,
    drift_bands: dict[str, float],
) -> tuple[dict[str, dict[int, float]], list[dict[str, Any]]]:
    """The targets with the changes too small to be worth a commission taken out (target = held + working), and
    why each was: a strategy's change under its driftBand (a fraction of its target), then an instrument's netted
    order worth less than minTradeValue (base currency). close-all never comes here: it closes whatever is left."""
    banded = {s: dict(t) for s, t in targets.items()}
    skipped: list[dict[str, Any]] = []

    def keep(strategy: str, con_id: int) -> float:
        held = current.get(strategy, {}).get(con_id, 0.0) + working.get(strategy, {}).get(con_id, 0.0)
        change = banded[strategy].get(con_id, 0.0) - held
        banded[strategy][con_id] = held
        return change

    for strategy, by_instrument in banded.items():
        band = drift_bands.get(strategy, 0.0)
        for con_id, target in list(by_instrument.items()):
            held = current.get(strategy, {}).get(con_id, 0.0) + working.get(strategy, {}).get(con_id, 0.0)
            if band and target and EPSILON < abs(target - held) < band * abs(target):
                change = keep(strategy, con_id)
                reason = f"driftBand: {abs(change):g} is less than {band:g} of the target {target:g}"
                skipped.append({"conId": con_id, "strategy": strategy, "quantity": change, "reason": reason})
    if min_trade_value > 0:
        for con_id, leg in net_legs(banded, current, working).items():
            value = abs(leg.quantity) * unit_values.get(con_id, math.inf)
            if abs(leg.quantity) > EPSILON and value < min_trade_value:
                changes = _without_the_order(banded, con_id, leg.deltas, leg.quantity)
                if changes is None:
                    changes = {s: keep(s, con_id) for s in leg.deltas if s in banded}
                skipped.append({"conId": con_id, "strategies": changes, "quantity": leg.quantity,
                                "reason": f"minTradeValue: the order is worth {value:.2f}, less than "
                                f"{min_trade_value:g}"})  # fmt: skip
    return banded, skipped


def _without_the_order(
    banded: dict[str, dict[int, float]], con_id: int, deltas: Mapping[str, float], net: float
) -> dict[str, float] | None:
    """Where strategies trade an instrument between them (one buys, another sells) and only the netted order is too
    small to send: the changes on the order's side shrunk by the order (in name order, none past zero), so the rest
    still moves between the books with no order; the changes taken out. None when there is no such cross."""
    mine = {s: d for s, d in sorted(deltas.items()) if s in banded}
    side = {s: d for s, d in mine.items() if d * net > EPSILON}
    crossed = any(d * net < -EPSILON for d in mine.values())
    if not crossed or sum(abs(d) for d in side.values()) < abs(net) - EPSILON:
        return None
    left, changes = abs(net), {}
    for strategy, delta in side.items():
        taken = math.copysign(min(abs(delta), left), delta)
        banded[strategy][con_id] = banded[strategy].get(con_id, 0.0) - taken  # no weight on it: a target of 0
        changes[strategy] = taken
        left -= abs(taken)
        if left <= EPSILON:
            break
    return changes


INTENT = Intent(
    name="allocation",
    handler=allocation,
    description="Rebalance each strategy to its target weights, netted into one order per instrument.",
    trades=True,
)


def _priced(
    lines: list[dict[str, Any]], prices: Prices, marked: set[int], by_con_id: Mapping[int, Instrument]
) -> dict[str, Any]:
    """The prices the legs were sized at: on each line, by conId (a symbol two listings share names one of them in
    `prices`, which is kept for the monitors that read it), and by symbol."""
    for line in lines:
        line["price"] = prices.get(line["conId"])
    return {
        "prices": {i.symbol: prices.get(c) for c, i in by_con_id.items()},
        "markedPrices": sorted(i.symbol for c, i in by_con_id.items() if c in marked),
    }
