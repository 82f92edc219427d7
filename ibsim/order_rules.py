"""What IB refuses in an order, when it lets one trade, and what a fill costs: pure rules, no broker state.

The broker (broker.py) applies them; the texts are IB's own, so a client sees what IB Gateway would send.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .market import Instrument, calendar_of, session_span, session_state
from .protocol import OrderRequest
from .scenario import Precautions
from .simorder import SimOrder

ORDER_TYPES = ("MKT", "LMT", "STP", "STP LMT")
TIFS = ("DAY", "GTC", "IOC", "OPG", "")
ALGOS = ("", "Adaptive")
# Order types whose outsideRth IB honours; on MKT and STP it answers 2109 and holds them for the regular session
# ("Order Event Warning: Attribute 'Outside Regular Trading Hours' is ignored based on the order type and
# destination. PlaceOrder is now being processed.", as IB Gateway sends it).
OUTSIDE_RTH_TYPES = ("LMT", "STP LMT")
OUTSIDE_RTH_IGNORED = (
    "Order Event Warning: Attribute 'Outside Regular Trading Hours' is ignored based on the order type and "
    "destination. PlaceOrder is now being processed."
)
# IB's own zone names in the 399 text ("... until 2016-03-28 09:30:00 US/Eastern").
IB_ZONE_NAMES = {"America/New_York": "US/Eastern", "America/Chicago": "US/Central", "Europe/Berlin": "MET"}
DUPLICATE_ID = "Duplicate order ID."
# IB's message codes: "110 The price does not conform to the minimum price variation for this contract."
OFF_TICK = "The price does not conform to the minimum price variation for this contract."
# IB's margin rejection (error 201, order Inactive), as users of ib_insync report it (erdewit/ib_insync#704) and
# issue 15 quotes it: "YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE DESIRED POSITION YOUR EQUITY WITH LOAN
# VALUE [..] MUST EXCEED THE INITIAL MARGIN [..]".
MARGIN_REJECTION = (
    "Order rejected - reason:YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE DESIRED POSITION YOUR EQUITY WITH "
    "LOAN VALUE [{equity:.2f} {base}] MUST EXCEED THE INITIAL MARGIN [{margin:.2f} {base}]"
)


def refusal(req: OrderRequest, inst: Instrument, accounts: Collection[str]) -> str | None:  # noqa: C901 (one order field after another)
    """The reason IB would reject this order (sent as 201 "Order rejected - reason:..."), or None."""
    o = req
    if o.action not in ("BUY", "SELL"):
        return f"Invalid action {o.action!r}: use BUY or SELL"
    if o.totalQuantity is None or o.totalQuantity <= 0:
        return "Order quantity must be greater than zero"
    if inst.secType in ("STK", "FUT") and not float(o.totalQuantity).is_integer():
        return "Fractional-sized order cannot be placed via API for this contract"
    if o.orderType not in ORDER_TYPES:
        return f"Order type {o.orderType!r} is not supported by ibsim (MKT, LMT, STP, STP LMT)"
    if o.orderType in ("LMT", "STP LMT") and (o.lmtPrice is None or o.lmtPrice <= 0):
        return f"A {o.orderType} order needs a positive limit price"
    if o.orderType in ("STP", "STP LMT") and (o.auxPrice is None or o.auxPrice <= 0):
        return f"A {o.orderType} order needs a positive stop price (auxPrice)"
    if o.tif not in TIFS:
        return f"Time in force {o.tif!r} is not supported by ibsim (DAY, GTC, IOC, OPG)"
    if o.algoStrategy not in ALGOS:
        return f"Algo strategy {o.algoStrategy!r} is not supported by ibsim (Adaptive)"
    if o.algoStrategy == "Adaptive":
        if inst.secType == "CASH":
            return "The Adaptive algo is not available for IDEALPRO forex"
        if o.orderType not in ("MKT", "LMT"):
            return "The Adaptive algo takes MKT or LMT orders"
        priorities = {v for k, v in o.algoParams if k == "adaptivePriority"}
        if priorities - {"Urgent", "Normal", "Patient"}:
            return f"Invalid adaptivePriority {sorted(priorities)[0]!r}"
    if o.account and o.account not in accounts:
        return f"Account {o.account!r} is not managed by this login"
    if o.numConditions:
        return "Order conditions are not supported by ibsim"
    if not o.transmit:
        return "Orders with transmit=False are not supported by ibsim"
    return None


# A sale that would go short in a stock IB cannot borrow: held PreSubmitted, with whyHeld "locate" in its status and
# this warning, until shares are located (which ibsim never does: it stays held until cancelled or expired).
LOCATING = "Order held while securities are located."


def needs_locate(order: SimOrder, inst: Instrument, position: float) -> bool:
    """True when `order` sells more than the account holds of an instrument without shares to borrow."""
    return not inst.spec.shortable and order.action == "SELL" and position - order.totalQuantity < 0


# IB Gateway's refusals of an API order beyond its precautionary settings, as gateways send them (ib_async users'
# logs: "Error 383, reqId 476: The following order "ID:476" size exceeds the Size Limit of 500. ..."; IbcAlpha/IBC#227:
# "Error 451, reqId 329: The following order "ID:329" value estimate of 154,990 USD exceeds  the Total Value Limit
# of 100,000 USD. ...", its double space included).
PRECAUTION_SOURCE = "Restriction is specified in Precautionary Settings of Global Configuration/Presets."
OVER_SIZE_LIMIT = 'The following order "ID:{id}" size exceeds the Size Limit of {limit:g}. ' + PRECAUTION_SOURCE
OVER_VALUE_LIMIT = (
    'The following order "ID:{id}" value estimate of {value:,.0f} USD exceeds  the Total Value Limit of {limit:,.0f} '
    "USD. " + PRECAUTION_SOURCE
)


def precaution_refusal(
    req: OrderRequest, inst: Instrument, precautions: Precautions, usd_rate: float
) -> tuple[int, str] | None:
    """IB Gateway's refusal of an order beyond its Size Limit (383) or Total Value Limit (451), or None: bypassed,
    within them, or forex (whose presets ibsim does not model). The value is estimated at the order's stop price,
    else its limit price, else the side of the quote it would take (IbcAlpha/IBC#227: a STP LMT valued at its stop
    price times its multiplier), in USD."""
    if precautions.bypass or inst.secType == "CASH":
        return None
    quantity = float(req.totalQuantity or 0)
    if precautions.sizeLimit is not None and quantity > precautions.sizeLimit:
        return 383, OVER_SIZE_LIMIT.format(id=req.orderId, limit=precautions.sizeLimit)
    if precautions.totalValueLimit is None:
        return None
    if req.orderType in ("STP", "STP LMT") and req.auxPrice:
        price = req.auxPrice
    elif req.orderType == "LMT" and req.lmtPrice:
        price = req.lmtPrice
    else:
        price = inst.ask if req.action == "BUY" else inst.bid
    value = quantity * price * inst.multiplier * usd_rate
    if value > precautions.totalValueLimit:
        return 451, OVER_VALUE_LIMIT.format(id=req.orderId, value=value, limit=precautions.totalValueLimit)
    return None


def off_tick(req: OrderRequest, inst: Instrument) -> bool:
    """A limit or stop price off the instrument's minimum price variation (IB refuses it with 110)."""
    prices = []
    if req.orderType in ("LMT", "STP LMT") and req.lmtPrice:
        prices.append(req.lmtPrice)
    if req.orderType in ("STP", "STP LMT") and req.auxPrice:
        prices.append(req.auxPrice)
    return any(abs(p / inst.tick - round(p / inst.tick)) > 1e-6 for p in prices)


