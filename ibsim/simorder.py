"""An order as the simulated broker keeps it, and the listener the broker reports to."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Protocol

from .protocol import OrderRequest

ACTIVE = ("PreSubmitted", "Submitted", "PendingCancel")
EXEC_TZ = "America/New_York"

COMPLETED = ("Filled", "Cancelled")  # the statuses reqCompletedOrders lists


class Listener(Protocol):
    """What the simulated broker reports to (the server, which turns each call into the TWS API messages IB Gateway
    sends): order status and open-order updates, rejections and warnings with IB's codes, executions, and position,
    account and state changes.
    """

    def order_update(self, order: SimOrder, *, open_order: bool) -> None: ...
    def order_rejected(
        self, client_id: int, order_id: int, code: int, message: str, order: SimOrder | None
    ) -> None: ...
    def order_warning(self, order: SimOrder, code: int, message: str) -> None: ...
    def execution(self, order: SimOrder, execution: dict[str, Any]) -> None: ...
    def position_changed(self, account: str, key: str) -> None: ...
    def account_changed(self, account: str) -> None: ...
    def state_changed(self) -> None: ...


@dataclass
class SimOrder:
    """An order as the simulated broker keeps it: the fields the client placed (IB's names), its status and fills.

    `active` is PreSubmitted or Submitted; `wire` is every field for the protocol encoders; `public(symbol)` the
    plain copy tests read through `gateway.orders()`.
    """

    orderId: int
    clientId: int
    permId: int
    account: str
    key: str
    exchange: str
    action: str
    totalQuantity: float
    orderType: str
    lmtPrice: float | None
    auxPrice: float | None
    tif: str
    orderRef: str = ""
    algoStrategy: str = ""
    algoParams: list[tuple[str, str]] = field(default_factory=list)
    outsideRth: bool = False
    goodTillDate: str = ""
    goodAfterTime: str = ""
    ocaGroup: str = ""
    openClose: str = "O"
    parentId: int = 0
    status: str = "PendingSubmit"
    filled: float = 0.0
    avgFillPrice: float = 0.0
    lastFillPrice: float = 0.0
    commission: float = 0.0
    triggered: bool = False
    createdAt: float = 0.0
    completedTime: str = ""
    completedStatus: str = ""
    # Completed on an earlier trading day: IB lists the current day's completed orders only (roll_day).
    earlierDay: bool = False
    whyHeld: str = ""

    @classmethod
    def placed(
        cls, req: OrderRequest, client_id: int, perm_id: int, account: str, key: str, exchange: str, at: float
    ) -> SimOrder:
        """A new order as the client placed it (`req`), with what the broker gives it: permId, account, exchange."""
        return cls(
            orderId=req.orderId,
            clientId=client_id,
            permId=perm_id,
            account=account,
            key=key,
            exchange=exchange,
            action=req.action,
            totalQuantity=float(req.totalQuantity),
            orderType=req.orderType,
            lmtPrice=req.lmtPrice,
            auxPrice=req.auxPrice,
            tif=req.tif or "DAY",
            orderRef=req.orderRef,
            algoStrategy=req.algoStrategy,
            algoParams=list(req.algoParams),
            outsideRth=req.outsideRth,
            goodTillDate=req.goodTillDate,
            goodAfterTime=req.goodAfterTime,
            ocaGroup=req.ocaGroup,
            openClose=req.openClose or "O",
            parentId=req.parentId,
            createdAt=at,
        )

    @property
    def remaining(self) -> float:
        return max(self.totalQuantity - self.filled, 0.0)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def complete(self, status: str, at: str, completed_status: str = "") -> None:
        """Done (Filled, Cancelled) at `at`, IB's time text; `completed_status`: the completed order's own words."""
        self.status = status
        self.completedTime = at
        self.completedStatus = completed_status or status

    def wire(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d

    def public(self, symbol: str) -> dict[str, Any]:
        return {
            "orderId": self.orderId,
            "clientId": self.clientId,
            "permId": self.permId,
            "account": self.account,
            "orderRef": self.orderRef,
            "symbol": symbol,
            "action": self.action,
            "totalQuantity": self.totalQuantity,
            "orderType": self.orderType,
            "lmtPrice": self.lmtPrice,
            "auxPrice": self.auxPrice,
            "tif": self.tif,
            "goodAfterTime": self.goodAfterTime,
            "algoStrategy": self.algoStrategy,
            "status": self.status,
            "filled": self.filled,
            "remaining": self.remaining,
            "avgFillPrice": self.avgFillPrice,
        }


def ib_time(t: float, tz: str = EXEC_TZ) -> str:
    from zoneinfo import ZoneInfo

    return dt.datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%Y%m%d %H:%M:%S ") + tz
