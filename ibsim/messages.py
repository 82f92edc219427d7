"""TWS API messages the server sends: their layouts as ib_insync 0.9.86's `decoder.py` reads them.

The few layouts that depend on the server version follow its gates. Each function returns the fields of one
message; protocol.encode frames them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


# -- ------------------------------------------------------------------------
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
        o.get("goodAfterTime", ""),
        "",  # deprecated sharesAllocation
        "",  # faGroup
        "",  # faMethod
        "",  # faPercentage
        *([""] if version < 177 else []),  # faProfile, desupported from v177
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
        o.get("goodAfterTime", ""),
        "",  # faGroup
        "",  # faMethod
        "",  # faPercentage
        *([""] if version < 177 else []),  # faProfile, desupported from v177
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


def exec_details_msg(version: int, req_id: int, cv: ContractView, e: dict[str, Any]) -> list[Any]:
    fields = [
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
    if version >= 178:
        fields.append(False)  # pendingPriceRevision
    return fields


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
