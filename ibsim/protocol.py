"""TWS API wire format: framing, field encoding, and the message layouts ib_insync 0.9.86 reads and writes.

Server versions 157..176 are supported; the few layouts that depend on the version follow the gates in
ib_insync's `client.py` (what it sends) and `decoder.py` (what it reads).
"""

from __future__ import annotations

import builtins
import math
import struct
from dataclasses import dataclass, field
from typing import Any

MIN_VERSION = 157
MAX_VERSION = 176
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
    algoStrategy: str = ""
    algoParams: list[tuple[str, str]] = field(default_factory=list)
    whatIf: bool = False
    numConditions: int = 0
    cashQty: float | None = None
    leftover: int = 0


def read_place_order(r: Reader, version: int) -> OrderRequest:
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
    r.skip(2)  # discretionaryAmt, goodAfterTime
    o.goodTillDate = r.str()
    r.skip(26)  # faGroup .. volatilityType
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


# -- outgoing messages (server -> client) ------------------------------------------------------------------------
def error_msg(version: int, req_id: int, code: int, message: str) -> list[Any]:
    fields: list[Any] = [4, 2, req_id, code, message]
    if version >= 166:
        fields.append("")
    return fields


@dataclass
class ContractView:
    """A contract as the server describes it in its messages."""

    conId: int
    symbol: str
    secType: str
    lastTradeDateOrContractMonth: str
    multiplier: str
    exchange: str
    primaryExchange: str
    currency: str
    localSymbol: str
    tradingClass: str

    def c11(self, exchange: str | None = None) -> list[Any]:
        """conId symbol secType lastTrade strike right multiplier exchange currency localSymbol tradingClass."""
        return [
            self.conId,
            self.symbol,
            self.secType,
            self.lastTradeDateOrContractMonth,
            0.0,
            "",
            self.multiplier,
            self.exchange if exchange is None else exchange,
            self.currency,
            self.localSymbol,
            self.tradingClass,
        ]

    def portfolio11(self) -> list[Any]:
        """As updatePortfolio lays it out: primaryExchange where the others have exchange."""
        return [
            self.conId,
            self.symbol,
            self.secType,
            self.lastTradeDateOrContractMonth,
            0.0,
            "",
            self.multiplier,
            self.primaryExchange,
            self.currency,
            self.localSymbol,
            self.tradingClass,
        ]


def contract_details_msg(version: int, req_id: int, cv: ContractView, d: dict[str, Any]) -> list[Any]:
    head: list[Any] = [10]
    if version < 164:
        head.append(8)
    fields = [
        *head,
        req_id,
        cv.symbol,
        cv.secType,
        cv.lastTradeDateOrContractMonth,
        0.0,
        "",
        cv.exchange,
        cv.currency,
        cv.localSymbol,
        d["marketName"],
        cv.tradingClass,
        cv.conId,
        d["minTick"],
    ]
    if version < 164:
        fields.append(1)  # mdSizeMultiplier
    fields += [
        cv.multiplier,
        d["orderTypes"],
        d["validExchanges"],
        1,  # priceMagnifier
        0,  # underConId
        d["longName"],
        cv.primaryExchange,
        d["contractMonth"],
        d["industry"],
        d["category"],
        d["subcategory"],
        d["timeZoneId"],
        d["tradingHours"],
        d["liquidHours"],
        "",  # evRule
        "",  # evMultiplier
        0,  # secIdList
        1,  # aggGroup
        d["underSymbol"],
        d["underSecType"],
        d["marketRuleIds"],
        d["realExpirationDate"],
        d["stockType"],
    ]
    if version == 163:
        fields.append(d["sizeIncrement"])
    if version >= 164:
        fields += [d["minSize"], d["sizeIncrement"], d["sizeIncrement"]]
    return fields


def _algo(order: dict[str, Any]) -> list[Any]:
    strategy = order.get("algoStrategy") or ""
    if not strategy:
        return [""]
    params = order.get("algoParams") or []
    out: list[Any] = [strategy, len(params)]
    for tag, value in params:
        out += [tag, value]
    return out


