"""eod-check: the day's closing report, after the close. Reads and books; never places or cancels an order.

1. Every execution of the day is booked with its commission: the same sweep trade-reconciliation runs.
2. Every order of the day is finished or knowingly open (GTC, GTD, OPG, goodAfterTime): what is still working is
   listed (unknown, and so not clean, when the gateway's API is read-only: IB refuses it the list).
3. Strategies with `flatAtClose` in the config document hold nothing: any that do are listed.
4. Books equal the broker: the reconcile comparison, read-only (no fix); and no book holds an instrument IB no
   longer lists (an expired future: its settlement is for a person to book). A future held that expires within
   EXPIRY_NOTICE_DAYS is listed in `expiring`, which alerts without making the day unclean: it is due a roll.
5. The daily snapshot is written (consumer.snapshots; a re-run the same day overwrites it with the same content).

`clean` is false when anything in 2-4 needs a person, and the reply then says alert=true; it is still `ok` (the
check itself worked).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from consumer.broker.model import BrokerOrder
from consumer.errors import GatewayReadOnly
from consumer.intents.base import Intent, IntentContext
from consumer.intents.reconcile import compare
from consumer.portfolio import EPSILON
from consumer.snapshots import current_pnl, trading_day, write_snapshot

# Orders meant to outlive the day: good till cancelled or a date, for the next open (OPG, which README suggests for
# an order placed after the close), or not to work before a later time (goodAfterTime). Only the others alert.
KNOWINGLY_OPEN = {"GTC", "GTD", "OPG"}
# A held future this close to its last trade date (calendar days) is named, for a person or a strategy to roll it.
EXPIRY_NOTICE_DAYS = 7


def knowingly_open(order: BrokerOrder) -> bool:
    return order.tif.upper() in KNOWINGLY_OPEN or bool(order.good_after_time)


async def eod_check(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    broker = ctx.broker
    swept = await services.bookkeeper.reconcile()
    # A login with several accounts reports every account's executions and orders: this check is the account's.
    account = (await broker.account(services.account)).id
    fills = [f for f in await broker.executions() if f.account == account]
    # The commissions as booked: IB reports each one apart from its execution, and the sweep above added any missed.
    booked = await services.books.fills(f.exec_id for f in fills)
    unbooked = sorted({f.exec_id for f in fills} - set(booked))
    commissions: dict[str, float] = defaultdict(float)
    without_commission = []
    # An execution IB corrected counts once, as its latest version (whose commission repeats the old one).
    replaced = {exec_id for exec_id, fill in booked.items() if fill.get("correctedBy")}
    for exec_id, fill in sorted(booked.items()):
        if exec_id in replaced:
            continue
        if fill.get("commission") is None:
            without_commission.append(exec_id)
        else:
            commissions[fill.get("commissionCurrency") or "?"] += float(fill["commission"])

    unavailable: dict[str, str] = {}
    still_open: list[dict[str, Any]] | None = None
    gtc: list[dict[str, Any]] | None = None
    try:
        working = [o for o in await broker.open_orders() if o.remaining > EPSILON and o.is_for(account)]
        still_open = [o.as_dict() for o in working if not knowingly_open(o)]
        gtc = [o.as_dict() for o in working if knowingly_open(o)]
    except GatewayReadOnly as e:  # IB refuses a read-only API the list: unknown, so the day is not called clean
        unavailable["openOrders"] = e.message

    # Read here: the dispatcher reads the config for trading intents only, and this check runs with trading off too.
    config = await services.config_store.load()
    holdings = await services.books.holdings(sorted(config.flat_at_close))
    not_flat = {
        strategy: {str(p.get("symbol", c)): float(p["quantity"]) for c, p in positions.items()}
        for strategy, positions in sorted(holdings.items())
        if positions
    }

    differences = (await compare(ctx)).differences
    unlisted, expiring = await _contracts_to_see(ctx)

    # The gateway's day, asked once for the snapshot and the P&L: IB answers the current time once a second.
    day = trading_day(await broker.current_time())
    snapshot = None
    if not ctx.dry_run:
        snapshot = await write_snapshot(broker, services.books, services.layout, services.account, day=day)
        snapshot = {k: v for k, v in snapshot.items() if k != "writtenAt"}
    pnl = await current_pnl(broker, services.books, services.layout, services.account, ask=True, day=day)
    clean = not (unavailable or still_open or not_flat or differences or unlisted or unbooked or without_commission)
    return {
        "date": pnl["date"],
        "clean": clean,
        **({} if clean and not expiring else {"alert": True}),  # something needs a person: monitoring filters on it
        "pnl": pnl["pnl"],
        "fills": len(fills) - len(replaced),
        "fillsBookedNow": len(swept["fillsApplied"]),
        "commissions": {c: round(v, 6) for c, v in sorted(commissions.items())},
        "withoutCommission": without_commission,
        "unbooked": unbooked,
        "openOrders": still_open,
        "gtcOrders": gtc,
        "notFlat": not_flat,
        "differences": differences,
        "unlisted": unlisted,
        "expiring": expiring,
        "snapshot": snapshot,
        **({"unavailable": unavailable} if unavailable else {}),
    }


async def _contracts_to_see(ctx: IntentContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The instruments the books hold that IB lists no contract for any more (an expired future, a delisted stock:
    nothing trades or prices them, and the books keep them until a person books the settlement), and the futures
    they hold that expire within EXPIRY_NOTICE_DAYS, each with what each book holds."""
    holdings = await ctx.services.books.holdings(None)
    listed, gone = await ctx.broker.listed({c for positions in holdings.values() for c in positions})

    def line(con_id: int) -> dict[str, Any]:
        return {
            "instrument": next((str(p[con_id].get("symbol")) for p in holdings.values() if con_id in p), ""),
            "conId": con_id,
            "held": {s: float(p[con_id]["quantity"]) for s, p in sorted(holdings.items()) if con_id in p},
        }

    today = ctx.market_now().date()
    expiring = [
        {**line(c), "lastTradeDate": expiry.isoformat(), "days": (expiry - today).days}
        for c, instrument in sorted(listed.items())
        if (expiry := instrument.expires_on) is not None and (expiry - today).days <= EXPIRY_NOTICE_DAYS
    ]
    return [{**line(c), "reason": why} for c, why in sorted(gone.items())], expiring


INTENT = Intent(
    name="eod-check",
    handler=eod_check,
    description="After the close: orders finished, flatAtClose strategies flat, fills booked, books vs broker, "
    "the daily snapshot written, and the day's P&L per strategy.",
)
