"""TWS API wire format: versions, framing, field encoding, and the requests ib_insync 0.9.86 sends.

The messages the server sends are in messages.py.

Server versions 157..178 are supported (IB Gateway 10.19+ answers at least 178, so a client offering up to 178,
such as ib_async, gets it); the few layouts that depend on the version follow the gates in ib_insync's `client.py`
(what it sends) and `decoder.py` (what it reads), and for 177 (faProfile desupported) and 178 (execution's
pendingPriceRevision) those of IB's ibapi.
"""

from __future__ import annotations

import builtins
import math
import struct
from dataclasses import dataclass, field
from typing import Any

MIN_VERSION = 157
MAX_VERSION = 178
MAX_FRAME = 16 * 1024 * 1024

UNSET_INTEGER = 2**31 - 1
UNSET_DOUBLE = 1.7976931348623157e308


class ProtocolError(Exception):
    """The peer sent something that is not a TWS API message; the connection is closed."""


# -- incoming message ids (client -> server) ---------------------------------------------------------------------
REQ_MKT_DATA = 1
CANCEL_MKT_DATA = 2
PLACE_ORDER = 3
CANCEL_ORDER = 4
REQ_OPEN_ORDERS = 5
REQ_ACCOUNT_UPDATES = 6
REQ_EXECUTIONS = 7
REQ_IDS = 8
REQ_CONTRACT_DETAILS = 9
SET_SERVER_LOGLEVEL = 14
REQ_AUTO_OPEN_ORDERS = 15
REQ_ALL_OPEN_ORDERS = 16
REQ_MANAGED_ACCTS = 17
REQ_HISTORICAL_DATA = 20
CANCEL_HISTORICAL_DATA = 25
REQ_CURRENT_TIME = 49
REQ_GLOBAL_CANCEL = 58
REQ_MARKET_DATA_TYPE = 59
REQ_POSITIONS = 61
REQ_ACCOUNT_SUMMARY = 62
CANCEL_ACCOUNT_SUMMARY = 63
CANCEL_POSITIONS = 64
START_API = 71
REQ_ACCOUNT_UPDATES_MULTI = 76
CANCEL_ACCOUNT_UPDATES_MULTI = 77
REQ_PNL = 92
CANCEL_PNL = 93
REQ_COMPLETED_ORDERS = 99

# Where the request id sits in requests ibsim does not implement, so error 321 can end the client's wait.
# Requests with a version field carry it at index 2, newer ones at index 1.
UNSUPPORTED_REQ_ID_INDEX = {
    10: 2,  # reqMktDepth
    21: 2,  # exerciseOptions
    22: 1,  # reqScannerSubscription
    50: 2,  # reqRealTimeBars
    52: 2,  # reqFundamentalData
    54: 2,  # calculateImpliedVolatility
    55: 2,  # calculateOptionPrice
    67: 2,  # queryDisplayGroups
    68: 2,  # subscribeToGroupEvents
    74: 2,  # reqPositionsMulti
    78: 1,  # reqSecDefOptParams
    79: 1,  # reqSoftDollarTiers
    81: 1,  # reqMatchingSymbols
    83: 1,  # reqSmartComponents
    84: 1,  # reqNewsArticle
    86: 1,  # reqHistoricalNews
    87: 1,  # reqHeadTimeStamp
    88: 1,  # reqHistogramData
    94: 1,  # reqPnLSingle
    96: 1,  # reqHistoricalTicks
    97: 1,  # reqTickByTickData
    100: 1,  # reqWshMetaData
    102: 1,  # reqWshEventData
    104: 1,  # reqUserInfo
}

# Field counts of ib_insync's order conditions on the wire (condType included), by condType.
CONDITION_FIELDS = {1: 7, 3: 4, 4: 4, 5: 5, 6: 6, 7: 6}


# -- framing -----------------------------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    """One field as the server writes it: '' for None, 0/1 for booleans, shortest float text."""
    if value is None:
        return ""
    if value is True:
        return "1"
    if value is False:
        return "0"
    if isinstance(value, float):
        if math.isinf(value) or value >= UNSET_DOUBLE:
            return ""
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(value)