def open_order_msg(version: int, cv: ContractView, o: dict[str, Any], status: str, what_if: dict | None = None) -> list:
    """openOrder (id 5) at `version` with no optional blocks except the algo parameters."""
    margins = ["" for _ in range(9)]
    commission: list[Any] = ["", "", "", ""]
    if what_if:
        margins = [what_if[k] for k in _WHAT_IF_KEYS]
        commission = [what_if["commission"], what_if["commission"], what_if["commission"], what_if["currency"]]
    fields: list[Any] = [
        5,
        o["orderId"],
        *cv.c11(),
        o["action"],
        o["totalQuantity"],
        o["orderType"],
        o.get("lmtPrice"),
        o.get("auxPrice"),
        o["tif"],
        o.get("ocaGroup", ""),
        o["account"],
        o.get("openClose", "O") or "O",
        0,  # origin
        o.get("orderRef", ""),
        o["clientId"],
        o["permId"],
        o.get("outsideRth", False),
        False,  # hidden
        0,  # discretionaryAmt
        "",  # goodAfterTime
        "",  # deprecated sharesAllocation
        "",  # faGroup
        "",  # faMethod
        "",  # faPercentage
        "",  # faProfile
        "",  # modelCode
        o.get("goodTillDate", ""),
        "",  # rule80A
        "",  # percentOffset
        "",  # settlingFirm
        0,  # shortSaleSlot
        "",  # designatedLocation
        -1,  # exemptCode
        0,  # auctionStrategy
        "",  # startingPrice
        "",  # stockRefPrice
        "",  # delta
        "",  # stockRangeLower
        "",  # stockRangeUpper
        "",  # displaySize
        False,  # blockOrder
        False,  # sweepToFill
        False,  # allOrNone
        "",  # minQty
        0,  # ocaType
        False,  # eTradeOnly
        False,  # firmQuoteOnly
        "",  # nbboPriceCap
        o.get("parentId", 0),
        0,  # triggerMethod
        "",  # volatility
        "",  # volatilityType
        "",  # deltaNeutralOrderType
        "",  # deltaNeutralAuxPrice
        False,  # continuousUpdate
        "",  # referencePriceType
        "",  # trailStopPrice
        "",  # trailingPercent
        "",  # basisPoints
        "",  # basisPointsType
        "",  # comboLegsDescrip
        0,  # comboLegs
        0,  # orderComboLegs
        0,  # smartComboRoutingParams
        "",  # scaleInitLevelSize
        "",  # scaleSubsLevelSize
        "",  # scalePriceIncrement
        "",  # hedgeType
        False,  # optOutSmartRouting
        "",  # clearingAccount
        "",  # clearingIntent
        False,  # notHeld
        0,  # delta neutral contract present
        *_algo(o),
        False,  # solicited
        bool(what_if),
        status,
        *margins,
        *commission,
        "",  # warningText
        False,  # randomizeSize
        False,  # randomizePrice
        0,  # conditions
        "",  # adjustedOrderType
        "",  # triggerPrice
        "",  # trailStopPrice
        "",  # lmtPriceOffset
        "",  # adjustedStopPrice
        "",  # adjustedStopLimitPrice
        "",  # adjustedTrailingAmount
        0,  # adjustableTrailingUnit
        "",  # softDollarTier name
        "",  # softDollarTier value
        "",  # softDollarTier displayName
        "",  # cashQty
        False,  # dontUseAutoPriceForHedge
        False,  # isOmsContainer
        False,  # discretionaryUpToLimitPrice
        False,  # usePriceMgmtAlgo
    ]
    if version >= 159:
        fields.append("")  # duration
    if version >= 160:
        fields.append("")  # postToAts
    if version >= 162:
        fields.append(False)  # autoCancelParent
    if version >= 170:
        fields += ["", "", "", "", ""]
    return fields


_WHAT_IF_KEYS = (
    "initMarginBefore",
    "maintMarginBefore",
    "equityWithLoanBefore",
    "initMarginChange",
    "maintMarginChange",
    "equityWithLoanChange",
    "initMarginAfter",
    "maintMarginAfter",
    "equityWithLoanAfter",
)


