"""ib_insync's objects translated into the product's own (consumer.broker.model) and JSON-ready dicts.

ib_insync's objects are live and belong to the broker loop; what leaves the loop is a copy made here. `contract`
is the one serializer of an instrument: replies, order documents, holdings and fills all describe one with it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ib_insync import AccountValue, BarData, Contract, Fill, PortfolioItem, Position, Trade

from consumer.broker import model


def number(value: Any) -> float | None:
    """IB marks 'unset' with huge sentinels or NaN; those become None."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(f) or math.isinf(f) or abs(f) >= 1.7e308 or f == 2**31 - 1:
        return None
    return f


def contract(c: Contract) -> dict[str, Any]:
    """An instrument as replies and Firestore describe it. `symbol` is the one it trades under (IB's localSymbol:
    EUR.USD, ESZ6), the same whichever path wrote it (a fill, an order, a correction)."""
    return {
        "conId": c.conId,
        "symbol": c.localSymbol or c.symbol,
        "localSymbol": c.localSymbol or c.symbol,
        "secType": c.secType,
        "exchange": c.exchange or c.primaryExchange,
        "currency": c.currency,
        "multiplier": number(c.multiplier) or 1.0,
    }


def account_values(values: Iterable[AccountValue]) -> dict[str, dict[str, Any]]:
    """{account: {tag: value or {currency: value}}}, numbers where IB sends numbers."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for v in values:
        parsed: Any = number(v.value)
        if parsed is None:
            parsed = v.value
        if v.currency and v.currency != "BASE" and v.tag not in {"AccountType"}:
            out[v.account].setdefault(v.tag, {})
            if isinstance(out[v.account][v.tag], dict):
                out[v.account][v.tag][v.currency] = parsed
        else:
            out[v.account][v.tag] = parsed
    return dict(out)


def position(p: Position) -> model.Position:
    return model.Position(p.account, contract(p.contract), float(p.position), number(p.avgCost))


def portfolio_item(p: PortfolioItem) -> dict[str, Any]:
    return {
        "account": p.account,
        **contract(p.contract),
        "position": p.position,
        "marketPrice": number(p.marketPrice),
        "marketValue": number(p.marketValue),
        "averageCost": number(p.averageCost),
        "unrealizedPNL": number(p.unrealizedPNL),
        "realizedPNL": number(p.realizedPNL),
    }


def status(t: Trade) -> str:
    """The order's status as IB last sent it.

    ib_insync marks an order Cancelled on any error IB sends about it that it does not file as a warning. On an
    order IB had accepted, that error may be a note only: 10349 "Order TIF was set to DAY based on order preset"
    leaves the order working, and it fills (ib_async #191, #217). Until IB sends a status of its own, such an order
    keeps the last one IB sent; `noted_cancel` says which orders those are, so that IB is asked what they became.
    """
    if noted_cancel(t):
        return [e.status for e in t.log[:-1] if not e.errorCode][-1]
    return t.orderStatus.status


def noted_cancel(t: Trade) -> bool:
    """ib_insync's Cancelled on an error about an order IB had accepted: a note, or IB's cancel, unknown which."""
    log = t.log
    if t.orderStatus.status != "Cancelled" or not log or not log[-1].errorCode:
        return False
    return any(model.is_accepted(e.status) for e in log[:-1] if not e.errorCode)


def filled(t: Trade) -> float:
    """What the order has filled: its status says, but ib_insync leaves a completed order's status quantities at
    zero and files IB's filledQuantity in the order."""
    return float(t.orderStatus.filled or number(t.order.filledQuantity) or 0.0)


def order(t: Trade) -> model.BrokerOrder:
    o, s = t.order, t.orderStatus
    return model.BrokerOrder(
        order_ref=o.orderRef,
        order_id=o.orderId,
        perm_id=o.permId,
        client_id=o.clientId,
        contract=contract(t.contract),
        action=o.action,
        total_quantity=float(o.totalQuantity),
        order_type=o.orderType,
        limit_price=number(o.lmtPrice),
        tif=o.tif,
        status=status(t),
        filled=filled(t),
        remaining=float(s.remaining),
        avg_fill_price=number(s.avgFillPrice),
        account=o.account,
        good_after_time=o.goodAfterTime or "",
    )


def fill(f: Fill) -> model.Fill:
    e, r = f.execution, f.commissionReport
    has_commission = bool(r and r.execId)
    described = contract(f.contract)
    described["exchange"] = described["exchange"] or e.exchange
    return model.Fill(
        exec_id=e.execId,
        order_ref=e.orderRef or "",
        order_id=e.orderId,
        perm_id=e.permId,
        client_id=e.clientId,
        account=e.acctNumber,
        contract=described,
        side=e.side,
        shares=float(e.shares),
        price=float(e.price),
        time=_iso(e.time) or "",
        cum_qty=float(e.cumQty),
        commission=number(r.commission) if has_commission else None,
        commission_currency=(r.currency or None) if has_commission else None,
    )


def bar(b: BarData) -> model.HistoricalBar:
    day = b.date.date() if isinstance(b.date, datetime) else b.date
    return model.HistoricalBar(str(b.date), day.isoformat(), b.open, b.high, b.low, b.close, b.volume)


def _iso(value: datetime | str | None) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    return value or None