def encode(fields: list[Any] | tuple[Any, ...]) -> bytes:
    payload = "".join(fmt(f) + "\0" for f in fields).encode()
    return struct.pack(">I", len(payload)) + payload


def parse_version_range(text: str) -> tuple[int, int]:
    """`v157..176` (optionally followed by ` +PACEAPI`) or `v176` -> (min, max)."""
    head = text.strip().split(" ")[0]
    if not head.startswith("v"):
        raise ProtocolError(f"bad version announcement {text!r}")
    lo, sep, hi = head[1:].partition("..")
    try:
        low = int(lo)
        high = int(hi) if sep else low
    except ValueError as e:
        raise ProtocolError(f"bad version announcement {text!r}") from e
    if low > high:
        raise ProtocolError(f"bad version announcement {text!r}")
    return low, high


def choose_version(low: int, high: int) -> int | None:
    best = min(high, MAX_VERSION)
    return best if best >= max(low, MIN_VERSION) else None


# -- reading fields ----------------------------------------------------------------------------------------------
class Reader:
    """Reads the fields of one incoming message in order."""

    def __init__(self, fields: list[str], start: int = 1) -> None:
        self.fields = fields
        self.pos = start

    def remaining(self) -> int:
        return len(self.fields) - self.pos

    def str(self) -> str:
        if self.pos >= len(self.fields):
            raise ProtocolError(f"message {self.fields[0] if self.fields else '?'} ended early")
        v = self.fields[self.pos]
        self.pos += 1
        return v

    def int(self, default: int = 0) -> int:
        v = self.str()
        if v == "":
            return default
        return int(float(v)) if "." in v or "e" in v.lower() else int(v)

    def float(self) -> float | None:
        """None when unset ('' or the UNSET_DOUBLE sentinel)."""
        v = self.str()
        if v == "":
            return None
        if v == "Infinite":
            return math.inf
        f = float(v)
        return None if f >= UNSET_DOUBLE else f

    def bool(self) -> bool:
        v = self.str()
        return bool(int(float(v))) if v else False

    def skip(self, n: builtins.int) -> None:  # `int` here would be Reader.int
        for _ in range(n):
            self.str()

    def contract(self) -> ContractRequest:
        return ContractRequest(
            conId=self.int(),
            symbol=self.str(),
            secType=self.str(),
            lastTradeDateOrContractMonth=self.str(),
            strike=self.float() or 0.0,
            right=self.str(),
            multiplier=self.str(),
            exchange=self.str(),
            primaryExchange=self.str(),
            currency=self.str(),
            localSymbol=self.str(),
            tradingClass=self.str(),
        )


@dataclass
class ContractRequest:
    """The 12 contract fields a client sends."""

    conId: int = 0
    symbol: str = ""
    secType: str = ""
    lastTradeDateOrContractMonth: str = ""
    strike: float = 0.0
    right: str = ""
    multiplier: str = ""
    exchange: str = ""
    primaryExchange: str = ""
    currency: str = ""
    localSymbol: str = ""
    tradingClass: str = ""

    def describe(self) -> str:
        parts = [self.secType or "?", self.symbol or self.localSymbol or f"conId {self.conId}"]
        if self.exchange:
            parts.append(self.exchange)
        if self.currency:
            parts.append(self.currency)
        return " ".join(parts)


@dataclass
class OrderRequest:
    """The placeOrder fields ibsim acts on; the rest are read and dropped."""

    orderId: int
    contract: ContractRequest
    action: str = ""
    totalQuantity: float = 0.0
    orderType: str = ""
    lmtPrice: float | None = None
    auxPrice: float | None = None
    tif: str = ""
    ocaGroup: str = ""
    account: str = ""
    openClose: str = ""
    origin: int = 0
    orderRef: str = ""
    transmit: bool = True
    parentId: int = 0
    outsideRth: bool = False
    goodTillDate: str = ""
    goodAfterTime: str = ""
    algoStrategy: str = ""
    algoParams: list[tuple[str, str]] = field(default_factory=list)
    whatIf: bool = False
    numConditions: int = 0
    cashQty: float | None = None
    leftover: int = 0