def completed_order_msg(version: int, cv: ContractView, o: dict[str, Any]) -> list[Any]:
    """completedOrder (id 101): keyed by permId, no orderId or clientId."""
    fields: list[Any] = [
        101,
        *cv.c11(),
        o["action"],
        o["totalQuantity"],
        o["orderType"],
        o.get("lmtPrice"),
        o.get("auxPrice"),
        o["tif"],
        o.get("ocaGroup", ""),
        o["account"],
        o.get("openClose", "O") or "O",
        0,  # origin
        o.get("orderRef", ""),
        o["permId"],
        o.get("outsideRth", False),
        False,  # hidden
        0,  # discretionaryAmt
        "",  # goodAfterTime
        "",  # faGroup
        "",  # faMethod
        "",  # faPercentage
        "",  # faProfile
        "",  # modelCode
        o.get("goodTillDate", ""),
        "",  # rule80A
        "",  # percentOffset
        "",  # settlingFirm
        0,  # shortSaleSlot
        "",  # designatedLocation
        -1,  # exemptCode
        "",  # startingPrice
        "",  # stockRefPrice
        "",  # delta
        "",  # stockRangeLower
        "",  # stockRangeUpper
        "",  # displaySize
        False,  # sweepToFill
        False,  # allOrNone
        "",  # minQty
        0,  # ocaType
        0,  # triggerMethod
        "",  # volatility
        "",  # volatilityType
        "",  # deltaNeutralOrderType
        "",  # deltaNeutralAuxPrice
        False,  # continuousUpdate
        "",  # referencePriceType
        "",  # trailStopPrice
        "",  # trailingPercent
        "",  # comboLegsDescrip
        0,  # comboLegs
        0,  # orderComboLegs
        0,  # smartComboRoutingParams
        "",  # scaleInitLevelSize
        "",  # scaleSubsLevelSize
        "",  # scalePriceIncrement
        "",  # hedgeType
        "",  # clearingAccount
        "",  # clearingIntent
        False,  # notHeld
        0,  # delta neutral contract present
        *_algo(o),
        False,  # solicited
        o["status"],
        False,  # randomizeSize
        False,  # randomizePrice
        0,  # conditions
        "",  # trailStopPrice
        "",  # lmtPriceOffset
        "",  # cashQty
        False,  # dontUseAutoPriceForHedge
        False,  # isOmsContainer
        "",  # autoCancelDate
        o["filled"],
        0,  # refFuturesConId
        False,  # autoCancelParent
        "",  # shareholder
        False,  # imbalanceOnly
        False,  # routeMarketableToBbo
        0,  # parentPermId
        o.get("completedTime", ""),
        o.get("completedStatus", ""),
    ]
    if version >= 170:
        fields += ["", "", "", "", ""]
    return fields


def order_status_msg(o: dict[str, Any]) -> list[Any]:
    return [
        3,
        o["orderId"],
        o["status"],
        o["filled"],
        o["totalQuantity"] - o["filled"],
        o["avgFillPrice"],
        o["permId"],
        o.get("parentId", 0),
        o["lastFillPrice"],
        o["clientId"],
        o.get("whyHeld", ""),
        0.0,
    ]


def exec_details_msg(req_id: int, cv: ContractView, e: dict[str, Any]) -> list[Any]:
    return [
        11,
        req_id,
        e["orderId"],
        *cv.c11(exchange=e["exchange"]),
        e["execId"],
        e["timeText"],
        e["account"],
        e["exchange"],
        e["side"],
        e["shares"],
        e["price"],
        e["permId"],
        e["clientId"],
        0,  # liquidation
        e["cumQty"],
        e["avgPrice"],
        e.get("orderRef", ""),
        "",  # evRule
        "",  # evMultiplier
        "",  # modelCode
        e.get("lastLiquidity", 2),
    ]


def commission_report_msg(e: dict[str, Any]) -> list[Any]:
    realized = e.get("realizedPNL")
    return [
        59,
        1,
        e["execId"],
        e["commission"],
        e["commissionCurrency"],
        UNSET_DOUBLE_TEXT if realized is None else realized,
        "",
        "",
    ]


UNSET_DOUBLE_TEXT = "1.7976931348623157E308"