def good_after(text: str, default_zone: str) -> dt.datetime | None:
    """IB's goodAfterTime ("20261207 09:30:00 US/Eastern"; without a zone, the login's: `default_zone`) as an
    instant; None when empty or unreadable (IB refuses an unreadable one; ibsim ignores it)."""
    parts = text.split()
    if len(parts) < 2:
        return None
    try:
        local = dt.datetime.strptime(f"{parts[0]} {parts[1]}", "%Y%m%d %H:%M:%S")
        return local.replace(tzinfo=ZoneInfo(parts[2] if len(parts) > 2 else default_zone))
    except (ValueError, OSError, ZoneInfoNotFoundError):  # a folder of zones ("America") is an OSError
        return None


def closed_until(
    order: SimOrder, inst: Instrument, now: dt.datetime, hours: str, login_zone: str
) -> dt.datetime | None:
    """When the order's market next opens for it, or None while it may trade (always, with hours: always).

    Stocks trade in the regular session, or the extended one for an outsideRth LMT/STP LMT; FX and futures
    through their whole trading hours. An order with a goodAfterTime still to come waits for it (any hours).
    """
    # Without a zone, the login's, not the exchange's: "the time zone that TWS is using, which is set at login time"
    # (lbilli/rib#15); IB is moving away from implied zones.
    after = good_after(order.goodAfterTime, login_zone)
    if after is not None and after <= now:
        after = None
    if hours != "regular":
        return after
    extended = _extended(order, inst)
    if after is not None:  # not before goodAfterTime, and then in the first session from it
        return session_state(inst, "regular", after, extended) or after
    return session_state(inst, "regular", now, extended)