def read_place_order(r: Reader, version: int) -> OrderRequest:  # noqa: C901 (a wire parser: one field after another)
    """Reads placeOrder exactly as ib_insync 0.9.86 `Client.placeOrder` writes it at `version`."""
    o = OrderRequest(orderId=r.int(), contract=r.contract())
    c = o.contract
    r.skip(2)  # secIdType, secId
    o.action = r.str()
    o.totalQuantity = r.float() or 0.0
    o.orderType = r.str()
    o.lmtPrice = r.float()
    o.auxPrice = r.float()
    o.tif = r.str()
    o.ocaGroup = r.str()
    o.account = r.str()
    o.openClose = r.str()
    o.origin = r.int()
    o.orderRef = r.str()
    o.transmit = r.bool()
    o.parentId = r.int()
    r.skip(4)  # blockOrder, sweepToFill, displaySize, triggerMethod
    o.outsideRth = r.bool()
    r.skip(1)  # hidden
    if c.secType == "BAG":
        for _ in range(r.int()):
            r.skip(8)
        for _ in range(r.int()):
            r.skip(1)
        for _ in range(r.int()):
            r.skip(2)
    r.skip(1)  # deprecated sharesAllocation
    r.skip(1)  # discretionaryAmt
    o.goodAfterTime = r.str()
    o.goodTillDate = r.str()
    r.skip(26 if version < 177 else 25)  # faGroup .. volatilityType (faProfile only before v177)
    delta_neutral_order_type = r.str()
    r.skip(1)  # deltaNeutralAuxPrice
    if delta_neutral_order_type:
        r.skip(8)
    r.skip(6)  # continuousUpdate, referencePriceType, trailStopPrice, trailingPercent, scaleInit/SubsLevelSize
    scale_increment = r.float()
    if scale_increment is not None and scale_increment > 0:
        r.skip(7)
    r.skip(3)  # scaleTable, activeStartTime, activeStopTime
    if r.str():  # hedgeType
        r.skip(1)
    r.skip(4)  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
    if r.bool():  # delta neutral contract
        r.skip(3)
    o.algoStrategy = r.str()
    if o.algoStrategy:
        for _ in range(r.int()):
            o.algoParams.append((r.str(), r.str()))
    r.skip(1)  # algoId
    o.whatIf = r.bool()
    r.skip(4)  # orderMiscOptions, solicited, randomizeSize, randomizePrice
    if o.orderType == "PEG BENCH":
        r.skip(5)
    o.numConditions = r.int()
    for _ in range(o.numConditions):
        cond_type = r.int()
        if cond_type not in CONDITION_FIELDS:
            raise ProtocolError(f"unknown order condition type {cond_type}")
        r.skip(CONDITION_FIELDS[cond_type] - 1)
    if o.numConditions:
        r.skip(2)
    r.skip(10)  # adjustedOrderType .. softDollarTier.val
    o.cashQty = r.float()
    r.skip(8)  # mifid2 x4, dontUseAutoPriceForHedge, isOmsContainer, discretionaryUpToLimitPrice, usePriceMgmtAlgo
    if version >= 158:
        r.skip(1)  # duration
    if version >= 160:
        r.skip(1)  # postToAts
    if version >= 162:
        r.skip(1)  # autoCancelParent
    if version >= 166:
        r.skip(1)  # advancedErrorOverride
    if version >= 169:
        r.skip(1)  # manualOrderTime
    if version >= 170:
        if c.exchange == "IBKRATS":
            r.skip(1)
        if o.orderType == "PEG BEST":
            r.skip(1)
            compete = r.float()
            if compete == math.inf:
                r.skip(2)
        elif o.orderType == "PEG MID":
            r.skip(2)
    o.leftover = r.remaining()
    return o


# TWS request names (as IB's API reference spells them, case aside) -> message ids: `stall_request` takes them.
REQUEST_NAMES: dict[str, int] = {
    name.split("_")[0].lower() + "".join(part.title() for part in name.split("_")[1:]): value
    for name, value in list(globals().items())
    if name.isupper() and isinstance(value, int) and name.startswith(("REQ_", "CANCEL_", "PLACE_", "START_"))
}
