"""Request dispatch: the table of the messages ibsim answers, unsupported ones refused as IB does, session start.

A handler takes (conn, reader positioned after the message id); it lives in the layer of its concern
(account.py, marketdata.py, orders.py) and is named in HANDLERS below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import ClassVar

from . import protocol as P
from .connection import Connection
from .controls import query
from .core import GatewayCore
from .protocol import ProtocolError, Reader
from .simorder import COMPLETED

log = logging.getLogger("ibsim")

FARM_NOTICES = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefil"),
)
REQUEST_IDS = {msg_id: name for name, msg_id in P.REQUEST_NAMES.items()}
CLIENT_ID_IN_USE = "Unable to connect as the client id is already in use. Retry with a unique client id."

# With "Read-Only API" on, IB Gateway refuses what needs write access with 321, and sends no end marker for a
# refused order list (ib_insync #1, #224: its connect skips open and completed orders with readonly=True;
# bankroll-py/bankroll#65; IbcAlpha/IBC#10, #341). The quoted code ('bY', 'b7', 'bh'...) varies with the request.
READ_ONLY = "Error validating request:-'{tag}' : cause - The API interface is currently in Read-Only mode."
NEEDS_WRITE_ACCESS = {
    P.PLACE_ORDER: "bh",
    P.CANCEL_ORDER: "bi",
    P.REQ_GLOBAL_CANCEL: "cS",
    P.REQ_OPEN_ORDERS: "bY",
    P.REQ_ALL_OPEN_ORDERS: "bY",
    P.REQ_AUTO_OPEN_ORDERS: "bY",
    P.REQ_COMPLETED_ORDERS: "b7",
}


class Dispatch(GatewayCore):
    """Routes each message to its handler; answers startApi and the session's small requests itself."""

    # message id -> the method that answers it (in this module or one of the layers)
    HANDLERS: ClassVar[dict[int, str]] = {
        P.START_API: "_start_api",
        P.REQ_CURRENT_TIME: "_req_current_time",
        P.REQ_IDS: "_req_ids",
        P.REQ_MANAGED_ACCTS: "_req_managed_accts",
        P.REQ_MARKET_DATA_TYPE: "_req_market_data_type",
        P.REQ_CONTRACT_DETAILS: "_req_contract_details",
        P.REQ_MKT_DATA: "_req_mkt_data",
        P.CANCEL_MKT_DATA: "_cancel_mkt_data",
        P.REQ_HISTORICAL_DATA: "_req_historical_data",
        P.CANCEL_HISTORICAL_DATA: "_cancel_historical_data",
        P.REQ_ACCOUNT_UPDATES: "_req_account_updates",
        P.REQ_ACCOUNT_UPDATES_MULTI: "_req_account_updates_multi",
        P.CANCEL_ACCOUNT_UPDATES_MULTI: "_cancel_account_updates_multi",
        P.REQ_ACCOUNT_SUMMARY: "_req_account_summary",
        P.CANCEL_ACCOUNT_SUMMARY: "_cancel_account_summary",
        P.REQ_POSITIONS: "_req_positions",
        P.CANCEL_POSITIONS: "_cancel_positions",
        P.REQ_PNL: "_req_pnl",
        P.CANCEL_PNL: "_cancel_pnl",
        P.PLACE_ORDER: "_place_order",
        P.CANCEL_ORDER: "_cancel_order",
        P.REQ_GLOBAL_CANCEL: "_req_global_cancel",
        P.REQ_OPEN_ORDERS: "_req_open_orders",
        P.REQ_ALL_OPEN_ORDERS: "_req_all_open_orders",
        P.REQ_AUTO_OPEN_ORDERS: "_noop",
        P.REQ_COMPLETED_ORDERS: "_req_completed_orders",
        P.REQ_EXECUTIONS: "_req_executions",
        P.SET_SERVER_LOGLEVEL: "_noop",
    }

    def dispatch(self, conn: Connection, msg_id: int, fields: list[str]) -> None:
        if conn.stage == "start" and msg_id != P.START_API:
            log.warning("%s sent message %d before startApi; ignored", conn.peer, msg_id)
            return
        self.requests_log.append((conn.client_id or 0, REQUEST_IDS.get(msg_id, str(msg_id))))
        delay = self._answer_delay(msg_id)
        if delay is None:
            log.info("client %s: request %d stalled, never answered", conn.client_id, msg_id)
            return
        if delay > 0:
            log.info("client %s: request %d answered in %.3fs", conn.client_id, msg_id, delay)
            asyncio.get_running_loop().call_later(delay, self._answer_later, conn, msg_id, fields)
            return
        self._answer(conn, msg_id, fields)

    @query
    def requests_received(self) -> list[tuple[int, str]]:
        """(clientId, TWS request name such as reqCompletedOrders or placeOrder) of every request received, oldest
        first (the last 100,000); clientId is 0 before a connection's startApi."""
        return list(self.requests_log)

    def _answer_later(self, conn: Connection, msg_id: int, fields: list[str]) -> None:
        if conn.stage != "closed" and not conn.closing:
            self._answer(conn, msg_id, fields)

    def _answer_delay(self, msg_id: int) -> float | None:
        """Seconds before this request is answered (None: never): a stall fault, else the start-up cost model.

        Real gateways take hundreds of ms to seconds for what ib_insync's connect downloads, growing with the
        account's positions, orders and executions (ib_insync #355 and #224: completed-orders requests that time
        out); `connectCost` charges that per item of the answer.
        """
        if msg_id in self.stalls:
            return self.stalls.pop(msg_id)
        cost = self.connect_cost
        if msg_id == P.START_API:
            ms = cost.get("baseMs", 0.0)
        elif msg_id in (P.REQ_POSITIONS, P.REQ_ACCOUNT_UPDATES):
            count = sum(1 for a in self.broker.accounts.values() for pos in a.positions.values() if pos.quantity)
            ms = cost.get("perPositionMs", 0.0) * count
        elif msg_id in (P.REQ_OPEN_ORDERS, P.REQ_ALL_OPEN_ORDERS):
            ms = cost.get("perOpenOrderMs", 0.0) * len(self.broker.active_orders())
        elif msg_id == P.REQ_COMPLETED_ORDERS:
            done = sum(1 for o in self.broker.orders.values() if o.status in COMPLETED and not o.earlierDay)
            ms = cost.get("perCompletedOrderMs", 0.0) * done
        elif msg_id == P.REQ_EXECUTIONS:
            ms = cost.get("perExecutionMs", 0.0) * len(self.broker.executions)
        else:
            return 0.0
        return ms / 1000.0

    def _answer(self, conn: Connection, msg_id: int, fields: list[str]) -> None:
        if self.scenario.readOnlyApi and msg_id in NEEDS_WRITE_ACCESS:
            self._refuse_read_only(conn, msg_id, fields)
            return
        handler = self.HANDLERS.get(msg_id)
        if handler is None:
            index = P.UNSUPPORTED_REQ_ID_INDEX.get(msg_id)
            req_id = -1
            if index is not None and len(fields) > index:
                with contextlib.suppress(ValueError):
                    req_id = int(fields[index])
            log.info("client %s: unsupported request %d (reqId %d)", conn.client_id, msg_id, req_id)
            conn.send_error(req_id, 321, f"Error validating request:-'{msg_id}' : cause - Unsupported request (ibsim)")
            return
        try:
            getattr(self, handler)(conn, Reader(fields))
        except (ProtocolError, ValueError, IndexError, KeyError) as e:
            log.warning("client %s: cannot read message %d %s: %s", conn.client_id, msg_id, fields[:6], e)
            conn.send_error(-1, 320, f"Error reading request:-'{msg_id}' : cause - {e}")

    def _refuse_read_only(self, conn: Connection, msg_id: int, fields: list[str]) -> None:
        """321 with the order's id for an order or a cancel (-1 for the rest); the order never reaches the broker."""
        req_id = -1
        index = {P.PLACE_ORDER: 1, P.CANCEL_ORDER: 2}.get(msg_id)
        if index is not None and len(fields) > index:
            with contextlib.suppress(ValueError):
                req_id = int(fields[index])
        if msg_id == P.PLACE_ORDER and req_id > 0:  # a refused id counts as used, as for other refusals
            used = self.broker.highest_order_id
            used[conn.client_id or 0] = max(used.get(conn.client_id or 0, 0), req_id)
        log.info("client %s: %s refused, read-only API", conn.client_id, REQUEST_IDS.get(msg_id, msg_id))
        conn.send_error(req_id, 321, READ_ONLY.format(tag=NEEDS_WRITE_ACCESS[msg_id]))

    # -- the session ---------------------------------------------------------------------------------------
    def _start_api(self, conn: Connection, r: Reader) -> None:
        r.skip(1)  # version
        client_id = r.int()
        if conn.stage == "ready":
            return
        if client_id in self.clients:
            log.warning("client id %d already in use; refusing %s", client_id, conn.peer)
            conn.send_error(-1, 326, CLIENT_ID_IN_USE)
            conn.close()
            return
        conn.client_id = client_id
        conn.stage = "ready"
        self.clients[client_id] = conn
        conn.send([15, 1, ",".join(self.broker.accounts)])
        conn.send([9, 1, self.broker.next_order_id(client_id)])
        for code, msg in FARM_NOTICES:
            conn.send_error(-1, code, msg)
        log.info("client %d ready (%s, server version %d)", client_id, conn.peer, conn.version)

    def _req_current_time(self, conn: Connection, r: Reader) -> None:
        """At most one answer per `pacing.currentTimeSeconds` (1 s) per connection: IB Gateway 10.19 and later
        leave a second reqCurrentTime within a second unanswered, with no error (observed, issue 15)."""
        now = time.monotonic()
        if conn.current_time_at is not None and now - conn.current_time_at < self.current_time_gap:
            log.info(
                "client %s: reqCurrentTime %.3fs after the last one, unanswered",
                conn.client_id,
                now - conn.current_time_at,
            )
            return
        first = conn.current_time_at is None
        conn.current_time_at = now
        if first and self.closing_after_connect_clock is not None:
            # The fault: a gateway going down (its nightly restart) right after answering a connect's clock request.
            delay, self.closing_after_connect_clock = self.closing_after_connect_clock, None
            asyncio.get_running_loop().call_later(delay, self._answer_and_close, conn)
            return
        conn.send([49, 1, int(self.clock.time())])

    def _answer_and_close(self, conn: Connection) -> None:
        conn.send([49, 1, int(self.clock.time())])
        conn.close()

    def _req_ids(self, conn: Connection, r: Reader) -> None:
        conn.send([9, 1, self.broker.next_order_id(conn.client_id or 0)])

    def _req_managed_accts(self, conn: Connection, r: Reader) -> None:
        conn.send([15, 1, ",".join(self.broker.accounts)])

    def _noop(self, conn: Connection, r: Reader) -> None:
        pass