def _extended(order: SimOrder, inst: Instrument) -> bool:
    """The order trades through the instrument's whole trading hours, not its regular (liquid) session only."""
    return calendar_of(inst) in ("FX", "CME") or (order.outsideRth and order.orderType in OUTSIDE_RTH_TYPES)


# What a DAY order's completed order says once its session has ended (IB cancels it; no error is sent).
DAY_EXPIRED = "Cancelled: day order expired"


def day_order_end(order: SimOrder, inst: Instrument, hours: str, login_zone: str) -> dt.datetime | None:
    """When a DAY order expires: at the end of the session it works in, the one under way when it was placed (or
    from its goodAfterTime) or else the next one. That is the regular close, the extended session's end for an
    outsideRth LMT/STP LMT, IDEALPRO's 17:00 New York and CME Globex's 16:00 Chicago. None with hours: always (no
    close: the day ends at roll_day)."""
    if hours != "regular":
        return None
    start = dt.datetime.fromtimestamp(order.createdAt, dt.UTC)
    after = good_after(order.goodAfterTime, login_zone)
    if after is not None and after > start:
        start = after
    return session_span(inst, hours, start, _extended(order, inst))[1]


def opening_of(order: SimOrder, inst: Instrument, hours: str) -> dt.datetime | None:
    """The opening an OPG (market-on-open) order is for: the first regular session to open after it was placed, so
    one placed during a session waits for the next session the exchange holds (not a holiday, not a weekend). None
    with hours: always (no opening: roll_day opens the day)."""
    if hours != "regular":
        return None
    placed = dt.datetime.fromtimestamp(order.createdAt, dt.UTC)
    start, end = session_span(inst, hours, placed, extended=False)
    if start <= placed:  # placed in the session: for the next one
        start, _ = session_span(inst, hours, end, extended=False)
    return start


def held_warning(order: SimOrder, inst: Instrument, opens: dt.datetime) -> str:
    """IB's 399 text for an order held until its market opens: "Order Message: BUY 1 CYCU NASDAQ.NMS Warning: Your
    order will not be placed at the exchange until 2026-07-31 09:30:00 US/Eastern." (observed gateway text)."""
    zone = IB_ZONE_NAMES.get(str(opens.tzinfo), str(opens.tzinfo))
    return (
        f"Order Message:\n{order.action} {order.totalQuantity:g} {inst.symbol} {inst.exec_exchange}\n"
        f"Warning: your order will not be placed at the exchange until {opens:%Y-%m-%d %H:%M:%S} {zone}"
    )


# IDEALPRO's minimum order, in USD: a smaller forex order is accepted with this 399 and routed as an odd lot, which
# fills ("Order Message:\nSELL 7K EUR.USD Forex\nWarning: Your order size is below the EUR 20000 IdealPro minimum and
# will be routed as an odd lot order.", as IB sent it when the minimum was EUR 20,000; a paper account's in 2026:
# "... below the USD 25000 IdealPro minimum ...").
IDEALPRO_MINIMUM_USD = 25_000


def odd_lot_warning(order: SimOrder, inst: Instrument, usd_rate: float) -> str | None:
    """IB's 399 for a forex order below IDEALPRO's minimum (it still fills), or None."""
    if inst.secType != "CASH" or order.totalQuantity * inst.price * usd_rate >= IDEALPRO_MINIMUM_USD:
        return None
    q = order.totalQuantity
    size = f"{q / 1000:g}K" if q >= 1000 and q % 1000 == 0 else f"{q:g}"
    return (
        f"Order Message:\n{order.action} {size} {inst.key} Forex\nWarning: Your order size is below the USD "
        f"{IDEALPRO_MINIMUM_USD} IdealPro minimum and will be routed as an odd lot order."
    )


def commission(
    rates: Mapping[str, float], inst: Instrument, cum_qty: float, cum_value: float, usd_rate: float
) -> tuple[float, str]:
    """The commission charged so far on an order filled `cum_qty` for `cum_value` (IB's tiered-like schedule:
    per share with a minimum and a cap for stocks, per contract for futures, basis points in USD for forex)."""
    if inst.secType == "CASH":
        total = max(cum_value * usd_rate * rates["fxBps"] / 10_000, rates["fxMin"])
        return total, "USD"
    if inst.secType == "FUT":
        return cum_qty * rates["futPerContract"], inst.currency
    total = max(cum_qty * rates["stockPerShare"], rates["stockMin"])
    total = min(total, cum_value * rates["stockMaxPct"] / 100)
    return total, inst.currency
