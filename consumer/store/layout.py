"""Where everything lives in Firestore. Paper and live never share a document (docs/firestore.md).

config/{mode}                                   trading configuration and kill switch (read per message)
activity/{auto-id}                              one document per intent run (who, what, when, outcome)
tradingModes/{mode}/requests/{sha256(requestId)}   idempotency claims and stored replies
tradingModes/{mode}/openOrders/{orderRef}       orders placed and not yet closed, with strategy shares
tradingModes/{mode}/orders/{orderRef}           closed orders with their final state
tradingModes/{mode}/fills/{execId}              every execution booked, once
tradingModes/{mode}/holdings/{strategy}         each strategy's positions ({conId-keyed map})
tradingModes/{mode}/reconciliations/{auto-id}   what reconcile found and fixed
tradingModes/{mode}/snapshots/{YYYY-MM-DD}      the daily P&L snapshot (trading day in New York)
tradingModes/{mode}/marketData/{symbol}/bars/{barSize}@{date}   collected bars, one document per day
tradingModes/{mode}/riskState/{YYYY-MM-DD}      risk-check's start-of-day net liquidation when no snapshot gives it
"""

from __future__ import annotations

import hashlib

from google.cloud.firestore import AsyncClient, AsyncCollectionReference, AsyncDocumentReference


class Layout:
    """The paths above for one trading mode: every module reaches Firestore's documents through it."""

    def __init__(self, db: AsyncClient, trading_mode: str) -> None:
        self.db = db
        self.mode = trading_mode
        self._root = db.collection("tradingModes").document(trading_mode)

    def config(self) -> AsyncDocumentReference:
        return self.db.collection("config").document(self.mode)

    def activity(self) -> AsyncCollectionReference:
        return self.db.collection("activity")

    def requests(self) -> AsyncCollectionReference:
        return self._root.collection("requests")

    def request(self, request_id: str) -> AsyncDocumentReference:
        # Request ids are caller-chosen strings; Firestore ids may not contain "/" and have other rules.
        return self.requests().document(hashlib.sha256(request_id.encode()).hexdigest())

    def open_orders(self) -> AsyncCollectionReference:
        return self._root.collection("openOrders")

    def orders(self) -> AsyncCollectionReference:
        return self._root.collection("orders")

    def fills(self) -> AsyncCollectionReference:
        return self._root.collection("fills")

    def holdings(self) -> AsyncCollectionReference:
        return self._root.collection("holdings")

    def transfers(self) -> AsyncCollectionReference:
        return self._root.collection("transfers")

    def adjustments(self) -> AsyncCollectionReference:
        return self._root.collection("adjustments")

    def reconciliations(self) -> AsyncCollectionReference:
        return self._root.collection("reconciliations")

    def snapshots(self) -> AsyncCollectionReference:
        return self._root.collection("snapshots")

    def market_data(self, symbol: str) -> AsyncDocumentReference:
        return self._root.collection("marketData").document(symbol.replace("/", "_"))

    def risk_state(self, day: str) -> AsyncDocumentReference:
        return self._root.collection("riskState").document(day)
