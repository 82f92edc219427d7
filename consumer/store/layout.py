"""Where everything lives in Firestore. Two accounts, or paper and live, never share a document (docs/firestore.md).

Everything sits under accounts/{account}; {root} below is accounts/{account}/tradingModes/{mode}.

accounts/{account}/config/{mode}            trading configuration and kill switch (read per message)
accounts/{account}/activity/{auto-id}       one document per intent run (who, what, when, outcome)
accounts/{account}/contracts/{sha256(key)}  cached contract details, one per instrument (either trading mode)
{root}/requests/{sha256(requestId)}         idempotency claims and stored replies
{root}/openOrders/{orderRef}                orders placed and not yet closed, with strategy shares
{root}/orders/{orderRef}                    closed orders with their final state
{root}/fills/{execId}                       every execution booked, once
{root}/holdings/{strategy}                  each strategy's positions ({conId-keyed map})
{root}/reconciliations/{auto-id}            what reconcile found and fixed
{root}/snapshots/{YYYY-MM-DD}                the daily P&L snapshot (trading day in New York)
{root}/riskState/{YYYY-MM-DD}                risk-check's start-of-day net liquidation when no snapshot gives it
{root}/marketData/{symbol}/bars/{barSize}@{date}   collected bars, one document per day
"""

from __future__ import annotations

import hashlib

from google.cloud.firestore import AsyncClient, AsyncCollectionReference, AsyncDocumentReference


def account_path(account: str) -> str:
    return f"accounts/{account}"


def config_path(account: str, trading_mode: str) -> str:
    """The config document's path, for the synchronous tools (consumer config, status, devstack seed)."""
    return f"{account_path(account)}/config/{trading_mode}"


def mode_path(account: str, trading_mode: str) -> str:
    return f"{account_path(account)}/tradingModes/{trading_mode}"


class Layout:
    """The paths above for one account in one trading mode: every module reaches Firestore's documents through it,
    so a path added here is scoped by account like the rest."""

    def __init__(self, db: AsyncClient, account: str, trading_mode: str) -> None:
        if not account or "/" in account:
            raise ValueError(f"an account id is required to lay out the books, got {account!r}")
        self.db = db
        self.account = account
        self.mode = trading_mode
        self._account = db.document(account_path(account))
        self._root = db.document(mode_path(account, trading_mode))

    def config(self) -> AsyncDocumentReference:
        return self.db.document(config_path(self.account, self.mode))

    def activity(self) -> AsyncCollectionReference:
        return self._account.collection("activity")

    def contracts(self) -> AsyncCollectionReference:
        # Per account, not per mode: contract details are the login's market's, whichever mode trades them.
        return self._account.collection("contracts")

    def contract(self, key: str) -> AsyncDocumentReference:
        # Keys hold exchanges and symbols ("EUR/USD"); Firestore ids may not contain "/".
        return self.contracts().document(hashlib.sha256(key.encode()).hexdigest())

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
