"""Plain, JSON-ready views of ib_insync objects for replies and Firestore.

ib_insync's objects are live and belong to the broker loop; what leaves the loop is a copy made here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ib_insync import AccountValue, Contract, Fill, PortfolioItem, Position, Trade


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
    return {
        "conId": c.conId,
        "symbol": c.symbol,
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


def position(p: Position) -> dict[str, Any]:
    return {"account": p.account, **contract(p.contract), "position": p.position, "avgCost": number(p.avgCost)}


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


def trade(t: Trade) -> dict[str, Any]:
    o, s = t.order, t.orderStatus
    return {
        "orderId": o.orderId,
        "permId": o.permId,
        "clientId": o.clientId,
        "orderRef": o.orderRef,
        **contract(t.contract),
        "action": o.action,
        "quantity": o.totalQuantity,
        "orderType": o.orderType,
        "limitPrice": number(o.lmtPrice),
        "tif": o.tif,
        "status": s.status,
        "filled": s.filled,
        "remaining": s.remaining,
        "avgFillPrice": number(s.avgFillPrice),
    }


def fill(f: Fill) -> dict[str, Any]:
    e, c = f.execution, f.commissionReport
    return {
        "execId": e.execId,
        "time": _iso(e.time),
        "account": e.acctNumber,
        **contract(f.contract),
        "side": e.side,
        "shares": e.shares,
        "price": e.price,
        "orderId": e.orderId,
        "permId": e.permId,
        "clientId": e.clientId,
        "orderRef": e.orderRef,
        "cumQty": e.cumQty,
        "commission": number(c.commission) if c and c.execId else None,
        "commissionCurrency": (c.currency or None) if c else None,
    }


def _iso(value: datetime | str | None) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    return value or None
