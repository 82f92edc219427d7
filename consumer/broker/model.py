"""The product's own broker types: what `Broker` answers with, plain data that may leave the broker loop.

Nothing here imports ib_insync. IB's objects are live (ib_insync updates them in place as the socket speaks) and
belong to the broker loop; these are copies made at the moment of asking (consumer.broker.views builds them).

`STATUSES` is the one translation of IB's order statuses into ours, as nautilus_trader keeps its own in the
parsing module of its Interactive Brokers adapter: what an order's fate is, whether IB is done with it, whether IB
has accepted it. Every other module asks it rather than spelling status names again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Fate(StrEnum):
    """What became of an order, as a reply reports it."""

    FILLED = "filled"
    WORKING = "working"  # accepted by IB, not finished (or finished only partly)
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # refused by IB (Inactive, or Cancelled with an error)
    UNCONFIRMED = "unconfirmed"  # no answer from IB yet: it may well be live; looked up, never re-placed
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class StatusMeaning:
    """One row of the status table."""

    fate: Fate
    done: bool  # IB will not change the order any more: it cannot fill further
    accepted: bool  # IB has the order working


# IB's order statuses (TWS API `orderStatus`), and ours. "Executed" is ours too: an order known only by its
# executions (IB no longer lists it). A status not listed here (ApiPending, PendingSubmit, a new one) is unconfirmed.
STATUSES: dict[str, StatusMeaning] = {
    "PendingSubmit": StatusMeaning(Fate.UNCONFIRMED, done=False, accepted=False),
    "PendingCancel": StatusMeaning(Fate.UNCONFIRMED, done=False, accepted=False),
    "ApiPending": StatusMeaning(Fate.UNCONFIRMED, done=False, accepted=False),
    "PreSubmitted": StatusMeaning(Fate.WORKING, done=False, accepted=True),
    "Submitted": StatusMeaning(Fate.WORKING, done=False, accepted=True),
    "Executed": StatusMeaning(Fate.WORKING, done=False, accepted=True),
    "Filled": StatusMeaning(Fate.FILLED, done=True, accepted=False),
    "Cancelled": StatusMeaning(Fate.CANCELLED, done=True, accepted=False),
    "ApiCancelled": StatusMeaning(Fate.CANCELLED, done=True, accepted=False),
    "Inactive": StatusMeaning(Fate.REJECTED, done=True, accepted=False),
}
_UNKNOWN = StatusMeaning(Fate.UNCONFIRMED, done=False, accepted=False)

# The books' own final state for an order written ahead and never sent.
NOT_PLACED = "NotPlaced"


def meaning(status: str) -> StatusMeaning:
    return STATUSES.get(status, _UNKNOWN)


def is_done(status: str) -> bool:
    """IB has finished the order (filled, cancelled or rejected): nothing more will fill."""
    return meaning(status).done


def is_accepted(status: str) -> bool:
    return meaning(status).accepted


@dataclass(frozen=True, slots=True)
class Account:
    """The account traded: what sizing needs of it."""

    id: str
    base_currency: str
    net_liquidation: float


@dataclass(frozen=True, slots=True)
class Position:
    """One position line of the account, as IB reports it."""

    account: str
    contract: dict[str, Any]  # consumer.broker.views.contract
    quantity: float
    avg_cost: float | None

    @property
    def con_id(self) -> int:
        return int(self.contract["conId"])

    @property
    def sec_type(self) -> str:
        return str(self.contract["secType"])

    @property
    def symbol(self) -> str:
        return str(self.contract["symbol"])

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, **self.contract, "position": self.quantity, "avgCost": self.avg_cost}


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An order at the broker (ours or anyone's), as it stood when asked for."""

    order_ref: str
    order_id: int
    perm_id: int
    client_id: int
    contract: dict[str, Any]
    action: str  # BUY / SELL
    total_quantity: float
    order_type: str
    limit_price: float | None
    tif: str
    status: str
    filled: float
    remaining: float
    avg_fill_price: float | None
    account: str = ""  # the account it trades for ("" when IB did not say)
    good_after_time: str = ""  # as IB keeps it ("20261207 09:30:00 US/Eastern"), "" for none

    @property
    def con_id(self) -> int:
        return int(self.contract["conId"])

    @property
    def symbol(self) -> str:
        return str(self.contract["symbol"])

    def is_for(self, account: str) -> bool:
        """Whether it trades for `account` (a login with several accounts sees every account's orders)."""
        return self.account in ("", account)

    @property
    def quantity(self) -> float:
        """Signed: positive buys."""
        return self.total_quantity if self.action == "BUY" else -self.total_quantity

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "orderId": self.order_id,
            "permId": self.perm_id,
            "clientId": self.client_id,
            "orderRef": self.order_ref,
            **self.contract,
            "action": self.action,
            "quantity": self.total_quantity,
            "orderType": self.order_type,
            "limitPrice": self.limit_price,
            "tif": self.tif,
            "status": self.status,
            "filled": self.filled,
            "remaining": self.remaining,
            "avgFillPrice": self.avg_fill_price,
            **({"goodAfterTime": self.good_after_time} if self.good_after_time else {}),
        }


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution and its commission (None until IB's commission report arrives)."""

    exec_id: str
    order_ref: str
    order_id: int
    perm_id: int
    client_id: int
    account: str
    contract: dict[str, Any]  # exchange: the execution's when the contract names none
    side: str  # BOT / SLD
    shares: float
    price: float
    time: str  # ISO 8601
    cum_qty: float
    commission: float | None
    commission_currency: str | None

    @property
    def con_id(self) -> int:
        return int(self.contract["conId"])

    @property
    def sec_type(self) -> str:
        return str(self.contract["secType"])

    @property
    def signed(self) -> float:
        return self.shares if self.side == "BOT" else -self.shares

    def as_dict(self) -> dict[str, Any]:
        return {
            "execId": self.exec_id,
            "time": self.time or None,
            "account": self.account,
            **self.contract,
            "side": self.side,
            "shares": self.shares,
            "price": self.price,
            "orderId": self.order_id,
            "permId": self.perm_id,
            "clientId": self.client_id,
            "orderRef": self.order_ref,
            "cumQty": self.cum_qty,
            "commission": self.commission,
            "commissionCurrency": self.commission_currency,
        }


@dataclass(frozen=True, slots=True)
class HistoricalBar:
    """One bar of history, regular trading hours only."""

    time: str  # as IB sent it: a date for daily bars, a UTC timestamp for intraday ones
    day: str  # YYYY-MM-DD
    open: float
    high: float
    low: float
    close: float
    volume: float


class Prices(dict[int, float]):
    """{conId: price} from snapshots; an instrument left out for IB's refusal is named in `refused`, with IB's code
    and text ("IB 10197: No market data during competing live session"), so a reply can say why it had no price."""

    def __init__(self, prices: Iterable[tuple[int, float]] = (), refused: Mapping[int, str] | None = None) -> None:
        super().__init__(prices)
        self.refused = dict(refused or {})

    def named(self, con_id: int, symbol: str) -> str:
        """The symbol, with IB's refusal when IB refused its price: "SPY (IB 10197: No market data during ...)"."""
        refusal = self.refused.get(con_id)
        return f"{symbol} ({refusal})" if refusal else symbol

    @classmethod
    def of_quotes(cls, quotes: Mapping[int, Quote]) -> Prices:
        """The prices of quotes taken for limit orders: one snapshot sizes an order and prices its limit."""
        return cls(
            ((c, q.price) for c, q in quotes.items() if q.price is not None),
            {c: q.refusal for c, q in quotes.items() if q.price is None and q.refusal},
        )


@dataclass(frozen=True, slots=True)
class Quote:
    """A snapshot's prices for pricing a limit order; None where IB sent none usable."""

    bid: float | None
    ask: float | None
    last: float | None  # last trade, else the previous close
    refusal: str | None = None  # IB's refusal of the snapshot, when it gave one ("IB 354: ...")
    price: float | None = None  # the snapshot's price as `Broker.prices` reads it (what an order is sized at)

    def side(self, buying: bool) -> float | None:
        """The price an order on this side meets: the ask for a buy, the bid for a sell; last/close without one."""
        return (self.ask if buying else self.bid) or self.last
